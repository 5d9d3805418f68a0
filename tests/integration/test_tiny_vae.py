"""distill-vae on a tiny model (a loadable AutoencoderTiny, exact resume), and its decoder as the
``tiny`` variant of vae_decoder through export, infer (PyTorch and the runtime) and the errors."""

import json

import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from PIL import Image
from safetensors.torch import load_file
from test_distill_train import _one_thread  # noqa: F401  (tiny models: one thread, module-wide)

from tiue_export.distill.tiny_vae import VaeDistillConfig, distill_vae


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (24, 20, 3), dtype=np.uint8)).save(folder / f"{i:02d}.png")
    return folder


def config(model, images, out, **kw):
    return VaeDistillConfig(out=str(out), model=str(model), images=str(images), steps=4, batch_size=2, width=8, blocks=(1, 1), checkpoint_every=2, keep_checkpoints=0, **kw)


@pytest.fixture(scope="module")
def tiny_vae(tiny_models, images, tmp_path_factory):
    out = tmp_path_factory.mktemp("vae") / "tiny"
    result = distill_vae(config(tiny_models("sd21"), images, out))
    return out, result


def test_distill_vae_writes_a_loadable_tiny_decoder(tiny_vae, tiny_models):
    from diffusers import AutoencoderKL, AutoencoderTiny

    out, result = tiny_vae
    assert result.steps == 4 and np.isfinite(result.psnr_held_out)
    tiny = AutoencoderTiny.from_pretrained(out)
    full = AutoencoderKL.from_pretrained(tiny_models("sd21") / "vae")
    z0 = torch.randn(1, 4, 8, 8)
    assert tiny.decode(z0).sample.shape == full.decode(z0).sample.shape  # same upsampling: z0 in, image out
    assert tiny.config.scaling_factor == 1.0  # decode(z0 / scaling_factor) decodes z0 itself
    record = json.loads((out / "distill_vae.json").read_text())
    assert record["distilled_from"]["vae_scaling_factor"] == full.config.scaling_factor
    assert record["data"].startswith("10 images of") and record["steps"] == 4
    log = [json.loads(line) for line in (out.parent / "tiny.run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3, 4]


def test_distill_vae_resumes_bit_for_bit(tiny_vae, tiny_models, images, tmp_path):
    import shutil

    out, _ = tiny_vae
    run = out.parent / "tiny.run"
    copy = tmp_path / "tiny"
    shutil.copytree(run, tmp_path / "tiny.run")
    shutil.rmtree(tmp_path / "tiny.run" / "checkpoints" / "step-00000004")  # killed after step 2's checkpoint
    distill_vae(config(tiny_models("sd21"), images, copy), resume=True)
    a, b = load_file(out / "diffusion_pytorch_model.safetensors"), load_file(copy / "diffusion_pytorch_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    log = [json.loads(line)["step"] for line in (tmp_path / "tiny.run" / "log.jsonl").read_text().splitlines()]
    assert log == [1, 2, 3, 4]


def test_distill_vae_on_the_models_own_samples(tiny_models, tmp_path):
    """Without --images a model that is not the toy one trains on the z0 its own sampler makes."""
    from tiue_export.reference.pipeline import load_pipeline

    model = tiny_models("sd21")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red cube\n\na blue ball\n")
    out = tmp_path / "tiny"
    cfg = VaeDistillConfig(out=str(out), model=str(model), samples=10, prompts=str(prompts), steps=2, batch_size=2, width=8, blocks=(1, 1), checkpoint_every=2)
    result = distill_vae(cfg)
    record = json.loads((out / "distill_vae.json").read_text())
    assert record["data"].startswith("10 samples of the model (one-pass, prompts from") and record["steps"] == 2
    pool = torch.load(tmp_path / "tiny.run" / "latents.pt", weights_only=True)
    assert pool["train"]["mean"].shape[0] == 9 and pool["held_out"]["mean"].shape[0] == 1
    assert not pool["train"]["std"].any()  # the model's z0 itself, no posterior spread
    pipe = load_pipeline(model)
    z0 = pipe.sample(["a blue ball"], [1]).latents[0]  # the second job: prompts cycle, seeds count
    assert np.allclose(pool["train"]["mean"][1].numpy() * pipe.vae.config.scaling_factor, z0, atol=1e-5)
    assert result.psnr_held_out is not None


def test_distill_vae_on_the_toy_students_own_samples(tmp_path):
    """The toy VAE learns on toy renders by default; given --prompts, on the z0 the toy student
    samples itself, as any other model (what its tiny decoder will decode)."""
    from tiue_export.reference.builtin import default_model

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a small red triangle on a blue background\n")
    out = tmp_path / "tiny"
    cfg = VaeDistillConfig(out=str(out), samples=10, prompts=str(prompts), steps=1, batch_size=2, width=8, checkpoint_every=1)
    distill_vae(cfg)
    record = json.loads((out / "distill_vae.json").read_text())
    assert record["data"].startswith("10 samples of the model (one-pass, prompts from") and str(default_model().name) in record["distilled_from"]["model"]
    pool = torch.load(tmp_path / "tiny.run" / "latents.pt", weights_only=True)
    assert pool["train"]["mean"].shape[0] == 9 and not pool["train"]["std"].any()


def test_distill_vae_errors(tiny_vae, tiny_models, images, tmp_path, capsys):
    model = str(tiny_models("sd21"))
    code, _, err = run_cli(["distill-vae", "--model", model, "--images", str(images), "--prompts", str(images), "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "--prompts is for sampling the model's own latents: drop it with --images" in err
    code, _, err = run_cli(["distill-vae", "--model", model, "--prompts", str(tmp_path / "none.txt"), "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "none.txt" in err and "Traceback" not in err
    code, _, err = run_cli(["distill-vae", "--model", model, "--images", str(tmp_path), "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "holds no images" in err
    code, _, err = run_cli(["distill-vae", "--model", model, "--images", str(images), "--blocks", "1,1,1", "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "--blocks needs 2 stages for this VAE" in err
    code, _, err = run_cli(["distill-vae", "--model", model, "--images", str(images), "--out", str(tmp_path / "d"), "--resume"], capsys)
    assert code == 2 and "holds no run to continue" in err


@pytest.fixture(scope="module")
def tiny_vae_bundle(tiny_vae, tiny_models, tmp_path_factory):
    from tiue_export.build.export import ExportConfig, export_bundle

    bundle = tmp_path_factory.mktemp("bundles") / "tiny-vae"
    report = export_bundle(ExportConfig(model=tiny_models("sd21"), out=bundle, vae=str(tiny_vae[0]), validate_batch=1))
    return bundle, report


def test_tiny_variant_through_export_and_infer(tiny_vae, tiny_vae_bundle, tiny_models, tmp_path, capsys):
    from tiue_export.reference.pipeline import load_pipeline
    from tiue_export.runtime import Pipeline

    out, _ = tiny_vae
    model = tiny_models("sd21")
    bundle, report = tiny_vae_bundle
    assert report.validation["graphs"]["vae_decoder.tiny"]["ok"]
    variant = json.loads((bundle / "manifest.json").read_text())["graphs"]["vae_decoder"]["variants"]["tiny"]
    assert variant["file"] == "vae_decoder.tiny.onnx" and "psnr_vs_full_db" in variant and variant["source"] == str(out.resolve())
    with np.load(bundle / "reference.npz") as stored:  # check's tiny reference without torch
        assert stored["vae_decoder.tiny.images"].shape == stored["vae_decoder.images"].shape

    prompts, seeds = ["a photo of a cat", "a red cube"], [3, 4]
    ref = load_pipeline(model, vae=str(out)).sample(prompts, seeds)
    full = load_pipeline(model).sample(prompts, seeds)
    with Pipeline.load(bundle, vae="tiny") as pipe:
        got = pipe(prompts, seeds=seeds)
    assert np.abs(got.images.astype(int) - ref.images.astype(int)).max() <= 1  # ONNX Runtime vs PyTorch, tiny decoder
    assert np.array_equal(got.latents, full.latents.reshape(got.latents.shape)) or np.allclose(got.latents, full.latents, atol=1e-4)
    assert not np.array_equal(ref.images, full.images)  # the tiny decoder did decode

    code, stdout, err = run_cli(["infer", "--prompt", "a cat", "--model", str(bundle), "--backend", "onnxruntime", "--vae", "tiny", "--out", str(tmp_path / "o")], capsys)
    assert code == 0 and len(list((tmp_path / "o").glob("*.png"))) == 1
    import shutil

    plain = tmp_path / "plain"
    shutil.copytree(bundle, plain)
    manifest = json.loads((plain / "manifest.json").read_text())
    del manifest["graphs"]["vae_decoder"]["variants"]
    (plain / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["infer", "--prompt", "a cat", "--model", str(plain), "--backend", "onnxruntime", "--vae", "tiny", "--out", str(tmp_path / "p")], capsys)
    assert code == 2 and "has no tiny graphs" in err and "--vae tiny" in err


def test_vae_choice_errors(tiny_vae, tiny_models, tmp_path, capsys):
    model = str(tiny_models("sd21"))
    code, _, err = run_cli(["infer", "--prompt", "x", "--model", model, "--vae", "tiny", "--out", str(tmp_path / "a")], capsys)
    assert code == 2 and "has no tiny VAE decoder: make one with tiue-export distill-vae" in err
    code, _, err = run_cli(["infer", "--prompt", "x", "--model", model, "--vae", "bogus", "--out", str(tmp_path / "b")], capsys)
    assert code == 2 and "not full, tiny or a distill-vae output directory" in err
    import shutil

    other = tmp_path / "other"  # a decoder distilled from another VAE
    shutil.copytree(tiny_vae[0], other)
    record = json.loads((other / "distill_vae.json").read_text())
    record["distilled_from"]["vae_sha256"] = "0" * 64
    (other / "distill_vae.json").write_text(json.dumps(record))
    code, _, err = run_cli(["infer", "--prompt", "x", "--model", model, "--vae", str(other), "--out", str(tmp_path / "c")], capsys)
    assert code == 2 and "was distilled from another VAE" in err


def _rows(out: str, backend: str) -> dict:
    """check's table: graph -> its line, for one backend."""
    return {line.split()[1]: line for line in out.splitlines() if line.startswith(backend + " ")}


def test_check_covers_the_tiny_decoder(tiny_vae_bundle, tmp_path, capsys):
    bundle, _ = tiny_vae_bundle
    code, out, err = run_cli(["check", str(bundle), "--backends", "torch,onnxruntime", "--json", str(tmp_path / "c.json")], capsys)
    assert code == 0, out + err
    rows = _rows(out, "onnxruntime")
    assert rows["vae_decoder"].endswith("ok") and rows["vae_decoder.tiny"].endswith("ok")  # both decoders, each against its PyTorch module
    graphs = {g["name"]: g for b in json.loads((tmp_path / "c.json").read_text())["backends"] if b["backend"] == "onnxruntime" for g in b["graphs"]}
    assert graphs["vae_decoder.tiny"]["outputs"]["images"]["psnr"] > 40

    # --vae tiny: the chain as infer --vae tiny runs it, against the PyTorch tiny decoder (and without torch: reference.npz)
    for reference in ("torch", "bundle"):
        code, out, err = run_cli(["check", str(bundle), "--vae", "tiny", "--reference", reference], capsys)
        assert code == 0, out + err
        rows = _rows(out, "onnxruntime")
        assert "vae_decoder" not in rows and rows["vae_decoder.tiny"].endswith("ok") and rows["end_to_end"].endswith("ok")
        assert "check passed: onnxruntime" in out and "torch" not in out.split("check passed:")[1]
    code, out, err = run_cli(["check", str(bundle), "--vae", "full", "--backends", "onnxruntime"], capsys)
    assert code == 0 and "vae_decoder.tiny" not in out


def test_check_fails_on_a_broken_tiny_decoder(tiny_vae_bundle, tmp_path, capsys):
    import shutil

    import onnx
    from onnx import numpy_helper

    from tiue_export.bundle import sha256_file

    bad = tmp_path / "bad"
    shutil.copytree(tiny_vae_bundle[0], bad)
    path = bad / "vae_decoder.tiny.onnx"
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5 + 0.01, init.name))
    onnx.save(model, str(path))
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"]["vae_decoder.tiny.onnx"] = manifest["graphs"]["vae_decoder"]["variants"]["tiny"]["sha256"] = sha256_file(path)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = run_cli(["check", str(bad), "--backends", "onnxruntime", "--reference", "bundle"], capsys)
    rows = _rows(out, "onnxruntime")
    assert code == 1 and "check FAILED: onnxruntime" in err
    assert rows["vae_decoder"].endswith("ok") and "FAIL images:" in rows["vae_decoder.tiny"]

    del manifest["graphs"]["vae_decoder"]["variants"]  # a bundle without the tiny decoder
    (bad / "manifest.json").write_text(json.dumps(manifest))
    code, _, err = run_cli(["check", str(bad), "--vae", "tiny"], capsys)
    assert code == 2 and "has no tiny graphs" in err and "re-export it with --vae tiny" in err and len(err.strip().splitlines()) == 1


def test_export_vae_only_adds_the_variant_to_a_bundle(tiny_vae, tiny_models, tmp_path_factory, tmp_path, capsys):
    import shutil

    from helpers.bundles import tiny_bundle

    out, _ = tiny_vae
    model = str(tiny_models("sd21"))
    bundle = tmp_path / "b"
    shutil.copytree(tiny_bundle(tiny_models, tmp_path_factory, "sd21"), bundle)
    before = {p.name: p.read_bytes() for p in bundle.glob("*.onnx")}
    code, stdout, err = run_cli(["export", "--model", model, "--out", str(bundle), "--vae", str(out), "--vae-only"], capsys)
    assert code == 0, err
    assert stdout.startswith("added vae_decoder.tiny.onnx (") and "ONNX Runtime vs PyTorch" in stdout
    assert {p.name: p.read_bytes() for p in bundle.glob("*.onnx") if p.name in before} == before  # nothing else re-exported
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["graphs"]["vae_decoder"]["variants"]["tiny"]["source"] == str(out.resolve())
    assert json.loads((bundle / "validation.json").read_text())["graphs"]["vae_decoder.tiny"]["ok"]
    code, stdout, err = run_cli(["check", str(bundle), "--vae", "tiny", "--reference", "bundle", "--backends", "onnxruntime"], capsys)
    assert code == 0 and "vae_decoder.tiny" in stdout, stdout + err

    for other, args, message in (
        (model, ["--vae-only"], "--vae-only adds a tiny VAE decoder"),
        (str(tiny_models("sd15")), ["--vae", str(out), "--vae-only"], "was exported from"),
    ):
        code, _, err = run_cli(["export", "--model", other, "--out", str(bundle), *args], capsys)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
