"""The distillation loop on tiny models: isolated updates, a loadable student, exact resume,
the one-step baseline, two processes with gloo, and the CLI's one-line errors."""

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import DISTILL_PROMPTS as PROMPTS
from helpers.cli import run_cli
from safetensors.torch import load_file

from tiue_export.distill.config import DistillConfig
from tiue_export.errors import InputError


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one intra-op thread is as fast, and far faster when other jobs share the cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def config(teacher, prompts_file, out, **kw):
    kw = {"steps": 2, "batch_size": 2, "checkpoint_every": 2, **kw}
    return DistillConfig(prompts=str(prompts_file), out=str(out), teacher=str(teacher), **kw)


def snapshot(module, lora: bool | None = None):
    return {
        n: p.detach().clone()
        for n, p in module.named_parameters()
        if lora is None or ("lora_" in n) == lora
    }


def changed(before, module):
    now = dict(module.named_parameters())
    return {n for n, p in before.items() if not torch.equal(p, now[n])}


def test_each_update_changes_only_its_own_network(teacher, prompts_file, tmp_path):
    from diffusers import UNet2DConditionModel

    from tiue_export.distill.train import build_trainer, make_accelerator

    cfg = config(teacher, prompts_file, tmp_path / "o")
    tr = build_trainer(cfg, Path(teacher), make_accelerator(cfg))
    student0, base0, lora0 = snapshot(tr.student), snapshot(tr.lora_unet, False), snapshot(tr.lora_unet, True)
    assert lora0 and not any("lora_" in n for n in student0)

    cond = tr.encode(PROMPTS[:2])
    z0, stats = tr.student_update(cond)
    assert z0.shape == (2, *tr.latent_shape) and not z0.requires_grad
    assert changed(student0, tr.student), "the student did not move"
    assert not changed(base0, tr.lora_unet) and not changed(lora0, tr.lora_unet)
    assert stats["loss_kl"] > 0

    student1 = snapshot(tr.student)
    tr.lora_update(z0, cond)
    assert changed(lora0, tr.lora_unet), "the LoRA teacher did not move"
    assert not changed(student1, tr.student) and not changed(base0, tr.lora_unet)

    # The frozen teacher is the LoRA teacher with adapters off: still exactly the original UNet.
    original = UNet2DConditionModel.from_pretrained(Path(teacher) / "unet").eval()
    x, t = torch.randn(2, *tr.latent_shape), torch.tensor([500, 30])
    tr.lora_unet.disable_adapters()
    try:
        with torch.no_grad():
            frozen = tr.lora_unet(x, t, encoder_hidden_states=cond).sample
            reference = original(x, t, encoder_hidden_states=cond).sample
    finally:
        tr.lora_unet.enable_adapters()
    assert torch.allclose(frozen, reference, rtol=0, atol=1e-5)  # same weights; peft's wrapper may reorder ops


def test_end_to_end_student_is_loadable(teacher, prompts_file, tmp_path):
    from tiue_export.distill.train import distill, sha256_of_weights
    from tiue_export.reference.pipeline import load_pipeline

    out = tmp_path / "student"
    result = distill(config(teacher, prompts_file, out, steps=3))
    assert result.steps == 3
    pipe = load_pipeline(out)
    info = json.loads((out / "tiue.json").read_text())
    assert info["kind"] == "tiue" and info["k"] == 4
    assert info["timesteps"] == list(pipe.schedule.timesteps) == [751, 501, 251, 1]
    assert info["encoder_timestep"] == 751
    prov = info["provenance"]
    assert prov["steps"] == 3 and prov["seed"] == 0 and prov["baseline"] is None
    assert prov["teacher_unet_sha256"] == sha256_of_weights(Path(teacher) / "unet")
    assert prov["recipe"]["lr"] == 1e-6 and prov["recipe"]["teacher"] == prov["teacher"] == str(Path(teacher).resolve())
    # the saved UNet is the EMA of the student, not its raw weights
    saved = dict(pipe.unet.named_parameters())
    names = [n for n, _ in result.student.unet.named_parameters()]
    for name, shadow in zip(names, result.ema.shadow_params):
        assert torch.equal(saved[name], shadow)
    assert (out / "tokenizer").is_dir() and (out / "vae").is_dir()
    res = pipe.sample(PROMPTS[:1], [0])
    assert res.images.shape[0] == 1 and np.isfinite(res.latents).all()

    run = Path(str(out) + ".run")
    assert DistillConfig.from_dict(json.loads((run / "config.json").read_text())).lr == 1e-6
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    assert {"loss_vsd", "loss_kl", "loss_lora"} <= set(log[0])
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-00000002", "step-00000003"]


def _checkpoint_tensors(path):
    out = {f"student/{k}": v for k, v in load_file(path / "student.safetensors").items()}
    out.update({f"lora/{k}": v for k, v in load_file(path / "lora.safetensors").items()})
    ema = torch.load(path / "ema.pt", weights_only=True)
    out.update({f"ema/{i}": v for i, v in enumerate(ema["shadow_params"])})
    opts = torch.load(path / "optimizers.pt", weights_only=True)
    for name in ("student", "lora"):
        for i, state in opts[name]["state"].items():
            out.update({f"opt-{name}/{i}/{k}": v for k, v in state.items()})
    return out


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [{}, {"regression_pairs": 4, "regression_steps": 1}], ids=["authors", "teacher-pairs"])
def test_resume_is_bit_for_bit(teacher, prompts_file, tmp_path, recipe):
    from tiue_export.distill.train import distill

    straight = tmp_path / "straight"
    distill(config(teacher, prompts_file, straight, steps=4, checkpoint_every=2, **recipe))
    split = tmp_path / "split"
    distill(config(teacher, prompts_file, split, steps=2, checkpoint_every=2, **recipe))
    with pytest.raises(InputError, match="pass --resume to continue it"):
        distill(config(teacher, prompts_file, split, steps=4, **recipe))
    with pytest.raises(InputError, match=r"different recipe \(lr\)"):
        distill(config(teacher, prompts_file, split, steps=4, lr=1e-5, **recipe), resume=True)
    distill(config(teacher, prompts_file, split, steps=4, checkpoint_every=2, **recipe), resume=True)

    a = _checkpoint_tensors(Path(f"{straight}.run/checkpoints/step-00000004"))
    b = _checkpoint_tensors(Path(f"{split}.run/checkpoints/step-00000004"))
    assert a.keys() == b.keys()
    assert [k for k in a if not torch.equal(a[k], b[k])] == []
    ua = load_file(straight / "unet" / "diffusion_pytorch_model.safetensors")
    ub = load_file(split / "unet" / "diffusion_pytorch_model.safetensors")
    assert all(torch.equal(ua[k], ub[k]) for k in ua)

    def losses(run):
        return [{k: v for k, v in json.loads(line).items() if k != "seconds"} for line in Path(run, "log.jsonl").read_text().splitlines()]

    assert losses(f"{straight}.run") == losses(f"{split}.run")


@pytest.mark.slow
def test_cosine_lr_schedule_decays_to_zero_and_resumes_bit_for_bit(teacher, prompts_file, tmp_path):
    import shutil

    from tiue_export.distill.train import distill

    kw = dict(steps=4, lr=1e-4, lr_schedule="cosine", lr_warmup_steps=1, checkpoint_every=2, keep_checkpoints=0)
    out = tmp_path / "s"
    run = Path(f"{out}.run")
    distill(config(teacher, prompts_file, out, **kw))

    def lrs():
        return [json.loads(line)["lr"] for line in (run / "log.jsonl").read_text().splitlines()]

    # the lr after each step: warm-up to 1e-4 at step 1, then half a cosine down to 0 at step 4
    assert lrs() == pytest.approx([1e-4, 0.75e-4, 0.25e-4, 0.0], abs=1e-12)
    straight, logged = _checkpoint_tensors(run / "checkpoints/step-00000004"), lrs()
    # interrupted after step 2: the schedule is a function of the total, which a resume may not change
    shutil.rmtree(run / "checkpoints/step-00000004")
    shutil.rmtree(out)
    with pytest.raises(InputError, match=r"different recipe \(steps\)"):
        distill(config(teacher, prompts_file, out, **{**kw, "steps": 6}), resume=True)
    distill(config(teacher, prompts_file, out, **kw), resume=True)
    assert lrs() == logged
    again = _checkpoint_tensors(run / "checkpoints/step-00000004")
    assert [k for k in straight if not torch.equal(straight[k], again[k])] == []


def test_resume_refuses_another_process_count(teacher, prompts_file, tmp_path):
    from tiue_export.distill.train import distill

    out = tmp_path / "o"
    distill(config(teacher, prompts_file, out, steps=1, checkpoint_every=1))
    state = Path(f"{out}.run/checkpoints/step-00000001/state.json")
    state.write_text(json.dumps({"step": 1, "world_size": 2}))
    with pytest.raises(InputError, match="written by 2 process"):
        distill(config(teacher, prompts_file, out, steps=2, checkpoint_every=1), resume=True)


def test_one_step_baseline_samples_x0_with_the_one_pass_sampler(teacher, prompts_file, tmp_path):
    from tiue_export.distill.train import distill
    from tiue_export.reference.pipeline import load_pipeline

    out = tmp_path / "baseline"
    distill(config(teacher, prompts_file, out, steps=1, baseline="one-step-vsd", k=1, lambda_kl=0.0))
    pipe = load_pipeline(out)
    info = json.loads((out / "tiue.json").read_text())
    assert (info["k"], info["timesteps"], info["encoder_timestep"]) == (1, [999], 999)
    assert info["provenance"]["baseline"] == "one-step-vsd"
    res = pipe.sample(PROMPTS[:2], [0, 1], height=None)
    noise = torch.from_numpy(np.stack([np.asarray(n) for n in _noise(pipe, [0, 1])]))
    with torch.no_grad():
        cond = pipe.encode_text(PROMPTS[:2])
        eps = pipe.unet(noise, 999, encoder_hidden_states=cond).sample.double()
    abar = pipe.scheduler.alphas_cumprod.double()[999]
    x0 = (noise.double() - (1 - abar).sqrt() * eps) / abar.sqrt()  # SwiftBrush's one-step sample
    assert np.allclose(res.latents, x0.numpy(), atol=1e-4)


def _noise(pipe, seeds):
    from tiue_export.sampling import initial_noise

    return initial_noise(seeds, pipe.latent_shape())


@pytest.mark.slow
@pytest.mark.parametrize(
    "extra", [{}, {"regression_pairs": 65, "regression_steps": 1}], ids=["recipe", "teacher-pairs"]
)
def test_two_processes_keep_identical_weights(teacher, prompts_file, tmp_path, extra):
    script = tmp_path / "rank.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import hashlib, os, torch
            from tiue_export.distill.config import DistillConfig
            from tiue_export.distill.train import distill
            r = distill(DistillConfig(prompts={str(prompts_file)!r}, out={str(tmp_path / 'o')!r},
                                      teacher={str(teacher)!r}, steps=2, batch_size=1, checkpoint_every=2, **{extra!r}))
            h = hashlib.sha256()
            for _, v in sorted(r.student.unet.state_dict().items()):
                h.update(v.numpy().tobytes())
            for v in r.ema.shadow_params:
                h.update(v.detach().numpy().tobytes())
            for n, p in sorted(r.lora_unet.named_parameters()):
                if p.requires_grad:
                    h.update(p.detach().numpy().tobytes())
            with open({str(tmp_path)!r} + "/hash-" + os.environ["RANK"], "w") as f:
                f.write(h.hexdigest())
            """
        )
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    hashes = [(tmp_path / f"hash-{r}").read_text() for r in range(2)]
    assert hashes[0] == hashes[1]
    run = tmp_path / "o.run"
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2]  # only the main process writes
    assert len(torch.load(run / "checkpoints" / "step-00000002" / "rng.pt", weights_only=True)) == 2
    info = json.loads((tmp_path / "o" / "tiue.json").read_text())
    assert info["provenance"]["processes"] == 2 and info["provenance"]["global_batch_size"] == 2
    if extra:  # 65 pairs: two chunks, drawn by the two ranks, read by both
        from tiue_export.distill.pairs import CHUNK

        assert sorted(p.name for p in (run / "pairs").glob("chunk-*")) == ["chunk-00000.safetensors", "chunk-00001.safetensors"]
        assert CHUNK == 64 and all(r["loss_reg"] > 0 for r in log)


# -- CLI ------------------------------------------------------------------------------------------


def test_cli_distills(teacher, prompts_file, tmp_path, capsys):
    out = tmp_path / "s"
    argv = ["distill", "--teacher", str(teacher), "--prompts", str(prompts_file), "--out", str(out)]
    code, stdout, err = run_cli(argv + ["--steps", "1", "--batch-size", "2", "--lora-rank", "4", "--lora-targets", "to_q, to_v,conv1"], capsys)
    assert code == 0, err
    assert f"wrote {out} (1 steps)" in stdout
    recipe = json.loads((out / "tiue.json").read_text())["provenance"]["recipe"]
    assert recipe["lora_rank"] == 4 and recipe["lora_targets"] == ["to_q", "to_v", "conv1"]


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--prompts", "/nonexistent.txt"], "error: no such prompts file: /nonexistent.txt"),
        (["--teacher", "/nonexistent/teacher"], "error: no such model directory: /nonexistent/teacher"),
        (["--steps", "2", "--epochs", "1"], "error: give --steps or --epochs, not both"),
        (["--baseline", "one-step-vsd", "--k", "4"], "error: --k does not apply to --baseline one-step-vsd"),
        (["--lora-uncond-prob", "2"], "error: --lora-uncond-prob must be in [0, 1], got 2.0"),
        (["--batch-size", "0"], "error: --batch-size must be >= 1, got 0"),
        (["--lora-targets", " , "], "error: --lora-targets needs at least one module name, e.g. to_q,to_v"),
        (["--lora-targets", "no_such_layer"], "no no_such_layer layers for the LoRA teacher"),
        (["--regression-pairs", "-1"], "error: --regression-pairs must be >= 0, got -1"),
        (["--regression-pairs", "8", "--regression-steps", "0"], "error: --regression-steps must be >= 1, got 0"),
        (["--vsd-t-max", "1000"], "error: --vsd-t-max must be below the teacher's 1000 training timesteps, got 1000"),
        (["--lambda-vsd", "0"], "error: --lambda-vsd 0 leaves nothing to learn from: add --regression-pairs N"),
        (["--lambda-vsd", "0", "--regression-pairs", "4", "--lambda-reg", "0"], "error: --lambda-vsd 0 leaves nothing to learn from"),
        (["--lambda-vsd", "-1"], "error: --lambda-vsd must be >= 0, got -1.0"),
    ],
)
def test_cli_bad_input_is_one_line(teacher, prompts_file, tmp_path, capsys, extra, message):
    argv = ["distill", "--teacher", str(teacher), "--prompts", str(prompts_file), "--out", str(tmp_path / "o")]
    code, _, err = run_cli(argv + extra, capsys)
    assert code == 2
    assert message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists() and not (tmp_path / "o.run").exists()  # nothing half-written


def test_cli_errors_without_builtin_teacher_and_on_existing_out(prompts_file, teacher, tmp_path, capsys, monkeypatch):
    import tiue_export.distill.train as train

    monkeypatch.setattr(train, "ASSETS", tmp_path / "no-assets")
    code, _, err = run_cli(["distill", "--prompts", str(prompts_file), "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "the built-in teacher is not installed" in err and "pass --teacher PATH" in err

    (tmp_path / "exists").mkdir()
    argv = ["distill", "--teacher", str(teacher), "--prompts", str(prompts_file), "--out", str(tmp_path / "exists")]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "--out" in err and "already exists: choose a new directory" in err



def test_cli_options_reach_the_recipe_and_the_trainer(teacher, prompts_file, tmp_path, capsys):
    """The optimiser, EMA, VSD, LoRA and engineering flags are recorded in the recipe, and the
    trainer built from that recipe uses them."""
    from tiue_export.distill.train import build_trainer, make_accelerator

    out, run = tmp_path / "s", tmp_path / "elsewhere"
    expected = {"lr_lora": 5e-4, "adam_beta1": 0.8, "adam_beta2": 0.99, "adam_eps": 1e-6, "weight_decay": 0.01,
                "max_grad_norm": 0.5, "ema_decay": 0.99, "guidance": 3.0, "vsd_t_min": 100, "vsd_t_max": 900,
                "lora_rank": 4, "lora_alpha": 8.0, "lora_uncond_prob": 0.5, "seed": 3}
    flags = [x for key, value in expected.items() for x in (f"--{key.replace('_', '-')}", str(value))]
    argv = ["distill", "--teacher", str(teacher), "--prompts", str(prompts_file), "--out", str(out), "--run-dir", str(run),
            "--steps", "1", "--batch-size", "2", "--gradient-checkpointing", *flags]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert (run / "config.json").is_file() and (run / "checkpoints" / "step-00000001").is_dir()
    recipe = json.loads((out / "tiue.json").read_text())["provenance"]["recipe"]
    assert {key: recipe[key] for key in expected} == expected
    assert recipe["gradient_checkpointing"] is True and recipe["run_dir"] == str(run)

    cfg = DistillConfig.from_dict(recipe)
    tr = build_trainer(cfg, Path(teacher), make_accelerator(cfg))
    student, lora = tr.opt.param_groups[0], tr.opt_lora.param_groups[0]
    assert (student["betas"], student["eps"], student["weight_decay"]) == ((0.8, 0.99), 1e-6, 0.01)
    assert lora["lr"] == 5e-4 and tr.ema.decay == 0.99
    assert tr.student.unet.is_gradient_checkpointing and tr.lora_unet.is_gradient_checkpointing
    scalings = {m.scaling["default"] for m in tr.lora_unet.modules() if hasattr(m, "scaling") and "default" in m.scaling}
    assert scalings == {8 / 4}  # lora_alpha / lora_rank


def test_cli_log_tensorboard_without_tensorboard_is_one_line(teacher, prompts_file, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorboard", None)  # as if not installed
    argv = ["distill", "--teacher", str(teacher), "--prompts", str(prompts_file), "--out", str(tmp_path / "o"), "--log-tensorboard"]
    code, _, err = run_cli(argv, capsys)
    assert code != 0 and "tensorboard is not installed (--log-tensorboard): pip install 'tiue-export[tensorboard]'" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1

@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed on a GPU")
def test_cli_fp16_on_cpu_is_refused(teacher, prompts_file, tmp_path, capsys):
    argv = ["distill", "--teacher", str(teacher), "--prompts", str(prompts_file), "--out", str(tmp_path / "o")]
    code, _, err = run_cli(argv + ["--mixed-precision", "fp16"], capsys)
    assert code == 2 and "fp16 needs a GPU: on CPU use bf16 or no" in err


def test_cli_distill_export_writes_a_checkpoints_ema_student(teacher, prompts_file, tmp_path, capsys):
    from tiue_export.reference.pipeline import load_pipeline

    out = tmp_path / "s"
    argv = ["distill", "--teacher", str(teacher), "--prompts", str(prompts_file), "--out", str(out)]
    code, _, err = run_cli(argv + ["--steps", "2", "--batch-size", "2", "--lora-rank", "4", "--checkpoint-every", "1"], capsys)
    assert code == 0, err
    run = f"{out}.run"

    # the latest checkpoint is the written student, weight for weight
    code, stdout, err = run_cli(["distill-export", run, "--out", str(tmp_path / "latest")], capsys)
    assert code == 0, err
    assert f"wrote {tmp_path / 'latest'} (step 2)" in stdout
    final = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    latest = load_file(tmp_path / "latest" / "unet" / "diffusion_pytorch_model.safetensors")
    assert final.keys() == latest.keys() and all(torch.equal(final[k], latest[k]) for k in final)
    info = json.loads((tmp_path / "latest" / "tiue.json").read_text())
    assert info["timesteps"] == [751, 501, 251, 1] and info["provenance"]["steps"] == 2
    assert info["provenance"]["checkpoint"].endswith("step-00000002")

    # an earlier checkpoint: another EMA, and a student that samples
    code, _, err = run_cli(["distill-export", run, "--out", str(tmp_path / "first"), "--step", "1"], capsys)
    assert code == 0, err
    first = load_file(tmp_path / "first" / "unet" / "diffusion_pytorch_model.safetensors")
    assert any(not torch.equal(first[k], final[k]) for k in final)
    res = load_pipeline(tmp_path / "first").sample(PROMPTS[:1], [0])
    assert np.isfinite(res.latents).all()

    for extra, message in [
        ([run, "--out", str(tmp_path / "x"), "--step", "7"], "has no checkpoint at step 7; it has 1, 2"),
        ([run, "--out", str(tmp_path / "first")], "already exists: choose a new directory"),
        ([str(tmp_path), "--out", str(tmp_path / "y")], "is not a distill run directory"),
    ]:
        code, _, err = run_cli(["distill-export", *extra], capsys)
        assert code == 2 and message in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()



def test_recorded_recipes_read_only_live_options(teacher, prompts_file, tmp_path, capsys):
    """The shipped student's provenance is today's recipe, key for key; a run directory whose
    config names an option this version does not have is refused by --resume and distill-export
    in one line, and nothing is written."""
    from dataclasses import fields

    from tiue_export.reference.builtin import default_model

    provenance = json.loads((default_model() / "tiue.json").read_text())["provenance"]
    assert provenance["steps"] == 16500  # exported at the teacher's budget from a run planned longer
    shipped = provenance["recipe"]
    cfg = DistillConfig.from_dict(shipped)
    assert set(shipped) <= {f.name for f in fields(DistillConfig)}
    assert (cfg.regression_pairs, cfg.lambda_reg, cfg.regression_steps, cfg.regression_guidance) == (8192, 1.0, 16, 5.0)
    assert (cfg.lr, cfg.lr_schedule, cfg.guidance, cfg.steps, cfg.baseline) == (1e-4, "constant", 5.0, 40000, None)
    with pytest.raises(InputError, match="unknown distill config keys: no_such_key"):
        DistillConfig.from_dict({**shipped, "no_such_key": 1})

    out = tmp_path / "old"
    argv = ["distill", "--teacher", str(teacher), "--prompts", str(prompts_file), "--out", str(out), "--batch-size", "2", "--lora-rank", "4"]
    code, _, err = run_cli(argv + ["--steps", "1", "--checkpoint-every", "1"], capsys)
    assert code == 0, err
    run = Path(f"{out}.run")
    for path in (run / "config.json", run / "checkpoints" / "step-00000001" / "config.json"):  # as another version wrote it
        path.write_text(json.dumps({**json.loads(path.read_text()), "lambda_gan": 0.5}))
    for argv_ in (argv + ["--steps", "2", "--resume"], ["distill-export", str(run), "--out", str(tmp_path / "exported")]):
        code, _, err = run_cli(argv_, capsys)
        assert code == 2 and "unknown distill config keys: lambda_gan (a recipe of another tiue-export version" in err, err
        assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "exported").exists() and not (run / "checkpoints" / "step-00000002").exists()


# -- teacher pairs (DMD regression) ---------------------------------------------------------------
def test_teacher_pairs_are_the_teachers_ddim_samples_and_resume(teacher, prompts_file, tmp_path):
    from tiue_export.distill.pairs import PAIRS_DIR, pair_plan
    from tiue_export.distill.train import build_trainer, make_accelerator, resolve_pair_recipe, teacher_pairs
    from tiue_export.reference.pipeline import load_pipeline
    from tiue_export.sampling import initial_noise

    count = 64 + 3  # two chunks; the pairs are the first 67 of them
    cfg = config(teacher, prompts_file, tmp_path / "o", regression_pairs=count, regression_steps=3, regression_guidance=2.0)
    cfg = resolve_pair_recipe(cfg, Path(teacher))
    tr = build_trainer(cfg, Path(teacher), make_accelerator(cfg))
    noise, latents, texts = teacher_pairs(tr, PROMPTS, Path(teacher))
    assert noise.shape == latents.shape == (count, *tr.latent_shape) and len(texts) == count
    plan_texts, plan_seeds = pair_plan(PROMPTS, count, cfg.seed)
    assert texts == plan_texts and sorted(set(texts)) == sorted(PROMPTS)  # every prompt, shuffled
    assert [texts.count(p) for p in PROMPTS] in ([17, 17, 17, 16], [17, 17, 16, 17], [17, 16, 17, 17], [16, 17, 17, 17])
    assert tr.probe is not None and tr.probe[0].shape == (64, *tr.latent_shape)  # the log's fresh noises
    assert not set(tr.probe[0][:, 0, 0, 0].tolist()) & set(noise[:, 0, 0, 0].tolist())

    # each pair is what `infer --sampler ddim:3 --guidance 2` makes from that noise (to float rounding:
    # the batch differs)
    pipe = load_pipeline(teacher)
    some = [0, 5, count - 1]
    ref = pipe.sample([texts[i] for i in some], [plan_seeds[i] for i in some], sampler="ddim:3", guidance=2.0)
    assert np.array_equal(noise[some].numpy(), initial_noise([plan_seeds[i] for i in some], tr.latent_shape))
    assert np.allclose(latents[some].numpy(), ref.latents, atol=1e-5)

    # a lost chunk is made again, identically; a different recipe discards the old pairs
    root = cfg.run_path / PAIRS_DIR
    (root / "chunk-00001.safetensors").unlink()
    again = teacher_pairs(tr, PROMPTS, Path(teacher))
    assert torch.equal(again[1], latents) and again[2] == texts
    tr.cfg = cfg.replace(regression_steps=2)
    other = teacher_pairs(tr, PROMPTS, Path(teacher))
    assert not torch.allclose(other[1], latents) and torch.equal(other[0], noise)


def test_regression_term_joins_the_student_loss(teacher, prompts_file, tmp_path):
    from tiue_export.distill.train import distill

    out = tmp_path / "student"
    result = distill(config(teacher, prompts_file, out, steps=3, regression_pairs=4, regression_steps=2, lambda_reg=0.5))
    run = Path(str(out) + ".run")
    records = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["loss_reg"] > 0 for r in records)
    recipe = json.loads((out / "tiue.json").read_text())["provenance"]["recipe"]
    assert recipe["regression_pairs"] == 4 and recipe["lambda_reg"] == 0.5
    assert recipe["regression_guidance"] == 7.5  # the tiny teacher's tiue.json names none: diffusers' default
    # the same run without the term ends elsewhere; the pairs steer the student
    plain = distill(config(teacher, prompts_file, tmp_path / "plain", steps=3))
    a, b = dict(result.student.unet.named_parameters()), dict(plain.student.unet.named_parameters())
    assert any(not torch.equal(a[n], b[n]) for n in a)
    assert "loss_reg" not in json.loads((tmp_path / "plain.run" / "log.jsonl").read_text().splitlines()[0])


def test_regression_only_calls_no_teacher_and_leaves_the_lora_teacher(teacher, prompts_file, tmp_path, monkeypatch):
    from tiue_export.distill import train
    from tiue_export.distill.train import distill

    recipe = {"steps": 3, "regression_pairs": 4, "regression_steps": 2}
    with_vsd = distill(config(teacher, prompts_file, tmp_path / "vsd", **recipe))

    def no_teacher(*args, **kwargs):
        raise AssertionError("--lambda-vsd 0 must not query the teachers")

    monkeypatch.setattr(train.Trainer, "vsd_term", no_teacher)  # the only place the student step calls them
    monkeypatch.setattr(train.Trainer, "lora_update", no_teacher)
    out = tmp_path / "reg"
    result = distill(config(teacher, prompts_file, out, lambda_vsd=0.0, **recipe))
    lora_b = [p for n, p in result.lora_unet.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.count_nonzero(p) == 0 for p in lora_b)  # never stepped: B stays at its zero init
    records = [json.loads(line) for line in (Path(str(out) + ".run") / "log.jsonl").read_text().splitlines()]
    assert len(records) == 3 and all(r["loss_reg"] > 0 and r["loss_kl"] >= 0 for r in records)
    assert not any("loss_vsd" in r or "loss_lora" in r or "grad_norm_lora" in r for r in records)
    a, b = dict(result.student.unet.named_parameters()), dict(with_vsd.student.unet.named_parameters())
    assert any(not torch.equal(a[n], b[n]) for n in a)  # the student moved, elsewhere than with VSD
    from diffusers import UNet2DConditionModel

    start = dict(UNet2DConditionModel.from_pretrained(Path(teacher) / "unet").named_parameters())
    assert any(not torch.equal(a[n], start[n]) for n in a)  # and it did move away from the teacher
    assert json.loads((out / "tiue.json").read_text())["provenance"]["recipe"]["lambda_vsd"] == 0


def test_distill_speed_script_runs_on_cpu(tmp_path):
    """scripts/distill_speed.py (the SD 2.1-size GPU measurement) at a tiny width on the CPU."""
    script = Path(__file__).resolve().parents[2] / "scripts" / "distill_speed.py"
    report = tmp_path / "speed.json"
    argv = [sys.executable, str(script), "--work", str(tmp_path / "w"), "--width-div", "16", "--resolution", "64",
            "--mixed-precision", "no", "--steps", "2", "--warmup", "1", "--batch-size", "1", "--json", str(report)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (row,) = json.loads(report.read_text())
    assert row["batch_size"] == 1 and row["steps_timed"] == 1 and row["steps_per_second"] > 0
    assert row["peak_gpu_memory_gib"] is None and row["peak_rss_gib"] > 0
    assert "batch 1:" in proc.stdout and "steps/s" in proc.stdout
