"""The distillation loop: a TiUE student learns from a frozen teacher by VSD plus a KL term.

Three networks start from the teacher's UNet: the student (a copy, run as a TiUE one-pass model),
the frozen teacher, and a LoRA teacher that tracks the student's output distribution. The frozen
teacher is the LoRA teacher with its adapters disabled, so the teacher's weights exist once.

Each step (the authors' ``train_loopfree.py``, which builds on SwiftBrush):

1. one TiUE pass from z_T ~ N(0, I) gives K x B noise predictions and, by Eq. 11, z0;
2. VSD: noise z0 to t ~ U{20..980}; the teacher and the LoRA teacher (both with CFG) give the
   score gradient; the KL of every noise prediction to N(0, 1) is added; Adam step on the student
   and an EMA update;
3. the LoRA teacher learns to denoise the (detached) z0 with the usual diffusion loss.

Beyond the authors' recipe (off by default): DMD's regression onto teacher DDIM pairs
(``--regression-pairs``), which the shipped toy student uses.

Runs unchanged on one CPU or under ``accelerate launch`` on many GPUs: each rank draws its own
prompts and noise, DDP averages the gradients, only the main process writes. Checkpoints hold
everything needed to continue bit-for-bit (weights, EMA, both optimisers, every rank's RNG).
"""

from __future__ import annotations

import copy
import itertools
import json
import logging
import shutil
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import InputError, ModelError, require
from ..files import atomic_path, sha256_of_weights, write_json
from ..reference.builtin import ASSETS
from ..reference.pipeline import guided_denoiser
from ..reference.student import TiUEStudent
from ..reference.tiue_config import TIUE_JSON
from ..sampling import to_uint8_images
from ..schedule import OnePassSchedule, combine_one_pass
from .config import DEFAULT_REGRESSION_STEPS, DistillConfig
from .data import load_prompts, make_loader
from .losses import (
    clip_text_loss,
    clip_weight,
    diffuse,
    kl_loss,
    lora_denoising_loss,
    regression_loss,
    vsd_loss,
    vsd_score_gradient,
)
from .pairs import (
    DEFAULT_BATCH,
    PAIRS_DIR,
    PROBE,
    PairSpec,
    PairTeacher,
    generate_pairs,
    load_pairs,
    load_probe,
    open_store,
    prompts_digest,
    read_spec,
)

log = logging.getLogger("tiue_export")

BUILTIN_TEACHER = "toy-teacher"
CHECKPOINTS = "checkpoints"
LOG_FILE = "log.jsonl"
CONFIG_FILE = "config.json"
#: Per-step statistics averaged over processes into log.jsonl, in this order (those the recipe has).
LOGGED = ("loss_vsd", "loss_kl", "loss_reg", "loss_clip", "loss_lora")
#: The one-step baseline's scheduler: set_timesteps(1) gives t=999 and the DDIM step goes to
#: alpha=1, so the one-pass sum is exactly x0 = (z_T - sqrt(1 - abar) eps) / sqrt(abar).
BASELINE_SCHEDULER_OVERRIDES = {"timestep_spacing": "trailing", "set_alpha_to_one": True}


@dataclass
class DistillResult:
    """What a run leaves in memory on every rank (the files are on the main process)."""

    out: Path
    steps: int
    student: TiUEStudent  # raw (non-EMA) weights
    ema: object  # diffusers.training_utils.EMAModel of the student UNet
    lora_unet: torch.nn.Module  # teacher UNet with the trained LoRA adapter
    is_main: bool = True  # whether this process wrote the files


# -- small helpers --------------------------------------------------------------------------------
def resolve_teacher(path) -> Path:
    """``--teacher PATH`` or the built-in toy teacher."""
    if path:
        return Path(path)
    builtin = ASSETS / BUILTIN_TEACHER
    if not (builtin / "model_index.json").exists():
        raise InputError(f"the built-in teacher is not installed ({builtin}): pass --teacher PATH")
    return builtin


def rank_seed(seed: int, rank: int) -> int:
    """Independent per-rank seed: each rank draws its own noise and timesteps."""
    return int(np.random.SeedSequence([seed, rank]).generate_state(1)[0])


def scheduler_overrides(cfg: DistillConfig) -> dict:
    """Changes to the teacher's scheduler config that the student directory carries."""
    return dict(BASELINE_SCHEDULER_OVERRIDES) if cfg.baseline == "one-step-vsd" else {}


def student_schedule(scheduler, cfg: DistillConfig) -> OnePassSchedule:
    """The student's one-pass schedule: ``set_timesteps(K)`` of the (overridden) DDIM scheduler."""
    from diffusers import DDIMScheduler

    config = {**dict(scheduler.config), **scheduler_overrides(cfg)}
    return OnePassSchedule.from_scheduler(DDIMScheduler.from_config(config), k=cfg.k)


def checkpoint_dirs(run: Path) -> list[Path]:
    """Finished checkpoints of a run, oldest first."""
    root = run / CHECKPOINTS
    if not root.is_dir():
        return []
    dirs = [p for p in root.iterdir() if p.is_dir() and p.name.startswith("step-") and (p / "state.json").exists()]
    return sorted(dirs, key=checkpoint_step)


def checkpoint_step(path: Path) -> int:
    """The step of a checkpoint directory (``step-NNNNNNNN``)."""
    return int(path.name.split("-")[1])


def lora_state(unet) -> dict[str, torch.Tensor]:
    """The trainable (LoRA) tensors of the LoRA teacher, by parameter name."""
    return {n: p.detach().cpu().contiguous() for n, p in unet.named_parameters() if p.requires_grad}


# -- output ---------------------------------------------------------------------------------------
def export_student(out: Path, teacher_dir: Path, overrides: dict, student: TiUEStudent, ema, provenance: dict, schedule) -> Path:
    """Write the student pipeline directory atomically: the teacher's components, the EMA UNet, tiue.json."""
    index = json.loads((teacher_dir / "model_index.json").read_text())
    params = list(student.unet.parameters())
    with atomic_path(out) as tmp:
        tmp.mkdir()
        for name, value in index.items():
            if name != "unet" and isinstance(value, list) and (teacher_dir / name).is_dir():
                shutil.copytree(teacher_dir / name, tmp / name)
        (tmp / "model_index.json").write_text(json.dumps(index, indent=2) + "\n")
        if overrides:
            sched_file = tmp / "scheduler" / "scheduler_config.json"
            sched_file.write_text(json.dumps({**json.loads(sched_file.read_text()), **overrides}, indent=2) + "\n")
        ema.store(params)
        ema.copy_to(params)
        try:
            student.unet.save_pretrained(tmp / "unet", safe_serialization=True)
        finally:
            ema.restore(params)
        tiue = {
            "k": schedule.k,
            "timesteps": list(schedule.timesteps),
            "encoder_timestep": schedule.encoder_timestep,
            "kind": "tiue",
            "provenance": provenance,
        }
        (tmp / TIUE_JSON).write_text(json.dumps(tiue, indent=2) + "\n")
    return out


def student_provenance(cfg: DistillConfig, teacher_dir: Path, step: int, world: int) -> dict:
    """What ``tiue.json`` records about how a student was made."""
    provenance = {
        "recipe": cfg.to_dict(),
        "teacher": cfg.teacher,
        "teacher_unet_sha256": sha256_of_weights(teacher_dir / "unet"),
        "steps": step,
        "seed": cfg.seed,
        "baseline": cfg.baseline,
        "processes": world,
        "global_batch_size": cfg.batch_size * world,
        "software": f"tiue-export {__version__}",
    }
    if cfg.baseline == "one-step-vsd":
        provenance["note"] = (
            "one-step SwiftBrush-style student: K=1 at t=999; its scheduler uses trailing spacing and "
            "set_alpha_to_one so the one-pass sampler computes x0 = (z_T - sqrt(1-abar) eps) / sqrt(abar)"
        )
    return provenance


def export_checkpoint(run: Path, out: Path, step: int | None = None) -> tuple[Path, int]:
    """Write the student of one checkpoint of a run (its EMA weights) as a student directory.

    Args:
        run: the run directory (``--run-dir``, by default ``OUT.run``).
        out: the student directory to write (must not exist).
        step: which checkpoint; the latest when None.

    Returns:
        ``(out, step)``.
    """
    from diffusers.training_utils import EMAModel

    from ..reference.pipeline import load_pipeline

    run, out = Path(run), Path(out)
    if not (run / CONFIG_FILE).is_file():
        raise InputError(f"{run} is not a distill run directory (no {CONFIG_FILE})")
    ckpts = {checkpoint_step(p): p for p in checkpoint_dirs(run)}
    if not ckpts:
        raise InputError(f"{run} has no checkpoints yet")
    if step is None:
        step = max(ckpts)
    if step not in ckpts:
        raise InputError(f"{run} has no checkpoint at step {step}; it has {', '.join(str(s) for s in sorted(ckpts))}")
    if out.exists():
        raise InputError(f"--out {out} already exists: choose a new directory")
    path = ckpts[step]
    recorded = json.loads((path / CONFIG_FILE).read_text())
    cfg = DistillConfig.from_dict(recorded)
    teacher_dir = resolve_teacher(cfg.teacher)
    pipe = load_pipeline(teacher_dir)
    schedule = student_schedule(pipe.scheduler, cfg)
    student = TiUEStudent(pipe.unet, schedule.timesteps, schedule.encoder_timestep)
    ema = EMAModel(student.unet.parameters(), decay=cfg.ema_decay)
    ema.load_state_dict(torch.load(path / "ema.pt", weights_only=True, map_location="cpu"))
    world = json.loads((path / "state.json").read_text())["world_size"]
    provenance = {**student_provenance(cfg, teacher_dir, step, world), "recipe": recorded, "checkpoint": str(path.resolve())}
    export_student(out, teacher_dir, scheduler_overrides(cfg), student, ema, provenance, schedule)
    return out, step


def trim_log(path: Path, step: int) -> None:
    """Drop log lines after ``step`` (they belong to steps a resume will redo)."""
    if not path.exists():
        return
    keep = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    with atomic_path(path) as tmp:
        tmp.write_text("".join(line + "\n" for line in keep))


# -- the networks and the two updates -------------------------------------------------------------
@dataclass
class Trainer:
    """The live training state of one rank and the two updates of a step (student, LoRA teacher).

    Build it with :func:`build_trainer`. ``student``/``lora_unet`` are the plain modules, the
    ``*_ddp`` ones what ``accelerator.prepare`` returned (DDP-wrapped on several processes).
    """

    cfg: DistillConfig
    accelerator: object
    student: TiUEStudent
    student_ddp: torch.nn.Module
    lora_unet: torch.nn.Module
    lora_ddp: torch.nn.Module
    opt: object
    opt_lora: object
    ema: object
    schedule: OnePassSchedule
    alphas: torch.Tensor  # the scheduler's alphas_cumprod, float32 on the device
    latent_shape: tuple[int, int, int]
    text_encoder: torch.nn.Module
    tokenizer: object
    null: torch.Tensor  # embedding of the empty prompt (1, L, D)
    generator: torch.Generator  # this rank's noise, timesteps and prompt dropping
    scheduler: object  # the teacher's DDIM scheduler (teacher pairs)
    pairs: tuple | None = None  # (noise, latents, prompts) of the teacher pairs, when regression is on
    probe: tuple | None = None  # (noise, latents, prompts) on noises no pair uses: the log's fresh-noise probe
    vae: torch.nn.Module | None = None  # the teacher's VAE (the probe's images for the strict judge)
    judge: object = None  # images, prompts -> per-image strict verdicts (toy captions only), or None
    clip: tuple | None = None  # (CLIPModel, tokenizer) of --clip-model, frozen
    clip_steps: int = 1  # steps over which the CLIP weight decays to 0 (one epoch, as the authors)
    step: int = 0  # optimisation steps done (the CLIP weight's clock)
    lr_scheduler: object = None  # the student's lr schedule (a torch LambdaLR), stepped after each update

    @property
    def device(self):
        return self.accelerator.device

    @torch.no_grad()
    def encode(self, texts) -> torch.Tensor:
        """Prompt embeddings (no CFG), float32 on the device; over-long prompts are truncated."""
        tok = self.tokenizer
        ids = tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
        return self.text_encoder(ids.input_ids.to(self.device))[0].to(torch.float32)

    def randn(self, shape) -> torch.Tensor:
        return torch.randn(tuple(shape), generator=self.generator).to(self.device)

    def randint(self, low: int, high_inclusive: int, n: int) -> torch.Tensor:
        return torch.randint(low, high_inclusive + 1, (n,), generator=self.generator).to(self.device)

    def pair_batch(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``--batch-size`` random teacher pairs: ``(z_T, prompt embeddings, teacher z0)`` on the device."""
        noise, latents, texts = self.pairs
        idx = torch.randint(0, noise.shape[0], (self.cfg.batch_size,), generator=self.generator)
        return noise[idx].to(self.device), self.encode([texts[i] for i in idx.tolist()]), latents[idx].to(self.device)

    def student_update(self, cond: torch.Tensor, texts: list[str] | None = None) -> tuple[torch.Tensor, dict]:
        """Steps 1-2: one TiUE pass, VSD against both CFG teachers plus KL, Adam step, EMA update.

        With teacher pairs, the same pass also maps a batch of pair noises, and the latent MSE to
        the teacher's z0 (weight ``lambda_reg``) joins the loss.

        Returns:
            The student's z0 (detached) and the step's losses and gradient norm.
        """
        cfg, acc = self.cfg, self.accelerator
        b = cond.shape[0]
        uncond = self.null.expand(b, -1, -1)
        z_T = self.randn((b, *self.latent_shape))
        if self.pairs is None:
            eps = self.student_ddp(z_T, cond)  # K x B noise predictions, timestep-major
            z0 = combine_one_pass(z_T, eps, self.schedule.S, self.schedule.E)  # Eq. 11, differentiable
            loss_reg = z0.new_zeros((), dtype=torch.float32)
        else:  # one pass over [VSD batch; pair batch]
            z_reg, cond_reg, target = self.pair_batch()
            r = z_reg.shape[0]
            eps_all = self.student_ddp(torch.cat([z_T, z_reg]), torch.cat([cond, cond_reg]))
            eps_all = eps_all.unflatten(0, (self.schedule.k, b + r))
            eps, eps_reg = eps_all[:, :b].flatten(0, 1), eps_all[:, b:].flatten(0, 1)
            z0 = combine_one_pass(z_T, eps, self.schedule.S, self.schedule.E)
            z0_reg = combine_one_pass(z_reg, eps_reg, self.schedule.S, self.schedule.E)
            loss_reg = regression_loss(z0_reg, target, cfg.lambda_reg)

        if cfg.lambda_vsd:
            loss_vsd = self.vsd_term(z0, cond, uncond)
        else:  # regression (and KL) only: no teacher calls
            loss_vsd = z0.new_zeros((), dtype=torch.float32)
        loss_kl = kl_loss(eps, cfg.lambda_kl)
        weight = clip_weight(self.step, self.clip_steps, cfg.lambda_clip) if self.clip is not None else 0.0
        loss_clip = self.clip_term(z0, texts) if weight else z0.new_zeros((), dtype=torch.float32)
        acc.backward(cfg.lambda_vsd * loss_vsd + loss_kl + loss_reg + weight * loss_clip)
        grad_norm = acc.clip_grad_norm_(self.student_ddp.parameters(), cfg.max_grad_norm)
        self.opt.step()
        self.opt.zero_grad(set_to_none=True)
        if self.lr_scheduler is not None:
            self.lr_scheduler.step()
        self.ema.step(self.student.unet.parameters())
        stats = {"loss_vsd": loss_vsd.detach(), "loss_kl": loss_kl.detach(), "loss_reg": loss_reg.detach(), "loss_clip": loss_clip.detach(), "grad_norm": grad_norm}
        return z0.detach(), stats

    def decode(self, z0: torch.Tensor) -> torch.Tensor:
        """The teacher VAE's float NCHW images in [-1, 1] of latents ``z0`` (differentiable)."""
        return self.vae.decode(z0.to(self.vae.dtype) / self.vae.config.scaling_factor).sample.float()

    def clip_term(self, z0: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """The authors' CLIP term on the student's z0: decoded by the VAE, pixels in [0, 1] resized
        (bicubic) to the CLIP vision tower's side and embedded without CLIP's mean/std (as their
        script), against the prompts' CLIP text embeddings (frozen)."""
        if texts is None:
            raise ModelError("the CLIP term needs the step's prompts: call student_update(cond, texts)")
        model, tokenizer = self.clip
        images = self.decode(z0)
        side = model.config.vision_config.image_size
        pixels = torch.nn.functional.interpolate(((images + 1) / 2).clamp(0, 1), size=(side, side), mode="bicubic", align_corners=False)
        image_features = projected(model.get_image_features(pixel_values=pixels))
        with torch.no_grad():
            ids = tokenizer(list(texts), padding=True, truncation=True, return_tensors="pt").to(self.device)
            text_features = projected(model.get_text_features(**ids))
        return clip_text_loss(text_features, image_features, self.cfg.clip_tau)

    @contextmanager
    def frozen_teacher(self):
        """Within: ``lora_ddp`` is the frozen teacher (the same weights with the LoRA adapters off)."""
        lora = self.accelerator.unwrap_model(self.lora_ddp)
        lora.disable_adapters()
        try:
            yield
        finally:
            lora.enable_adapters()

    def vsd_term(self, z0: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor):
        """VSD: noise z0 at t ~ U{vsd_t_min..vsd_t_max}, score gradient from both CFG teachers.

        Returns:
            The (unweighted) VSD loss.
        """
        cfg = self.cfg
        t = self.randint(cfg.vsd_t_min, cfg.vsd_t_max, z0.shape[0])
        abar = self.alphas[t]
        noise = self.randn(z0.shape)
        x_t = diffuse(z0.detach(), noise, abar)
        with torch.no_grad():
            with self.frozen_teacher():
                eps_teacher = guided_denoiser(self.lora_ddp, cond, uncond, cfg.guidance)(x_t, t)
            eps_lora = guided_denoiser(self.lora_ddp, cond, uncond, cfg.guidance)(x_t, t)
        return vsd_loss(z0, vsd_score_gradient(eps_teacher, eps_lora, abar))

    def lora_update(self, z0: torch.Tensor, cond: torch.Tensor) -> dict:
        """Step 3: the LoRA teacher learns to denoise the student's samples (diffusion loss), Adam step."""
        cfg, acc = self.cfg, self.accelerator
        b = z0.shape[0]
        t = self.randint(0, self.alphas.shape[0] - 1, b)
        noise = self.randn(z0.shape)
        x_t = diffuse(z0, noise, self.alphas[t])
        drop = bool(torch.rand((), generator=self.generator) < cfg.lora_uncond_prob)  # whole batch
        ehs = self.null.expand(b, -1, -1) if drop else cond
        loss_lora = lora_denoising_loss(self.lora_ddp(x_t, t, encoder_hidden_states=ehs).sample, noise, self.alphas[t])
        acc.backward(loss_lora)
        grad_norm = acc.clip_grad_norm_(self.lora_ddp.parameters(), cfg.max_grad_norm)
        self.opt_lora.step()
        self.opt_lora.zero_grad(set_to_none=True)
        return {"loss_lora": loss_lora.detach(), "grad_norm_lora": grad_norm}

    # -- checkpoints ------------------------------------------------------------------------------
    @torch.no_grad()
    def probe_metrics(self) -> dict:
        """How the EMA student meets the teacher, for the log at each checkpoint: latent MSE on the
        first ``PROBE`` training pairs (``mse_pairs``) and on the store's fresh noises
        (``mse_fresh``); with toy captions, the strict judge's accuracy on the fresh noises'
        images (``strict_fresh``). A gap between the two MSEs is memorisation of the pairs."""
        params = list(self.student.unet.parameters())
        self.ema.store(params)
        self.ema.copy_to(params)
        try:
            out = {}
            sets = {"pairs": tuple(x[:PROBE] for x in self.pairs)} if self.pairs is not None else {}
            if self.probe is not None:
                sets["fresh"] = self.probe
            for name, (noise, latents, texts) in sets.items():
                z0 = torch.cat([
                    combine_one_pass(noise[i : i + 16].to(self.device), self.student(noise[i : i + 16].to(self.device), self.encode(texts[i : i + 16])), self.schedule.S, self.schedule.E)
                    for i in range(0, len(texts), 16)
                ])
                out[f"mse_{name}"] = float(torch.mean((z0.float().cpu() - latents) ** 2))
                if name == "fresh" and self.judge is not None:
                    images = to_uint8_images(self.decode(z0).cpu().numpy())
                    out["strict_fresh"] = float(np.mean(self.judge(images, list(texts))))
            return out
        finally:
            self.ema.restore(params)

    def rng_state(self) -> dict:
        states = {"generator": self.generator.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            states["cuda"] = torch.cuda.get_rng_state_all()
        return states

    def save(self, path: Path, step: int, rng_states: list) -> Path:
        """Write a checkpoint directory atomically (call on the main process only)."""
        from safetensors.torch import save_file

        with atomic_path(path) as tmp:
            tmp.mkdir()
            unet_state = {k: v.detach().cpu().contiguous() for k, v in self.student.unet.state_dict().items()}
            save_file(unet_state, tmp / "student.safetensors")
            save_file(lora_state(self.lora_unet), tmp / "lora.safetensors")
            torch.save(self.ema.state_dict(), tmp / "ema.pt")
            scaler = self.accelerator.scaler
            opts = {"student": self.opt.state_dict(), "lora": self.opt_lora.state_dict(), "scaler": scaler.state_dict() if scaler else None}
            if self.lr_scheduler is not None:
                opts["lr_scheduler"] = self.lr_scheduler.state_dict()
            torch.save(opts, tmp / "optimizers.pt")
            torch.save(rng_states, tmp / "rng.pt")
            (tmp / CONFIG_FILE).write_text(json.dumps(self.cfg.to_dict(), indent=2) + "\n")
            (tmp / "state.json").write_text(json.dumps({"step": step, "world_size": self.accelerator.num_processes}) + "\n")
        return path

    def load(self, path: Path) -> int:
        """Restore a checkpoint (weights, EMA, optimisers, this rank's RNG); returns its step."""
        from safetensors.torch import load_file

        acc = self.accelerator
        state = json.loads((path / "state.json").read_text())
        if state["world_size"] != acc.num_processes:
            raise InputError(
                f"{path} was written by {state['world_size']} process(es) but this run has {acc.num_processes}: "
                "resume with the same number of processes"
            )
        self.student.unet.load_state_dict(load_file(path / "student.safetensors"))
        lora = load_file(path / "lora.safetensors")
        result = self.lora_unet.load_state_dict(lora, strict=False)
        if result.unexpected_keys or set(lora) != set(lora_state(self.lora_unet)):
            raise ModelError(f"{path}: the LoRA weights do not match this LoRA teacher (rank or targets changed?)")
        self.ema.load_state_dict(torch.load(path / "ema.pt", weights_only=True))
        self.ema.to(acc.device)
        opts = torch.load(path / "optimizers.pt", weights_only=True)
        self.opt.load_state_dict(opts["student"])
        self.opt_lora.load_state_dict(opts["lora"])
        if self.lr_scheduler is not None:
            if "lr_scheduler" not in opts:
                raise ModelError(f"{path} has no lr schedule state: resume with the original --lr-schedule")
            self.lr_scheduler.load_state_dict(opts["lr_scheduler"])
        if acc.scaler is not None and opts["scaler"] is not None:
            acc.scaler.load_state_dict(opts["scaler"])
        rng = torch.load(path / "rng.pt", weights_only=True)[acc.process_index]
        self.generator.set_state(rng["generator"])
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])
        return int(state["step"])


def make_lr_scheduler(opt, cfg: DistillConfig, total: int):
    """The student's lr schedule over ``total`` steps (diffusers' schedulers); None when constant.

    Stepped once per optimisation step on every rank alike (not through ``accelerator.prepare``,
    which would step it once per process).
    """
    if cfg.lr_schedule == "constant" and not cfg.lr_warmup_steps:
        return None
    from diffusers.optimization import get_scheduler

    name = "constant_with_warmup" if cfg.lr_schedule == "constant" else cfg.lr_schedule
    return get_scheduler(name, optimizer=getattr(opt, "optimizer", opt), num_warmup_steps=cfg.lr_warmup_steps, num_training_steps=total)


def make_accelerator(cfg: DistillConfig):
    """The Accelerator of a run: mixed precision, TensorBoard if asked; fp16 needs a GPU."""
    require("accelerate", "distillation")
    if cfg.log_tensorboard:
        require("tensorboard", "--log-tensorboard")
    from accelerate import Accelerator
    from accelerate.state import AcceleratorState

    # accelerate keeps its mixed-precision state per process; a second run in the same process
    # (tests, notebooks) may use another precision. The distributed state is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    # Without a GPU (or other accelerator), say cpu=True: accelerate then runs several processes
    # (torchrun, mpirun) as MULTI_CPU with gloo instead of as independent single-process runs.
    has_accelerator = torch.accelerator.is_available() if hasattr(torch, "accelerator") else torch.cuda.is_available()
    acc = Accelerator(
        cpu=not has_accelerator,
        mixed_precision=cfg.mixed_precision,
        log_with="tensorboard" if cfg.log_tensorboard else None,
        project_dir=str(cfg.run_path),
    )
    if cfg.mixed_precision == "fp16" and acc.device.type == "cpu":
        raise InputError("--mixed-precision fp16 needs a GPU: on CPU use bf16 or no")
    return acc


def add_lora(unet, cfg: DistillConfig, teacher_dir: Path) -> list:
    """LoRA adapters on the teacher's ``cfg.lora_targets`` layers (VSD's LoRA teacher); returns
    their parameters, the only trainable ones."""
    from peft import LoraConfig

    torch.manual_seed(cfg.seed)  # LoRA's A matrices are random (B starts at zero)
    no_targets = f"{teacher_dir}: no {'/'.join(cfg.lora_targets)} layers for the LoRA teacher"
    try:
        unet.add_adapter(LoraConfig(r=cfg.lora_rank, lora_alpha=cfg.lora_alpha, target_modules=list(cfg.lora_targets)))
    except ValueError as e:  # peft's NoMatchingPeftModuleError, or a layer type LoRA does not support
        raise ModelError(f"{no_targets} ({str(e).splitlines()[0]})") from e
    if not any(p.requires_grad for p in unet.parameters()):
        raise ModelError(no_targets)
    return [p for p in unet.parameters() if p.requires_grad]


def adam(params, lr: float, cfg: DistillConfig) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr, betas=(cfg.adam_beta1, cfg.adam_beta2), eps=cfg.adam_eps, weight_decay=cfg.weight_decay)


def build_trainer(cfg: DistillConfig, teacher_dir: Path, accelerator) -> Trainer:
    """Load the teacher and build the student, the LoRA teacher, their optimisers and the EMA."""
    require("peft", "the LoRA teacher of VSD")
    from diffusers.training_utils import EMAModel

    from ..reference.pipeline import load_pipeline

    device = accelerator.device
    weight_dtype = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[cfg.mixed_precision]
    pipe = load_pipeline(teacher_dir)
    if pipe.student_config is not None and pipe.student_config.kind == "tiue" and accelerator.is_main_process:
        log.warning("%s is marked as a TiUE student in tiue.json; distilling from it as the teacher anyway", teacher_dir)
    latent_shape = pipe.latent_shape(cfg.resolution, cfg.resolution)
    n_train = int(pipe.scheduler.config.num_train_timesteps)
    if cfg.vsd_t_max >= n_train:
        raise InputError(f"--vsd-t-max must be below the teacher's {n_train} training timesteps, got {cfg.vsd_t_max}")
    schedule = student_schedule(pipe.scheduler, cfg)

    # Trainable weights stay float32 (autocast does the mixed precision); the text encoder is
    # frozen and cast once. The frozen teacher is the LoRA teacher with its adapters disabled.
    student_unet = copy.deepcopy(pipe.unet).requires_grad_(True).train()
    student = TiUEStudent(student_unet, schedule.timesteps, schedule.encoder_timestep)
    lora_unet = pipe.unet.train()
    lora_params = add_lora(lora_unet, cfg, teacher_dir)
    if cfg.gradient_checkpointing:
        student_unet.enable_gradient_checkpointing()
        lora_unet.enable_gradient_checkpointing()
    ema = EMAModel(student_unet.parameters(), decay=cfg.ema_decay)
    opt, opt_lora = adam(student_unet.parameters(), cfg.lr, cfg), adam(lora_params, cfg.lr_lora, cfg)
    student_ddp, lora_ddp, opt, opt_lora = accelerator.prepare(student, lora_unet, opt, opt_lora)
    ema.to(device)
    trainer = Trainer(
        cfg=cfg,
        accelerator=accelerator,
        student=student,
        student_ddp=student_ddp,
        lora_unet=lora_unet,
        lora_ddp=lora_ddp,
        opt=opt,
        opt_lora=opt_lora,
        ema=ema,
        schedule=schedule,
        alphas=pipe.scheduler.alphas_cumprod.to(device, torch.float32),
        latent_shape=latent_shape,
        text_encoder=pipe.text_encoder.to(device, dtype=weight_dtype),
        tokenizer=pipe.tokenizer,
        null=torch.empty(0),
        generator=torch.Generator().manual_seed(rank_seed(cfg.seed, accelerator.process_index)),
        scheduler=pipe.scheduler,
        vae=pipe.vae.to(device).eval(),
    )
    trainer.null = trainer.encode([""])
    return trainer


def projected(features) -> torch.Tensor:
    """CLIP's projected embeddings: transformers 4 returns them, 5 a model output holding them."""
    return features if torch.is_tensor(features) else features.pooler_output


def load_clip(path: str, device) -> tuple:
    """A frozen CLIP model and its tokenizer from a local directory."""
    from transformers import AutoTokenizer, CLIPModel

    if not (Path(path) / "config.json").is_file():
        raise InputError(f"--clip-model {path} is not a CLIP model directory (no config.json): give a local transformers CLIPModel directory")
    try:
        model = CLIPModel.from_pretrained(path).to(device).eval().requires_grad_(False)
        tokenizer = AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError, KeyError) as exc:
        raise ModelError(f"--clip-model {path}: cannot load a CLIP model and tokenizer ({str(exc).splitlines()[0]})") from exc
    return model, tokenizer


def toy_judge(prompts: list[str]):
    """The strict judge of ``toy eval`` as ``(images, prompts) -> verdicts`` when every prompt is a
    toy caption, else None (another domain has no judge)."""
    from ..toy import domain

    try:
        for p in set(prompts):
            domain.parse_caption(p)
    except (InputError, ValueError, KeyError):
        return None
    from ..toy.classifier import load_classifier
    from ..toy.evaluate import strict_verdicts

    classifier = load_classifier()
    return lambda images, texts: [v.right for v in strict_verdicts(classifier, texts, images)]


# -- the run --------------------------------------------------------------------------------------
def teacher_guidance(teacher_dir: Path) -> float:
    """The CFG scale a teacher was made for (its ``tiue.json``), as ``infer`` uses it."""
    from ..reference.tiue_config import DEFAULT_GUIDANCE, StudentConfig

    config = StudentConfig.read(teacher_dir)
    return config.guidance if config else DEFAULT_GUIDANCE


def pair_store(cfg: DistillConfig) -> Path:
    """Where the run's teacher pairs live: ``--pairs DIR`` (a shared store) or ``RUN/pairs``."""
    return Path(cfg.pairs) if cfg.pairs else cfg.run_path / PAIRS_DIR


def teacher_pairs(tr: Trainer, prompts: list[str], teacher_dir: Path) -> tuple:
    """Generate (or reuse) the run's teacher pairs on all ranks and load them everywhere; also
    sets ``tr.probe`` (the store's probe set, for the log)."""
    cfg, acc = tr.cfg, tr.accelerator
    spec = PairSpec(
        steps=cfg.regression_steps,
        guidance=float(cfg.regression_guidance),
        seed=cfg.seed,
        teacher_unet_sha256=sha256_of_weights(teacher_dir / "unet"),
        prompts_sha256=prompts_digest(prompts),
        latent_shape=tuple(tr.latent_shape),
        batch=cfg.pair_batch,
    )
    root = pair_store(cfg)
    if not cfg.pairs:  # the run's own store; a shared one is filled by distill-pairs only
        if acc.is_main_process:
            open_store(root, spec, discard_other=True)
        acc.wait_for_everyone()
        teacher = PairTeacher(unet=acc.unwrap_model(tr.lora_ddp), scheduler=tr.scheduler, encode=tr.encode, null=tr.null, device=tr.device, autocast=acc.autocast)
        with tr.frozen_teacher():
            generate_pairs(teacher, prompts, spec, root, cfg.regression_pairs, acc.process_index, acc.num_processes, progress=acc.is_main_process)
        acc.wait_for_everyone()
    tr.probe = load_probe(root)
    return load_pairs(root, spec, cfg.regression_pairs)


def resolve_pair_recipe(cfg: DistillConfig, teacher_dir: Path) -> DistillConfig:
    """Fill the pair recipe's unset fields: from the store of ``--pairs``, else the defaults (the
    teacher's own CFG); a store whose recipe disagrees with an explicit option is refused."""
    if not cfg.regression_pairs:
        return cfg
    if cfg.pairs:
        spec = read_spec(Path(cfg.pairs))
        store = {"regression_steps": spec.steps, "regression_guidance": spec.guidance, "pair_batch": spec.batch}
        clash = [f"--{k.replace('_', '-')} {getattr(cfg, k)} (the store's: {v})" for k, v in store.items() if getattr(cfg, k) not in (None, v)]
        if clash or spec.seed != cfg.seed:
            clash += [f"--seed {cfg.seed} (the store's: {spec.seed})"] if spec.seed != cfg.seed else []
            raise InputError(f"--pairs {cfg.pairs} was drawn with another recipe: {', '.join(clash)}")
        return cfg.replace(**store)
    return cfg.replace(
        regression_steps=cfg.regression_steps or DEFAULT_REGRESSION_STEPS,
        regression_guidance=teacher_guidance(teacher_dir) if cfg.regression_guidance is None else cfg.regression_guidance,
        pair_batch=cfg.pair_batch or DEFAULT_BATCH,
    )


def check_resume(cfg: DistillConfig, ckpts: list[Path], resume: bool) -> None:
    """Refuse to overwrite an earlier run or its output, and to resume one with another recipe."""
    run, out = cfg.run_path, Path(cfg.out)
    if ckpts and not resume:
        raise InputError(f"{run} holds checkpoints of an earlier run: pass --resume to continue it, or choose another --out")
    if out.exists() and not resume:
        raise InputError(f"--out {out} already exists: choose a new directory")
    if resume and not ckpts and not (run / CONFIG_FILE).exists():
        raise InputError(f"--resume: {run} holds no run to continue: drop --resume to start one")
    if resume and (run / CONFIG_FILE).exists():
        recorded = json.loads((run / CONFIG_FILE).read_text())
        changed = DistillConfig.from_dict(recorded).differences(cfg)
        if changed:
            raise InputError(f"--resume with a different recipe ({', '.join(changed)}): use the original options")


def step_record(cfg: DistillConfig, tr, accelerator, student_stats: dict, lora_stats: dict, step: int, epoch: int, seconds: float):
    """The losses of one step, averaged over every process, and its log.jsonl record."""
    stats = {**student_stats, **lora_stats}
    if tr.pairs is None:
        del stats["loss_reg"]
    if tr.clip is None:
        del stats["loss_clip"]
    if not cfg.lambda_vsd:
        del stats["loss_vsd"]
    names = [n for n in LOGGED if n in stats]
    losses = torch.stack([stats[n] for n in names]).float()
    losses = dict(zip(names, accelerator.reduce(losses, reduction="mean").tolist()))
    record = {
        "step": step,
        "epoch": epoch,
        **losses,
        "grad_norm": float(student_stats["grad_norm"]),
        **({"grad_norm_lora": float(lora_stats["grad_norm_lora"])} if lora_stats else {}),
        "ema_decay": float(tr.ema.cur_decay_value),
        "lr": float(tr.opt.param_groups[0]["lr"]),
        "seconds": seconds,
    }
    return losses, record


def add_guidance_terms(tr: Trainer, prompts: list[str], teacher_dir: Path) -> None:
    """The optional terms' models: CLIP for the CLIP loss, the teacher's pairs for the regression
    loss (and, on the main process, the toy judge of the log's probe)."""
    cfg = tr.cfg
    if cfg.clip_model and cfg.lambda_clip:
        tr.clip = load_clip(cfg.clip_model, tr.device)
    if cfg.regression_pairs and cfg.lambda_reg:
        tr.pairs = teacher_pairs(tr, prompts, teacher_dir)
        if tr.accelerator.is_main_process and tr.probe is not None:
            tr.judge = toy_judge(tr.probe[2])


def train_loop(tr: Trainer, loader, step: int, total: int) -> int:
    """Train from ``step`` to ``total``, epoch by epoch (a resumed epoch skips the batches it had
    done), logging every step and checkpointing every ``checkpoint_every``; returns the last step."""
    from accelerate.utils import gather_object
    from tqdm.auto import tqdm

    cfg, accelerator = tr.cfg, tr.accelerator
    main, run, per_epoch = accelerator.is_main_process, cfg.run_path, len(loader)
    bar = tqdm(total=total, initial=step, desc="distill", disable=not main, dynamic_ncols=True)
    epoch, skip = divmod(step, per_epoch)
    while step < total:
        loader.sampler.set_epoch(epoch)  # same shuffle on every rank, each rank its own shard
        for texts in itertools.islice(loader, skip, None):
            t0 = time.perf_counter()
            cond = tr.encode(texts)
            tr.step = step
            z0, student_stats = tr.student_update(cond, texts)
            lora_stats = tr.lora_update(z0, cond) if cfg.lambda_vsd else {}  # no VSD: the LoRA teacher is unused
            step += 1

            losses, record = step_record(cfg, tr, accelerator, student_stats, lora_stats, step, epoch, time.perf_counter() - t0)
            if main and tr.pairs is not None and (step % cfg.checkpoint_every == 0 or step == total):
                record.update(tr.probe_metrics())
            if main:
                with (run / LOG_FILE).open("a") as f:
                    f.write(json.dumps(record) + "\n")
                bar.set_postfix({n.removeprefix("loss_"): f"{v:.3g}" for n, v in losses.items()})
                bar.update(1)
            if cfg.log_tensorboard:
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
            if step % cfg.checkpoint_every == 0 or step == total:
                states = gather_object([tr.rng_state()])  # every rank's RNG, in rank order
                if main:
                    tr.save(run / CHECKPOINTS / f"step-{step:08d}", step, states)
                    if cfg.keep_checkpoints:
                        for old in checkpoint_dirs(run)[: -cfg.keep_checkpoints]:
                            shutil.rmtree(old, ignore_errors=True)
                accelerator.wait_for_everyone()
            if step >= total:
                break
        epoch, skip = epoch + 1, 0
    bar.close()
    return step


def distill(cfg: DistillConfig, resume: bool = False) -> DistillResult:
    """Distil a teacher into a TiUE student (or the one-step VSD baseline).

    Args:
        cfg: the recipe; ``cfg.out`` receives the student pipeline directory, ``cfg.run_path``
            the checkpoints, the resolved config and ``log.jsonl``.
        resume: continue from the latest checkpoint in ``cfg.run_path`` (from step 0 if none).

    Returns:
        The trained networks (on every rank) and where the student was written.
    """
    teacher_dir = resolve_teacher(cfg.teacher)
    # absolute paths: the recipe is compared on --resume and recorded in tiue.json
    cfg = cfg.replace(teacher=str(teacher_dir.resolve()), prompts=str(Path(cfg.prompts).resolve()))
    cfg = resolve_pair_recipe(cfg, teacher_dir)
    run, out = cfg.run_path, Path(cfg.out)
    ckpts = checkpoint_dirs(run)
    check_resume(cfg, ckpts, resume)
    prompts = load_prompts(cfg.prompts)
    accelerator = make_accelerator(cfg)
    main = accelerator.is_main_process
    tr = build_trainer(cfg, teacher_dir, accelerator)

    rank, world = accelerator.process_index, accelerator.num_processes
    add_guidance_terms(tr, prompts, teacher_dir)
    loader = make_loader(prompts, cfg.batch_size, rank, world, cfg.seed)
    per_epoch = len(loader)
    total = cfg.steps or cfg.epochs * per_epoch
    tr.clip_steps = per_epoch
    tr.lr_scheduler = make_lr_scheduler(tr.opt, cfg, total)
    step = tr.load(ckpts[-1]) if resume and ckpts else 0
    if main:
        run.mkdir(parents=True, exist_ok=True)
        write_json(run / CONFIG_FILE, cfg.to_dict())
        trim_log(run / LOG_FILE, step)
        if resume:
            log.info("resuming at step %d from %s", step, ckpts[-1] if ckpts else "scratch (no checkpoint yet)")
        log.info(
            "distilling %s into a %s student: %d prompts, %d process(es) x batch %d, %d steps (%d per epoch); run dir %s",
            teacher_dir, "one-step VSD" if cfg.baseline else f"K={cfg.k} TiUE", len(prompts), world, cfg.batch_size,
            total, per_epoch, run,
        )
    if cfg.log_tensorboard:
        flat = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in cfg.to_dict().items()}
        accelerator.init_trackers("distill", config=flat)

    step = train_loop(tr, loader, step, total)

    if main:
        provenance = student_provenance(cfg, teacher_dir, step, world)
        export_student(out, teacher_dir, scheduler_overrides(cfg), tr.student, tr.ema, provenance, tr.schedule)
        log.info("wrote the student to %s (%d steps)", out, step)
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return DistillResult(out=out, steps=step, student=tr.student, ema=tr.ema, lora_unet=tr.lora_unet, is_main=main)
