"""check: every available backend against the PyTorch reference; a corrupted bundle fails."""

import importlib.util
import json
import shutil

import numpy as np
import onnx
import pytest
from helpers.bundles import tiny_bundle
from helpers.cli import run_cli as run
from onnx import numpy_helper

from tiue_export.bundle import sha256_file


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    return tiny_bundle(tiny_models, tmp_path_factory, "sd21")


def test_check_passes_on_a_good_bundle(bundle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = run(["check", str(bundle), "--json", str(tmp_path / "c.json")], capsys)
    assert code == 0, out + err
    assert "check passed: torch, onnxruntime" in out
    data = json.loads((tmp_path / "c.json").read_text())
    assert data["ok"] is True
    ort = next(b for b in data["backends"] if b["backend"] == "onnxruntime")
    graphs = {g["name"]: g for g in ort["graphs"]}
    assert set(graphs) == {"tokenizer", "text_encoder", "unet_encoder", "unet_decoder", "unet_decoder_fused", "vae_decoder"}
    assert graphs["unet_decoder"]["outputs"]["eps"]["cosine"] > 0.99999
    assert ort["end_to_end"]["outputs"]["images_uint8"]["psnr"] is None or ort["end_to_end"]["outputs"]["images_uint8"]["psnr"] >= 40
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"  # the image goes beside --json
    # nothing in the working directory ("cache" is the test's TIUE_EXPORT_CACHE: OpenVINO's graph cache)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name != "cache") == ["c.json", "c.png"]


def test_check_fails_on_a_corrupted_graph(bundle, tmp_path, capsys):
    bad = tmp_path / "bad"
    shutil.copytree(bundle, bad)
    path = bad / "unet_decoder.onnx"
    model = onnx.load(str(path))
    # Perturb the output convolution: the graph still runs, its numbers are wrong.
    init = max(model.graph.initializer, key=lambda t: ("conv_out" in t.name, np.prod(t.dims)))
    arr = numpy_helper.to_array(init)
    init.CopyFrom(numpy_helper.from_array(arr * 1.5 + 0.01, init.name))
    onnx.save(model, str(path))
    manifest = json.loads((bad / "manifest.json").read_text())
    manifest["files"]["unet_decoder.onnx"] = manifest["graphs"]["unet_decoder"]["sha256"] = sha256_file(path)  # consistent but wrong
    (bad / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = run(["check", str(bad), "--backends", "onnxruntime", "--image", str(tmp_path / "c.png")], capsys)
    assert code == 1
    assert "check FAILED: onnxruntime" in err
    line = next(x for x in out.splitlines() if x.startswith("onnxruntime") and "unet_decoder " in x)
    assert "FAIL eps:" in line and "would need atol>=" in line


def test_check_bad_input(bundle, tmp_path, capsys):
    code, _, err = run(["check", str(bundle), "--backends", "nope"], capsys)
    assert code == 2 and "unknown backend 'nope'" in err
    code, _, err = run(["check", str(tmp_path / "missing")], capsys)
    assert code == 2 and "no such bundle directory" in err
    moved = tmp_path / "moved"
    shutil.copytree(bundle, moved)
    code, _, err = run(["check", str(moved), "--model", str(tmp_path / "gone")], capsys)
    assert code == 2 and "source model" in err and "--model PATH" in err


def test_unavailable_backend_is_reported_not_passed(bundle, tmp_path, capsys):
    code, out, err = run(["check", str(bundle), "--backends", "onnxruntime-int8", "--image", str(tmp_path / "c.png")], capsys)
    assert code == 1
    assert "unavailable: no int8 graphs in this bundle: run tiue-export calibrate BUNDLE first" in out
    assert "no backend could be checked" in err


def test_backend_with_only_the_unfused_decoder(bundle, tiny_models):
    """An engine set built --no-fused has no fused decoder: check compares what it has and runs
    the end to end through the K-batched decoder and Eq. 11."""
    from tiue_export import backends
    from tiue_export.executor import GraphSet
    from tiue_export.reference.pipeline import load_pipeline
    from tiue_export.runtime import Bundle
    from tiue_export.sampling import initial_noise
    from tiue_export.verify.check import check_backend, reference_chain

    opened = Bundle.open(bundle)
    manifest = opened.manifest
    pipe = load_pipeline(tiny_models("sd21"))
    prompts = ["a photo of a cat"]
    noise = initial_noise([0], pipe.latent_shape())
    ref = reference_chain(pipe, manifest, pipe.tokenize(prompts), noise)
    backend = backends.get("onnxruntime")
    full = backend.graphs(opened)
    unfused = GraphSet({g: full.factories[g] for g in ("text_encoder", "unet_encoder", "unet_decoder", "vae_decoder")})
    with unfused:
        report = check_backend(backend, unfused, None, manifest, ref)
    names = [c.name for c in report.graphs]
    assert "unet_decoder" in names and "unet_decoder_fused" not in names
    assert report.ok, [str(c) for c in report.graphs + [report.end_to_end]]


def test_available_backends_without_tensorrt():
    from types import SimpleNamespace

    from tiue_export.backends import available as available_backends

    manifest = SimpleNamespace(variants={"int8", "openvino-int8"}, engines={"fp16": {}})
    # No TensorRT or GPU here: engines in the manifest are not offered, int8 graphs are.
    pytest.importorskip("onnxruntime")
    try:
        import tensorrt  # noqa: F401

        pytest.skip("TensorRT is installed here")
    except ImportError:
        pass
    openvino = ["openvino", "openvino-int8", "openvino-int8-qdq"] if importlib.util.find_spec("openvino") else []
    assert available_backends(manifest) == ["torch", "onnxruntime", "onnxruntime-int8", *openvino]
