"""``tiue-export distill``: distil a teacher into a TiUE student (VSD + KL), one CPU to many GPUs.

The same command runs alone or under ``accelerate launch``; see ``docs/distill.md``.
"""

from __future__ import annotations

import click

from ..distill.config import BASELINES, LR_SCHEDULES, MIXED_PRECISION, DistillConfig
from ..errors import InputError
from .types import FINITE, SEED

D = DistillConfig.__dataclass_fields__


def _default(name):
    return D[name].default


@click.command("distill")
@click.option("--teacher", type=click.Path(), default=None, help="Teacher pipeline directory [default: the built-in toy teacher].")
@click.option("--prompts", required=True, type=click.Path(), help="Training prompts: .txt (one a line), .jsonl, .csv or .parquet.")
@click.option("--out", required=True, type=click.Path(), help="Student directory to write (a diffusers pipeline + tiue.json).")
@click.option("--run-dir", type=click.Path(), default=None, help="Checkpoints, log and config [default: OUT.run].")
@click.option("--k", type=int, default=None, help=f"Decoder timesteps of the student  [default: {_default('k')}]")
@click.option("--steps", type=int, default=None, help="Total optimisation steps (instead of --epochs).")
@click.option("--epochs", type=int, default=None, help=f"Passes over the prompts  [default: {_default('epochs')}]")
@click.option("--batch-size", type=int, default=_default("batch_size"), show_default=True, help="Prompts per device and step.")
@click.option("--resolution", type=int, default=None, help="Image side in pixels [default: the teacher's].")
@click.option("--lr", type=FINITE, default=_default("lr"), show_default=True, help="Student learning rate (Adam).")
@click.option("--lr-schedule", type=click.Choice(LR_SCHEDULES), default=_default("lr_schedule"), show_default=True, help="Student lr schedule: constant (the authors'), or a decay to 0 at the last step.")
@click.option("--lr-warmup-steps", type=int, default=_default("lr_warmup_steps"), show_default=True, help="Linear warm-up of the student lr.")
@click.option("--lr-lora", type=FINITE, default=_default("lr_lora"), show_default=True, help="LoRA teacher learning rate (Adam).")
@click.option("--adam-beta1", type=FINITE, default=_default("adam_beta1"), show_default=True)
@click.option("--adam-beta2", type=FINITE, default=_default("adam_beta2"), show_default=True)
@click.option("--adam-eps", type=FINITE, default=_default("adam_eps"), show_default=True)
@click.option("--weight-decay", type=FINITE, default=_default("weight_decay"), show_default=True)
@click.option("--max-grad-norm", type=FINITE, default=_default("max_grad_norm"), show_default=True, help="Gradient clipping of both networks.")
@click.option("--ema-decay", type=FINITE, default=_default("ema_decay"), show_default=True, help="EMA of the student (the saved weights).")
@click.option("--guidance", type=FINITE, default=_default("guidance"), show_default=True, help="CFG of both teachers in the VSD score.")
@click.option("--vsd-t-min", type=int, default=_default("vsd_t_min"), show_default=True, help="Smallest VSD timestep.")
@click.option("--vsd-t-max", type=int, default=_default("vsd_t_max"), show_default=True, help="Largest VSD timestep (inclusive).")
@click.option("--lambda-vsd", type=FINITE, default=_default("lambda_vsd"), show_default=True, help="Weight of the VSD loss; 0 drops VSD and the LoRA teacher (teacher pairs and KL only: an ablation).")
@click.option("--lambda-kl", type=FINITE, default=None, help="Weight of the KL term  [default: 0.1; 0 for --baseline one-step-vsd]")
@click.option("--regression-pairs", type=int, default=_default("regression_pairs"), show_default=True, help="Teacher DDIM (noise, latent) pairs for DMD's regression term; 0: off (the authors' recipe).")
@click.option("--lambda-reg", type=FINITE, default=_default("lambda_reg"), show_default=True, help="Weight of the regression term (latent MSE to the teacher's z0).")
@click.option("--regression-steps", type=int, default=None, help="DDIM steps of the teacher for each pair  [default: the store's, else 50]")
@click.option("--pair-batch", type=int, default=None, help="Pairs per teacher call when drawing pairs  [default: the store's, else 4]")
@click.option("--pairs", type=click.Path(), default=None, help="A teacher pair store (tiue-export distill-pairs) to train on its first --regression-pairs pairs [default: drawn into RUN/pairs].")
@click.option("--regression-guidance", type=FINITE, default=None, help="CFG of the teacher pairs  [default: the teacher's own]")
@click.option("--clip-model", type=click.Path(), default=None, help="A local CLIP model directory (transformers CLIPModel + tokenizer): adds the authors' CLIP term.")
@click.option("--lambda-clip", type=FINITE, default=_default("lambda_clip"), show_default=True, help="Weight of the CLIP term at step 0 (decays linearly to 0 over one epoch of steps).")
@click.option("--clip-tau", type=FINITE, default=_default("clip_tau"), show_default=True, help="The CLIP term is relu(tau - cos(text, image)).")
@click.option("--lora-rank", type=int, default=_default("lora_rank"), show_default=True)
@click.option("--lora-alpha", type=FINITE, default=_default("lora_alpha"), show_default=True)
@click.option("--lora-targets", default=",".join(_default("lora_targets")), show_default=True, help="Comma-separated module names that get LoRA adapters (peft target_modules).")
@click.option("--lora-uncond-prob", type=FINITE, default=_default("lora_uncond_prob"), show_default=True, help="Chance the LoRA step uses the empty prompt.")
@click.option("--mixed-precision", type=click.Choice(MIXED_PRECISION), default=_default("mixed_precision"), show_default=True, help="fp16 as the authors on GPUs; no on CPU.")
@click.option("--gradient-checkpointing", is_flag=True, help="Recompute activations in the backward pass (less memory).")
@click.option("--checkpoint-every", type=int, default=_default("checkpoint_every"), show_default=True, help="Steps between resumable checkpoints.")
@click.option("--keep-checkpoints", type=int, default=_default("keep_checkpoints"), show_default=True, help="Checkpoints to keep (0: all).")
@click.option("--seed", type=SEED, default=_default("seed"), show_default=True)
@click.option("--resume", is_flag=True, help="Continue bit-for-bit from the latest checkpoint in the run directory.")
@click.option("--baseline", type=click.Choice(BASELINES), default=None, help="Train an ablation baseline instead of the TiUE student.")
@click.option("--log-tensorboard", is_flag=True, help="Also log to TensorBoard in the run directory.")
def distill(**opts):
    """Distil a teacher into a one-pass TiUE student with VSD and a KL term (Loopfree recipe)."""
    from . import quiet_libraries

    quiet_libraries()
    if opts["steps"] is not None and opts["epochs"] is not None:
        raise InputError("give --steps or --epochs, not both")
    resume = opts.pop("resume")
    if opts["baseline"] == "one-step-vsd":
        if opts["k"] not in (None, 1):
            raise InputError("--k does not apply to --baseline one-step-vsd (a one-step student)")
        opts["k"] = 1
        if opts["lambda_kl"] is None:
            opts["lambda_kl"] = 0.0  # SwiftBrush has no KL term
    targets = tuple(t.strip() for t in opts.pop("lora_targets").split(",") if t.strip())
    if not targets:
        raise InputError("--lora-targets needs at least one module name, e.g. to_q,to_v")
    opts = {k: v for k, v in opts.items() if v is not None}
    cfg = DistillConfig(**opts, lora_targets=targets)

    from ..distill.train import distill as run

    result = run(cfg, resume=resume)
    if result.is_main:
        click.echo(f"wrote {result.out} ({result.steps} steps)")


@click.command("distill-export")
@click.argument("run_dir", type=click.Path())
@click.option("--out", required=True, type=click.Path(), help="Student directory to write (a diffusers pipeline + tiue.json).")
@click.option("--step", type=int, default=None, help="Checkpoint step [default: the latest].")
def distill_export(run_dir, out, step):
    """Write the EMA student of a checkpoint of RUN_DIR (a distill run directory, OUT.run by default).

    The run may still be going: checkpoints are complete once they exist. The result is a student
    directory like the one distill writes at the end, with the checkpoint's path in tiue.json.
    """
    from . import quiet_libraries

    quiet_libraries()
    from ..distill.train import export_checkpoint

    path, done = export_checkpoint(run_dir, out, step)
    click.echo(f"wrote {path} (step {done})")


@click.command("distill-pairs")
@click.option("--teacher", type=click.Path(), default=None, help="Teacher pipeline directory [default: the built-in toy teacher].")
@click.option("--prompts", required=True, type=click.Path(), help="Training prompts (as distill's --prompts: the same file).")
@click.option("--count", required=True, type=int, help="Pairs the store should hold (rounded up to whole chunks of 64).")
@click.option("--out", required=True, type=click.Path(), help="The pair store directory (give it to distill --pairs).")
@click.option("--steps", type=int, default=50, show_default=True, help="DDIM steps of the teacher for each pair.")
@click.option("--guidance", type=FINITE, default=None, help="CFG of the teacher  [default: the teacher's own]")
@click.option("--seed", type=SEED, default=_default("seed"), show_default=True, help="Which noises (distill's --seed must match).")
@click.option("--batch", type=int, default=4, show_default=True, help="Pairs per teacher call (part of the store's recipe).")
@click.option("--workers", type=int, default=None, help="Processes of one thread each  [default: one per CPU core]")
@click.option("--resume", is_flag=True, help="Add the missing pairs to an existing store.")
def distill_pairs(teacher, prompts, count, out, steps, guidance, seed, batch, workers, resume):
    """Draw the teacher's DDIM (noise, latent) pairs for the regression term into a store.

    Pair i is the same in a store of any size, so the first N pairs of one large store serve runs of
    every N (distill --pairs OUT --regression-pairs N). Interrupted, rerun with --resume: every chunk
    written is kept.
    """
    import os
    from pathlib import Path

    from . import quiet_libraries

    quiet_libraries()
    for name, value, low in (("--count", count, 1), ("--steps", steps, 1), ("--batch", batch, 1), ("--workers", workers or 1, 1)):
        if value < low:
            raise InputError(f"{name} must be >= {low}, got {value}")
    root = Path(out)
    if root.exists() and any(root.iterdir()) and not resume:
        raise InputError(f"{root} already exists: pass --resume to add to it, or choose another --out")
    from ..distill.data import load_prompts
    from ..distill.pairs import CHUNK, chunks_for, fill_store, open_store, store_spec
    from ..distill.train import resolve_teacher, teacher_guidance

    teacher_dir = resolve_teacher(teacher)
    texts = load_prompts(prompts)
    g = teacher_guidance(teacher_dir) if guidance is None else guidance
    spec = store_spec(teacher_dir, texts, steps, g, seed, batch)
    open_store(root, spec, discard_other=False)
    drawn = fill_store(teacher_dir, texts, spec, root, count, workers or os.cpu_count() or 1)
    click.echo(f"{root}: {chunks_for(count) * CHUNK} pairs (ddim:{steps}, CFG {g:g}); {drawn} drawn now")
