"""The torch-free runtime: parity with the PyTorch pipeline, no torch import, bundle checks,
infer --backend onnxruntime."""

import json
import logging
import shutil
import subprocess
import sys

import numpy as np
import pytest
from helpers.bundles import VARIANTS, tiny_bundle
from helpers.cli import run_cli as run
from PIL import Image

from tiue_export.compare import compare_arrays
from tiue_export.errors import InputError, ModelError
from tiue_export.runtime import Bundle, OrtRunner, Pipeline, SessionLoader

PROMPTS = ["a photo of a cat", "a red cube on a blue table", "two dogs playing in the snow"]


@pytest.fixture(scope="session")
def sd21_bundle(tiny_models, tmp_path_factory):
    return tiny_bundle(tiny_models, tmp_path_factory, "sd21", **VARIANTS["sd21"])


@pytest.mark.parametrize(
    "variant", ["sd21", pytest.param("sd15", marks=pytest.mark.slow), pytest.param("two-level", marks=pytest.mark.slow)]
)
def test_images_match_the_torch_pipeline(variant, tiny_models, tmp_path_factory):
    from tiue_export.reference.pipeline import load_pipeline

    bundle = tiny_bundle(tiny_models, tmp_path_factory, variant, **VARIANTS[variant])
    seeds = [3, 4, 5]
    ref = load_pipeline(tiny_models(variant)).sample(PROMPTS, seeds)
    with Pipeline.load(bundle) as pipe:
        fused = pipe(PROMPTS, seeds=seeds)
        unfused = pipe(PROMPTS, seeds=seeds, fused=False)
    assert fused.provider == "CPUExecutionProvider"
    assert fused.images.dtype == np.uint8 and fused.images.shape == ref.images.shape
    for out in (fused, unfused):
        images = compare_arrays(ref.images, out.images, None, name="images", data_range=255.0, min_psnr=40.0)
        assert images, images
        assert np.abs(out.latents - ref.latents).max() < 1e-4
    assert set(fused.timings) >= {"text_encoder", "unet_encoder", "unet_decoder", "vae_decoder"}


def test_runtime_never_imports_torch(sd21_bundle):
    code = (
        "import sys\n"
        "from tiue_export.runtime import Pipeline\n"
        f"with Pipeline.load({str(sd21_bundle)!r}) as pipe:\n"
        "    r = pipe(['a photo of a cat'], seed=1)\n"
        "assert r.images.shape == (1, 16, 16, 3), r.images.shape\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print(r.provider)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "CPUExecutionProvider"


def test_seeds_noise_and_batch_independence(sd21_bundle):
    with Pipeline.load(sd21_bundle) as pipe:
        a = pipe(PROMPTS[:2], seed=7)
        b = pipe(PROMPTS[:2], seeds=[7, 8])
        one = pipe(PROMPTS[1:2], seeds=[8])
        assert np.array_equal(a.images, b.images) and a.seeds == [7, 8]
        assert np.array_equal(one.images[0], b.images[1])  # an image depends on its own seed only
        from tiue_export.sampling import initial_noise

        c = pipe(PROMPTS[:1], noise=initial_noise([7], pipe.latent_shape))
        assert np.array_equal(c.images[0], a.images[0])
        with pytest.raises(InputError, match=r"noise has shape \[1, 4, 4, 4\], this bundle needs \[1, 4, 8, 8\]"):
            pipe(PROMPTS[:1], noise=np.zeros((1, 4, 4, 4), np.float32))
        with pytest.raises(InputError, match="2 prompts but 1 seeds"):
            pipe(PROMPTS[:2], seeds=[1])


def test_tokenizer_matches_clip_tokenizer_and_warns_on_truncation(sd21_bundle, tiny_sd21, monkeypatch):
    from tiue_export.reference.pipeline import load_pipeline

    # the CLI's logging setup (run by earlier tests) stops propagation, so listen on the logger itself
    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tiue_export")
    monkeypatch.setattr(logger, "handlers", [handler])
    monkeypatch.setattr(logger, "level", logging.INFO)
    long = "a large yellow circle " * 10
    with Pipeline.load(sd21_bundle) as pipe:
        ids = pipe.tokenize(PROMPTS + ["", long])
    assert [r.getMessage() for r in records] == [f"prompt is longer than this model's 16 tokens: truncated: {long[:60]!r}"]
    assert np.array_equal(ids, load_pipeline(tiny_sd21).tokenize(PROMPTS + ["", long]))
    assert ids.dtype == np.int64 and ids.shape == (5, 16)


def test_runners_release_their_sessions(sd21_bundle):
    bundle = Bundle.open(sd21_bundle)
    runner = OrtRunner(SessionLoader(bundle.graph_path("vae_decoder"), ["CPUExecutionProvider"]))
    with runner as r:
        out = r.infer({"latents": np.zeros((1, 4, 8, 8), np.float32)})
        assert out["images"].shape == (1, 3, 16, 16) and r.provider == "CPUExecutionProvider"
    assert runner.session is None
    with pytest.raises(RuntimeError, match="outside its 'with' block"):
        runner.infer({})
    pipe = Pipeline(bundle)
    pipe(PROMPTS[:1])
    assert sum(pipe.graphs.is_open(g) for g in pipe.manifest.graphs) == 4
    pipe.close()
    assert not any(pipe.graphs.is_open(g) for g in pipe.manifest.graphs)


def test_unknown_provider_is_an_input_error(sd21_bundle):
    with pytest.raises(InputError, match=r"execution provider\(s\) \['NopeExecutionProvider'\] not available"):
        Pipeline.load(sd21_bundle, providers=["NopeExecutionProvider"])


# -- broken bundles: one line, exit 2 ---------------------------------------------------------
def _break(bundle, tmp_path, how):
    broken = tmp_path / "broken"
    shutil.copytree(bundle, broken)
    if how == "missing":
        (broken / "unet_encoder.onnx").unlink()
    elif how == "altered":
        with open(broken / "vae_decoder.onnx", "ab") as f:
            f.write(b"\0")
    elif how == "newer":
        m = json.loads((broken / "manifest.json").read_text())
        m["schema_version"] = 99
        (broken / "manifest.json").write_text(json.dumps(m))
    elif how == "not-a-bundle":
        (broken / "manifest.json").unlink()
    return broken


@pytest.mark.parametrize(
    "how,message",
    [
        ("missing", "unet_encoder.onnx is missing: re-export the bundle"),
        ("altered", "vae_decoder.onnx was altered (sha256 mismatch): re-export the bundle"),
        ("newer", "manifest schema_version 99 is newer than this tiue-export reads (2): upgrade tiue-export"),
        ("not-a-bundle", "is not an exported bundle (no manifest.json): run tiue-export export first"),
    ],
)
def test_broken_bundle_is_one_line(sd21_bundle, tmp_path, capsys, how, message):
    broken = _break(sd21_bundle, tmp_path, how)
    with pytest.raises(ModelError, match=message.replace("(", r"\(").replace(")", r"\)")):
        Pipeline.load(broken)
    code, out, err = run(
        ["infer", "--backend", "onnxruntime", "--model", str(broken), "--prompt", "a cat", "--out", str(tmp_path / "o")], capsys
    )
    assert code == 2 and message in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_verify_false_skips_hashing(sd21_bundle, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(sd21_bundle, copy)
    (copy / "validation.json").write_text("{}")
    with pytest.raises(ModelError, match=r"validation.json was altered \(sha256 mismatch\)"):
        Pipeline.load(copy)
    with Pipeline.load(copy, verify=False) as pipe:  # the runtime never reads validation.json
        assert pipe(PROMPTS[:1]).images.shape == (1, 16, 16, 3)


# -- infer --backend onnxruntime --------------------------------------------------------------
def test_infer_onnxruntime_backend_matches_torch_backend(sd21_bundle, tiny_sd21, tmp_path, capsys):
    common = ["--prompt", "a red cube", "--num-images", "2", "--seed", "5"]
    code, out, err = run(["infer", "--backend", "onnxruntime", "--model", str(sd21_bundle), "--out", str(tmp_path / "ort")] + common, capsys)
    assert code == 0, err
    assert "onnxruntime CPUExecutionProvider" in out and "unet_decoder" in out
    code, _, err = run(["infer", "--model", str(tiny_sd21), "--out", str(tmp_path / "pt")] + common, capsys)
    assert code == 0, err
    ort_files, pt_files = (sorted((tmp_path / d).glob("*.png")) for d in ("ort", "pt"))
    assert [p.name[:-13] for p in ort_files] == [p.name[:-13] for p in pt_files] == ["000-a-red-cube-s5", "001-a-red-cube-s6"]
    assert not {p.name for p in ort_files} & {p.name for p in pt_files}  # the backend is part of the name
    for ort_path, pt_path in zip(ort_files, pt_files):
        ort_img, pt_img = Image.open(ort_path), Image.open(pt_path)
        assert ort_img.text["backend"] == "onnxruntime" and ort_img.text["provider"] == "CPUExecutionProvider"
        assert compare_arrays(np.asarray(pt_img), np.asarray(ort_img), None, data_range=255.0, min_psnr=40.0)


@pytest.mark.parametrize(
    "extra,message",
    [
        (["--sampler", "loop"], "runs the one-pass sampler only"),
        (["--k", "2"], "--k cannot change a bundle"),
        (["--noise", "torch"], "--noise torch needs --backend torch"),
        (["--height", "32"], "was exported for 16x16 images, not 32x16: re-export it"),
    ],
)
def test_infer_onnxruntime_bad_options(sd21_bundle, tmp_path, capsys, extra, message):
    argv = ["infer", "--backend", "onnxruntime", "--model", str(sd21_bundle), "--prompt", "a cat", "--out", str(tmp_path / "o")]
    code, _, err = run(argv + extra, capsys)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "o").exists()


def test_infer_onnxruntime_needs_a_bundle(tiny_sd21, tmp_path, capsys):
    code, _, err = run(["infer", "--backend", "onnxruntime", "--prompt", "a cat", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--backend onnxruntime needs --model BUNDLE" in err
    code, _, err = run(["infer", "--backend", "onnxruntime", "--model", str(tiny_sd21), "--prompt", "a", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "is not an exported bundle" in err


def test_low_memory_holds_one_graph_at_a_time(sd21_bundle, monkeypatch):
    """low_memory: same images; each stage opens its graph and releases it before the next opens."""
    from tiue_export import executor

    with Pipeline.load(sd21_bundle) as pipe:
        ref = pipe(PROMPTS[:2], seeds=[1, 2])
    held = []
    original = executor.GraphSet.runner

    def spy(self, name):
        runner = original(self, name)
        held.append(sorted(self._open))
        return runner

    monkeypatch.setattr(executor.GraphSet, "runner", spy)
    pipe = Pipeline.load(sd21_bundle, low_memory=True)
    out = pipe(PROMPTS[:2], seeds=[1, 2])
    assert np.array_equal(out.images, ref.images) and np.array_equal(out.latents, ref.latents)
    assert max(len(h) for h in held) == 1, held  # never two graphs open at once
    assert pipe.graphs._open == {}  # nothing held between calls
    assert out.timings["load"] > 0 and set(out.timings) >= {"text_encoder", "unet_encoder", "unet_decoder", "vae_decoder"}


def test_infer_low_memory_flag(sd21_bundle, tiny_sd21, tmp_path, capsys):
    argv = ["infer", "--model", str(sd21_bundle), "--prompt", "a red cube", "--seed", "5"]
    code, _, err = run(argv + ["--backend", "onnxruntime", "--low-memory", "--out", str(tmp_path / "low.png")], capsys)
    assert code == 0, err
    code, _, err = run(argv + ["--backend", "onnxruntime", "--out", str(tmp_path / "all.png")], capsys)
    assert code == 0, err
    assert np.array_equal(np.asarray(Image.open(tmp_path / "low.png")), np.asarray(Image.open(tmp_path / "all.png")))
    code, _, err = run(["infer", "--model", str(tiny_sd21), "--prompt", "a", "--low-memory", "--out", str(tmp_path / "t.png")], capsys)
    assert code == 2 and "--low-memory is for the onnxruntime and openvino backends, not torch" in err
