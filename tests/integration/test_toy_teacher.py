"""The toy teacher: training (tiny config only), resume, export format, the shipped model."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from helpers.toy import TINY_TEACHER, tiny_teacher_config

from tiue_export.errors import InputError
from tiue_export.schedule import SD21_SCHEDULER_CONFIG
from tiue_export.toy import teacher as T

SHIPPED = Path(T.__file__).resolve().parents[1] / "assets" / "toy-teacher"


def run_cli(*args: str) -> tuple[int, str]:
    """Run ``tiue-export`` in-process (imports are shared); returns (exit code, stdout + stderr)."""
    from tiue_export.cli import main

    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            main(list(args))
        except SystemExit as exc:
            code = exc.code or 0
    return code, out.getvalue() + err.getvalue()


def _weights(model_dir: Path) -> dict:
    from safetensors.numpy import load_file

    out = {}
    for part in ("text_encoder", "vae", "unet"):
        files = sorted((model_dir / part).glob("*.safetensors"))
        assert files, f"no safetensors in {model_dir / part}"
        for f in files:
            out.update({f"{part}.{k}": v for k, v in load_file(f).items()})
    return out


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """The tiny config trained once, uninterrupted."""
    root = tmp_path_factory.mktemp("toy-teacher")
    code, text = run_cli("toy", "train-teacher", "--out", str(root / "model"), "--config", str(tiny_teacher_config(root)), "--no-progress")
    assert code == 0, text
    return root / "model"


# --- pure pieces --------------------------------------------------------------------------------


def test_min_snr_weights_hand_values():
    import torch

    w = T.min_snr_weights(torch.tensor([0.5, 5.0, 20.0]), gamma=5.0)
    torch.testing.assert_close(w, torch.tensor([1.0, 1.0, 0.25]))


def test_losses_hand_values():
    import torch

    recon, target = torch.zeros(2, 3, 4, 4), torch.ones(2, 3, 4, 4)
    kl = torch.full((2,), 48.0)  # 1 per element of a 3x4x4 image
    assert T.vae_loss(recon, target, kl, kl_weight=0.5).item() == pytest.approx(1.5)
    pred, noise = torch.zeros(2, 4, 2, 2), torch.ones(2, 4, 2, 2)
    assert T.epsilon_loss(pred, noise, torch.tensor([1.0, 0.0])).item() == pytest.approx(0.5)


def test_object_crop_holds_the_object_centre_and_image_tensor():
    from tiue_export.toy import domain

    rng = np.random.default_rng(0)
    for a in domain.combos("train")[:40]:
        img, (x0, y0, x1, y1) = domain.render_with_box(a, rng)
        crop = T.object_crop(img, (x0, y0, x1, y1), 32, rng)
        assert crop.shape == (32, 32, 3)
        hits = [(y, x) for y in range(33) for x in range(33) if (img[y : y + 32, x : x + 32] == crop).all()]
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        assert any(x - 1 <= cx <= x + 33 and y - 1 <= cy <= y + 33 for y, x in hits)
    x = T.images_to_tensor(np.array([[[[0, 255, 127]]]], dtype=np.uint8))
    assert x.shape == (1, 3, 1, 1) and x.min().item() == -1.0 and x.max().item() == 1.0


def test_config_round_trip_and_unknown_keys():
    cfg = T.TeacherConfig()
    assert T.TeacherConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert cfg.latent_size == 16  # 64 px / factor 4
    with pytest.raises(InputError, match="unknown teacher config keys: bogus"):
        T.TeacherConfig.from_dict({"bogus": 1})


# --- training (tiny config) ---------------------------------------------------------------------


def test_tiny_training_writes_a_loadable_teacher(tiny_teacher):
    from tiue_export.reference.pipeline import load_pipeline

    for part in ("tokenizer", "text_encoder", "vae", "unet", "scheduler", "model_index.json", "tiue.json", T.CONFIG_JSON):
        assert (tiny_teacher / part).exists(), part
    assert json.loads((tiny_teacher / "scheduler" / "scheduler_config.json").read_text()) == SD21_SCHEDULER_CONFIG
    meta = json.loads((tiny_teacher / "tiue.json").read_text())
    assert meta["kind"] == "teacher" and meta["k"] == 4
    prov = meta["provenance"]
    assert prov["unet_steps"] == TINY_TEACHER.unet_steps and prov["seed"] == 0
    assert "--config" in prov["command"] and "final_losses" in prov
    assert not any(tiny_teacher.parent.glob(".model.*"))  # no temporary left behind
    pipe = load_pipeline(tiny_teacher)
    assert pipe.is_teacher and pipe.default_sampler == "ddim:50"
    assert pipe.vae.config.scaling_factor != 0.18215  # measured on the latent pool, not SD's
    result = pipe.sample(["a small red circle on a blue background"], [0], "ddim:1", guidance=5.0)
    assert result.images.shape == (1, 32, 32, 3) and result.images.dtype == np.uint8


@pytest.mark.slow
@pytest.mark.parametrize("stop_after", [2, 5])  # inside the VAE stage (3 steps); inside the UNet stage
def test_resume_equals_uninterrupted(tiny_teacher, tmp_path, stop_after):
    out = tmp_path / "model"
    assert T.train_teacher(out, TINY_TEACHER, progress=False, stop_after=stop_after) is None  # interrupted at a known step
    assert not out.exists() and (tmp_path / "model.train" / T.CHECKPOINT).exists()
    code, text = run_cli("toy", "train-teacher", "--out", str(out), "--config", str(tiny_teacher_config(tmp_path)), "--no-progress", "--resume")
    assert code == 0, text
    a, b = _weights(tiny_teacher), _weights(out)
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    assert _scaling(out) == _scaling(tiny_teacher)


def _scaling(model_dir: Path) -> float:
    return json.loads((model_dir / "vae" / "config.json").read_text())["scaling_factor"]


def test_existing_checkpoint_needs_resume(tmp_path):
    work = tmp_path / "model.train"
    work.mkdir()
    (work / T.CHECKPOINT).write_bytes(b"")
    code, text = run_cli("toy", "train-teacher", "--out", str(tmp_path / "model"), "--config", str(tiny_teacher_config(tmp_path)), "--no-progress")
    assert code == 2
    assert f"error: {work} holds a checkpoint of an earlier run: pass --resume to continue it" in text


def test_resume_with_other_options_is_refused(tmp_path):
    out = tmp_path / "model"
    assert T.train_teacher(out, TINY_TEACHER, progress=False, stop_after=1) is None
    code, text = run_cli("toy", "train-teacher", "--out", str(out), "--config", str(tiny_teacher_config(tmp_path)), "--no-progress", "--resume", "--seed", "3")
    assert code == 2
    assert "--resume with a different config than" in text and "use the same options" in text


def test_resume_with_more_steps_extends_a_finished_run(tmp_path):
    out = tmp_path / "model"
    config = str(tiny_teacher_config(tmp_path))
    code, text = run_cli("toy", "train-teacher", "--out", str(out), "--config", config, "--no-progress")
    assert code == 0, text
    before = _weights(out)
    n = TINY_TEACHER.unet_steps
    code, text = run_cli("toy", "train-teacher", "--out", str(out), "--config", config, "--no-progress", "--resume", "--steps", str(n + 2))
    assert code == 0, text
    prov = json.loads((out / "tiue.json").read_text())["provenance"]
    assert prov["unet_steps"] == n + 2 and prov["unet_schedule_lengths"] == [[0, n], [n, n + 2]]
    after = _weights(out)
    assert any(not np.array_equal(before[k], after[k]) for k in before if k.startswith("unet."))
    assert all(np.array_equal(before[k], after[k]) for k in before if k.startswith("vae."))  # VAE stage not rerun
    # Fewer steps than the checkpoint's schedule is not an extension.
    code, text = run_cli("toy", "train-teacher", "--out", str(out), "--config", config, "--no-progress", "--resume", "--steps", str(n))
    assert code == 2 and "only --steps may grow" in text


# --- the command group ----------------------------------------------------------------------------


def test_toy_group_lists_train_teacher_and_lazy_commands(monkeypatch):
    from tiue_export.cli import toy as toy_cli

    code, text = run_cli("toy", "--help")
    assert code == 0 and "train-teacher" in text
    monkeypatch.setitem(toy_cli.TOY_COMMANDS, "eval", ("tiue_export.cli.no_such_module", "eval_cmd", "x"))
    assert "eval" not in toy_cli.toy.list_commands(None)
    assert toy_cli.toy.get_command(None, "eval") is None
    monkeypatch.setitem(toy_cli.TOY_COMMANDS, "eval", ("tiue_export.cli.infer", "infer", "Borrowed for the test."))
    assert "eval" in toy_cli.toy.list_commands(None)
    assert toy_cli.toy.get_command(None, "eval").name == "infer"
    code, text = run_cli("toy", "--help")
    assert "Borrowed for the test." in text


# --- the shipped model ----------------------------------------------------------------------------


@pytest.mark.skipif(not (SHIPPED / "model_index.json").exists(), reason=f"the shipped toy teacher is absent ({SHIPPED})")
def test_shipped_teacher_loads_and_samples():
    from tiue_export.reference.pipeline import load_pipeline

    total = sum(f.stat().st_size for f in SHIPPED.rglob("*") if f.is_file())
    assert total < 40e6, f"the shipped teacher is {total / 1e6:.1f} MB"
    assert not list(SHIPPED.rglob("*.bin")) and list(SHIPPED.rglob("*.safetensors"))
    meta = json.loads((SHIPPED / "tiue.json").read_text())
    assert meta["kind"] == "teacher" and meta["provenance"]["unet_steps"] > 0
    pipe = load_pipeline(SHIPPED)
    assert pipe.is_teacher and pipe.latent_shape() == (4, 16, 16)
    result = pipe.sample(["a large yellow square on a black background"] * 2, [0, 1], "ddim:1", guidance=5.0)
    assert result.images.shape == (2, 64, 64, 3)
    assert result.images.std() > 0  # not a blank image


def test_config_file_errors_are_one_line(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{")
    code, text = run_cli("toy", "train-teacher", "--out", str(tmp_path / "m"), "--config", str(bad), "--no-progress")
    assert code == 2 and text.startswith(f"error: --config {bad}: not valid JSON") and len(text.strip().splitlines()) == 1
    bad.write_text('{"bogus": 1}')
    code, text = run_cli("toy", "train-teacher", "--out", str(tmp_path / "m"), "--config", str(bad), "--no-progress")
    assert code == 2 and text.strip() == "error: unknown teacher config keys: bogus"
    assert not (tmp_path / "m").exists()
