"""The OpenVINO engine: the same bundle's ONNX graphs on OpenVINO's CPU plugin, checked against
ONNX Runtime and the PyTorch reference; infer, check, bench and toy eval take it as a backend."""

import json
import shutil
import subprocess
import sys

import numpy as np
import onnx
import pytest
from helpers.bundles import VARIANTS, tiny_bundle
from helpers.cli import run_cli as run
from onnx import numpy_helper
from PIL import Image

from tiue_export.bundle import sha256_file
from tiue_export.compare import compare_arrays
from tiue_export.errors import InputError
from tiue_export.runtime import OvLoader, OvRunner, Pipeline, openvino_default_precision

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'tiue-export[openvino]')")

PROMPTS = ["a photo of a cat", "a red cube on a blue table"]


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    return tiny_bundle(tiny_models, tmp_path_factory, "sd21", **VARIANTS["sd21"])


def test_fp32_matches_onnxruntime(bundle):
    seeds = [3, 4]
    with Pipeline.load(bundle) as ort_pipe:
        ref = ort_pipe(PROMPTS, seeds=seeds)
    with Pipeline.load(bundle, engine="openvino", inference_precision="fp32") as pipe:
        out = pipe(PROMPTS, seeds=seeds)
        assert pipe.provider == "OpenVINO CPU fp32"
    assert out.provider == "OpenVINO CPU fp32"
    assert np.abs(out.latents - ref.latents).max() < 1e-4
    assert np.abs(out.images.astype(int) - ref.images).max() <= 1
    assert set(out.timings) >= {"text_encoder", "unet_encoder", "unet_decoder", "vae_decoder"}


def test_default_precision_is_the_cpus_own_and_close(bundle):
    """Default compute: bf16 on CPUs with bf16 units, else fp32; either way the image stays close."""
    default = openvino_default_precision()
    assert default in ("bf16", "fp32", "fp16")
    with Pipeline.load(bundle) as ort_pipe:
        ref = ort_pipe(PROMPTS, seeds=[0, 1])
    with Pipeline.load(bundle, engine="openvino") as pipe:
        out = pipe(PROMPTS, seeds=[0, 1])
    assert out.provider == f"OpenVINO CPU {default}"
    assert compare_arrays(ref.images, out.images, None, name="images", data_range=255.0, min_psnr=30.0)


def test_runner_is_a_context_manager_that_releases(bundle):
    runner = OvRunner(OvLoader(bundle / "vae_decoder.onnx", "fp32"))
    with pytest.raises(RuntimeError, match="outside its 'with' block"):
        runner.infer({})
    with runner as r:
        latents = np.zeros((1, *Pipeline.load(bundle).latent_shape), np.float32)
        images = r.infer({"latents": latents})["images"]
        assert images.shape == (1, 3, 16, 16)
        again = r.infer({"latents": latents + 1})["images"]
        assert not np.array_equal(images, again), "outputs must be copies, not views the next call overwrites"
    assert runner.handle is None and runner.request is None


def test_graph_cache_is_keyed_by_the_graph(bundle, tmp_path):
    """bf16 compute: the graph converted once to fp16-weight IR, its compiled graph cached without
    weights; fp32: the ONNX graph's compiled model. A hit rewrites nothing; a changed graph misses."""
    cache = tmp_path / "ovcache"
    graph = tmp_path / "vae_decoder.onnx"
    shutil.copy(bundle / "vae_decoder.onnx", graph)
    latents = np.ones((1, *Pipeline.load(bundle).latent_shape), np.float32)

    def run_once(precision="bf16"):
        loader = OvLoader(graph, precision, cache_dir=cache)
        with OvRunner(loader) as r:
            return loader.cached(), r.infer({"latents": latents})["images"]

    (model, compiled, properties), first = run_once()
    assert model.name == "model.xml" and model.parent.parent == cache and compiled.parent == model.parent
    assert properties == {"CACHE_MODE": "OPTIMIZE_SIZE"} and len(list(compiled.glob("*.blob"))) == 1
    stamps = [f.stat().st_mtime_ns for f in (model.with_suffix(".bin"), *compiled.glob("*.blob"))]
    (model2, _, _), again = run_once()
    assert model2 == model and [f.stat().st_mtime_ns for f in (model.with_suffix(".bin"), *compiled.glob("*.blob"))] == stamps, (
        "a cache hit must not convert or compile again"
    )
    np.testing.assert_array_equal(first, again)

    (source, compiled, properties), first32 = run_once("fp32")
    assert source == graph and compiled.parent.parent == cache and properties == {}
    blobs = sorted(compiled.glob("*.blob"))
    assert len(blobs) == 1
    mtime = blobs[0].stat().st_mtime_ns
    _, again32 = run_once("fp32")
    assert sorted(compiled.glob("*.blob")) == blobs and blobs[0].stat().st_mtime_ns == mtime, "a cache hit must not rewrite the compiled graph"
    np.testing.assert_array_equal(first32, again32)

    onnx_model = onnx.load(str(graph))
    init = max(onnx_model.graph.initializer, key=lambda t: np.prod(t.dims))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 2.0, init.name))
    onnx.save(onnx_model, str(graph))
    (model3, _, _), changed = run_once()
    assert model3 != model and len(sorted(cache.glob("*/model.xml"))) == 2
    assert not np.array_equal(changed, first)


def test_held_graphs_release_their_buffers_between_stages(bundle, monkeypatch):
    """With every graph held, each stage frees its activation buffers; results do not change."""
    released = []
    monkeypatch.setattr(OvRunner, "release", lambda self, orig=OvRunner.release: (released.append(self.loader.path.stem), orig(self)))
    with Pipeline.load(bundle, backend="openvino-fp32") as pipe:
        first = pipe(PROMPTS, seeds=[5, 6])
        again = pipe(PROMPTS, seeds=[5, 6])
    assert released[:4] == ["text_encoder", "unet_encoder", "unet_decoder_fused", "vae_decoder"]
    np.testing.assert_array_equal(first.images, again.images)


def test_bad_engine_options(bundle):
    with pytest.raises(InputError, match="unknown engine 'tvm'"):
        Pipeline.load(bundle, engine="tvm")
    with pytest.raises(InputError, match="execution providers are ONNX Runtime's"):
        Pipeline.load(bundle, engine="openvino", providers=["CPUExecutionProvider"])
    with pytest.raises(InputError, match="inference_precision is OpenVINO's"):
        Pipeline.load(bundle, inference_precision="bf16")
    with pytest.raises(InputError, match="OpenVINO precision 'int4'"):
        OvLoader(bundle / "vae_decoder.onnx", "int4")


def test_openvino_runtime_never_imports_torch(bundle):
    code = (
        "import sys\n"
        "from tiue_export.runtime import Pipeline\n"
        f"with Pipeline.load({str(bundle)!r}, engine='openvino') as pipe:\n"
        "    r = pipe(['a photo of a cat'], seed=1)\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "print(r.provider)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().startswith("OpenVINO CPU")


def test_infer_openvino_backend(bundle, tmp_path, capsys):
    common = ["--model", str(bundle), "--prompt", "a red cube", "--seed", "5"]
    code, out, err = run(["infer", "--backend", "openvino", "--precision", "fp32", "--out", str(tmp_path / "ov.png"), *common], capsys)
    assert code == 0, err
    assert "OpenVINO CPU fp32, one-pass]" in out
    code, _, err = run(["infer", "--backend", "onnxruntime", "--out", str(tmp_path / "ort.png"), *common], capsys)
    assert code == 0, err
    ov_img, ort_img = Image.open(tmp_path / "ov.png"), Image.open(tmp_path / "ort.png")
    assert ov_img.text["backend"] == "openvino" and ov_img.text["provider"] == "OpenVINO CPU fp32"
    assert np.abs(np.asarray(ov_img).astype(int) - np.asarray(ort_img)).max() <= 1
    code, _, err = run(["infer", "--backend", "onnxruntime", "--precision", "bf16", "--out", str(tmp_path / "x.png"), *common], capsys)
    assert code == 2 and "--precision bf16 is OpenVINO's compute precision" in err
    assert not (tmp_path / "x.png").exists()


def test_check_passes_and_fails_on_openvino(bundle, tmp_path, capsys):
    """bf16 compute runs the float graphs from the graph cache's fp16-weight IR, and passes check."""
    argv = ["check", str(bundle), "--backends", "openvino-bf16,openvino-fp32", "--json", str(tmp_path / "c.json"), "--image", str(tmp_path / "c.png")]
    code, out, err = run(argv, capsys)
    assert code == 0, out + err
    data = json.loads((tmp_path / "c.json").read_text())
    reports = {b["backend"]: b for b in data["backends"]}
    assert reports["openvino-fp32"]["precision"] == "fp32"
    assert reports["openvino-bf16"]["precision"] == "bf16"
    irs = sorted((tmp_path / "cache" / "openvino").glob("*/model.xml"))
    assert len(irs) == 5  # every graph check runs: both decoders
    for ir in irs:  # most weight bytes are fp16 (OpenVINO keeps a few precision-sensitive constants fp32)
        sizes = {"f16": 0, "f32": 0}
        for op in ov.Core().read_model(str(ir)).get_ops():
            kind = op.get_output_element_type(0).get_type_name() if op.get_type_name() == "Constant" else None
            if kind in sizes:
                sizes[kind] += op.get_byte_size()
        assert sizes["f16"] > 4 * sizes["f32"], (ir, sizes)
    eps = next(g for g in reports["openvino-fp32"]["graphs"] if g["name"] == "unet_decoder")["outputs"]["eps"]
    assert eps["cosine"] > 0.99999  # fp32 compute is held to the bundle's fp32 tolerances

    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    path = bad / "unet_decoder_fused.onnx"
    model = onnx.load(str(path))
    init = max(model.graph.initializer, key=lambda t: ("conv_out" in t.name, np.prod(t.dims)))
    init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.5 + 0.01, init.name))
    onnx.save(model, str(path))
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"][path.name] = manifest["graphs"]["unet_decoder_fused"]["sha256"] = sha256_file(path)
    (bad / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = run(["check", str(bad), "--backends", "openvino", "--image", str(tmp_path / "b.png")], capsys)
    assert code == 1 and "check FAILED: openvino" in err
    line = next(x for x in out.splitlines() if x.startswith("openvino") and "unet_decoder_fused" in x)
    assert "FAIL z0:" in line


def test_bench_times_openvino_and_its_memory(bundle, tmp_path):
    from tiue_export.verify.bench import BenchConfig, run_bench, to_markdown

    cfg = BenchConfig(model=str(bundle), backends=("openvino-fp32",), runs=1, warmup=0, references=False)
    report = run_bench(cfg, progress=lambda m: None)
    (res,) = report["results"]
    assert res["name"] == "openvino fp32 one-pass (OpenVINO CPU fp32)"
    assert set(res["stages"]) == {"text_encoder", "unet_encoder", "unet_decoder", "vae_decoder"}
    mem = res["runtime_memory"]
    assert mem["torch_loaded"] is False
    assert mem["peak_rss_mb"] > mem["weight_mb"] > 0
    assert mem["peak_rss_mb_low_memory"] > 0 and mem["torch_loaded_low_memory"] is False
    # cold start: a fresh process with an empty graph cache, then with the one it filled
    assert mem["first_image_s_empty_cache"] > 0 and mem["first_image_s"] > 0
    assert mem["held_weight_mb"] == pytest.approx(mem["weight_mb"])  # fp32 compute keeps the fp32 graphs
    md = to_markdown(report)
    assert "the torch-free runtime alone" in md and "with low_memory" in md and "with an empty one" in md
