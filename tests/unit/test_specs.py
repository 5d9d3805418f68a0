"""Graph specs (names, symbolic axes, sample inputs, TensorRT profiles) and comparison results."""

import math
import subprocess
import sys

import numpy as np
import pytest

from tiue_export.compare import compare_arrays, compare_outputs, psnr
from tiue_export.errors import InputError
from tiue_export.specs import (
    GRAPHS,
    BatchProfile,
    Geometry,
    GraphSpec,
    Tolerance,
    check_opset,
    feature_names,
    graph_specs,
)

GEO = Geometry(
    k=4,
    text_length=16,
    text_dim=32,
    vocab_size=400,
    latent=(4, 8, 8),
    image=(16, 16),
    features=(("mid", (32, 1, 1)), ("skip_0", (16, 8, 8)), ("skip_1", (32, 4, 4))),
)


def test_specs_name_every_tensor_with_symbolic_batch_axes():
    specs = graph_specs(GEO, opset=17)
    assert tuple(specs) == GRAPHS
    assert feature_names(specs) == ["mid", "skip_0", "skip_1"]
    te, enc, dec, fused, vae = (specs[g] for g in GRAPHS)
    assert te.inputs[0].dtype == "int64" and te.inputs[0].shape == ("B", 16) and te.inputs[0].value_range == (0, 400)
    assert te.outputs[0].shape == ("B", 16, 32)
    assert enc.input_names == ["latents", "text_embeddings"] and enc.output_names == ["mid", "skip_0", "skip_1"]
    assert dec.input_names == ["mid", "skip_0", "skip_1", "text_embeddings"]
    assert dec.outputs[0].name == "eps" and dec.outputs[0].shape == ("KB", 4, 8, 8)
    assert fused.input_names == ["mid", "skip_0", "skip_1", "text_embeddings", "latents"]
    assert fused.outputs[0].shape == ("B", 4, 8, 8)
    assert vae.outputs[0].shape == ("B", 3, 16, 16) and not vae.fp16  # the SD VAE stays fp32
    assert dec.dynamic_axes() == {
        "mid": {0: "B"},
        "skip_0": {0: "B"},
        "skip_1": {0: "B"},
        "text_embeddings": {0: "B"},
        "eps": {0: "KB"},
    }
    assert all(s.opset == 17 and s.file == f"{s.name}.onnx" for s in specs.values())


def test_sample_inputs_use_given_arrays_and_check_their_shape():
    spec = graph_specs(GEO)["unet_decoder_fused"]
    text = np.ones((2, 16, 32), np.float32)
    feed = spec.sample_inputs(2, 4, seed=1, given={"text_embeddings": text})
    assert list(feed) == spec.input_names
    assert feed["mid"].shape == (2, 32, 1, 1) and feed["mid"].dtype == np.float32
    assert np.array_equal(feed["text_embeddings"], text)
    again = spec.sample_inputs(2, 4, seed=1, given={"text_embeddings": text})
    assert np.array_equal(feed["latents"], again["latents"])  # seeded
    ids = graph_specs(GEO)["text_encoder"].sample_inputs(3, 4)["input_ids"]
    assert ids.dtype == np.int64 and ids.shape == (3, 16) and ids.min() >= 0 and ids.max() < 400
    with pytest.raises(ValueError, match="input text_embeddings has shape"):
        spec.sample_inputs(2, 4, given={"text_embeddings": np.ones((1, 16, 32))})


def test_tensorrt_profile_from_batch_option():
    profile = BatchProfile.parse("1:2:4")
    shapes = graph_specs(GEO)["unet_decoder"].shape_profile(profile, k=4)
    assert shapes["skip_0"] == ((1, 16, 8, 8), (2, 16, 8, 8), (4, 16, 8, 8))
    assert shapes["text_embeddings"] == ((1, 16, 32), (2, 16, 32), (4, 16, 32))
    assert "eps" not in shapes  # outputs follow from the inputs
    assert BatchProfile.parse("3") == BatchProfile(3, 3, 3)
    assert str(profile) == "1:2:4" and profile.to_dict() == {"min": 1, "opt": 2, "max": 4}


@pytest.mark.parametrize("text", ["0:1:2", "4:2:8", "a:b:c", "1:2", ""])
def test_bad_batch_profile_is_one_clear_error(text):
    with pytest.raises(InputError, match=r"bad --batch .*: use N or min:opt:max"):
        BatchProfile.parse(text)


def test_spec_round_trips_through_the_manifest():
    for spec in graph_specs(GEO).values():
        entry = spec.to_manifest("fp32")
        back = GraphSpec.from_manifest(spec.name, entry)
        assert back.inputs == spec.inputs and back.outputs == spec.outputs and back.opset == spec.opset
        assert back.tolerance == spec.tolerance
    unet16 = graph_specs(GEO)["unet_decoder"].to_manifest("fp16")
    assert unet16["precision"] == "fp16" and unet16["tolerance"]["atol"] > graph_specs(GEO)["unet_decoder"].tolerance.atol
    assert graph_specs(GEO)["vae_decoder"].to_manifest("fp16")["precision"] == "fp32"
    assert GraphSpec.from_manifest("x", unet16).shape_profile(BatchProfile(1, 1, 2), 4)["mid"][2] == (2, 32, 1, 1)


@pytest.mark.parametrize("opset", [13, 99])
def test_unsupported_opset(opset):
    with pytest.raises(InputError, match=rf"unsupported opset {opset}: use 14\.\.20"):
        check_opset(opset, 20)
    assert check_opset(17, 20) == 17


def test_specs_and_compare_import_no_torch():
    code = "import sys, tiue_export.specs, tiue_export.compare; assert 'torch' not in sys.modules"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr


# -- comparisons ------------------------------------------------------------------------------
TOL = Tolerance(atol=1e-3, rtol=1e-3, min_cosine=0.9999)


def test_compare_passes_within_tolerance_and_reports_metrics():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    r = compare_arrays(ref, ref + 1e-5, TOL, name="x")
    assert r and r.max_abs == pytest.approx(1e-5, rel=1e-2) and r.cosine > 0.99999 and r.rel_l2 < 1e-4
    assert r.nan == 0 and r.inf == 0 and r.psnr is None
    assert "x: ok" in str(r)
    d = r.to_dict()
    assert d["ok"] is True and d["tolerance"] == TOL.to_dict()


def test_compare_failure_is_falsy_and_says_the_tolerance_it_needed():
    ref = np.zeros((4, 4), np.float32)
    ref[0, 0] = 1.0
    out = ref.copy()
    out[1, 1] = 0.01
    r = compare_arrays(ref, out, TOL, name="eps")
    assert not r
    assert r.needed["atol"] == pytest.approx(0.01, rel=1e-5)
    text = str(r)
    assert "eps: FAIL" in text and "1 of 16 elements outside atol=0.001" in text and "would need atol>=0.01" in text
    # Every element within atol/rtol but the direction off: the hint names the cosine only.
    loose = Tolerance(atol=10.0, rtol=0.0, min_cosine=0.99999)
    r = compare_arrays(np.ones(8, np.float32), np.linspace(0.5, 1.5, 8, dtype=np.float32), loose, name="z0")
    assert not r and r.hint() == f"would need min_cosine<={r.cosine:.7f}"
    assert "atol>=" not in str(r) and "inf" not in str(r)


def test_compare_shape_mismatch_and_nan_always_fail():
    r = compare_arrays(np.zeros((2, 3)), np.zeros((3, 2)), TOL, name="z0")
    assert not r and "shape [3, 2] != reference [2, 3]" in str(r)
    out = np.zeros((2, 3))
    out[0, 0] = np.nan
    out[1, 1] = np.inf
    r = compare_arrays(np.zeros((2, 3)), out, None)
    assert not r and r.nan == 1 and r.inf == 1 and "1 NaN and 1 Inf" in r.reason


def test_psnr_for_images():
    ref = np.full((1, 4, 4, 3), 100, np.uint8)
    out = ref.copy()
    out[0, 0, 0, 0] = 110
    expected = 10 * math.log10(255**2 / (100 / 48))
    assert psnr(ref, out, 255.0) == pytest.approx(expected)
    r = compare_arrays(ref, out, None, data_range=255.0, min_psnr=60.0)
    assert not r and r.psnr == pytest.approx(expected) and "PSNR" in r.reason
    assert compare_arrays(ref, ref, None, data_range=255.0).to_dict()["psnr"] is None  # inf is not JSON


def test_compare_outputs_collects_every_output_before_judging():
    ref = {"a": np.ones(3), "b": np.ones(3), "c": np.ones(3)}
    out = {"a": np.ones(3), "b": np.full(3, 2.0)}
    c = compare_outputs("g", ref, out, TOL)
    assert not c and [r.name for r in c.failures] == ["b", "c"]
    assert c.to_dict()["outputs"]["a"]["ok"] is True and "missing from the output" in str(c)
