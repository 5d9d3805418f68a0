"""calibrate --engine openvino: NNCF's int8 UNet graphs (int8-matmul and hybrid recipes) as the bundle's openvino-int8 variant,
what stays float, the manifest, check, and the quality gate on the trained toy student."""

import json
import shutil

import pytest
from helpers.bundles import tiny_bundle
from helpers.cli import run_cli as run

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'tiue-export[openvino]')")
pytest.importorskip("nncf", reason="nncf is not installed (pip install 'tiue-export[openvino]')")

import openvino as ov  # noqa: E402

from tiue_export.build.quantize_openvino import VARIANT, activation_matmuls, float_scope  # noqa: E402
from tiue_export.bundle import Bundle  # noqa: E402

PROMPTS = ["a photo of a cat", "a red cube on a blue table", "an oil painting of a lighthouse at night", "two dogs playing in the snow"]


def calibrated(tiny_models, tmp_path_factory, *options):
    """A copy of the tiny bundle calibrated for OpenVINO through the CLI (the shared export stays fp32)."""
    root = tmp_path_factory.mktemp("ov-int8")
    prompts = root / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    out = root / "bundle"
    shutil.copytree(tiny_bundle(tiny_models, tmp_path_factory, "sd21"), out)
    argv = ["calibrate", str(out), "--engine", "openvino", *options, "--prompts", str(prompts), "--num", "3", "--eval-prompts", "1"]
    code, stdout, err = run_cli_plain(argv)
    assert code == 0, err
    assert "openvino-int8.xml" in stdout and "end to end fused" in stdout
    return out


@pytest.fixture(scope="module")
def ov_bundle(tiny_models, tmp_path_factory):
    """The tiny bundle calibrated with the hybrid recipe."""
    return calibrated(tiny_models, tmp_path_factory, "--recipe", "hybrid")


def run_cli_plain(argv):
    import contextlib
    import io

    from tiue_export.cli import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), pytest.raises(SystemExit) as exc:
        main(argv)
        raise SystemExit(0)
    return exc.value.code or 0, out.getvalue(), err.getvalue()


def test_variant_files_and_record_in_the_manifest(ov_bundle):
    bundle = Bundle.open(ov_bundle, verify=True)  # every file, the .bin included, has its sha256
    for name in ("unet_encoder", "unet_decoder", "unet_decoder_fused"):
        v = bundle.manifest.graphs[name].variants[VARIANT]
        assert v.file == f"{name}.{VARIANT}.xml" and v.external_data == (f"{name}.{VARIANT}.bin",) and v.precision == "int8"
        assert v.file in bundle.manifest.files and v.external_data[0] in bundle.manifest.files
        assert v.extra["quantized"]["fake_quantize"] > 0 and v.extra["quantized"]["int8_weights"] > 0
        reasons = v.extra["kept_float"]
        assert any("conv_in" in n for n in reasons) == (name == "unet_encoder")
        assert any("conv_out" in n for n in reasons) == (name != "unet_encoder")
        assert "constant per timestep (time embedding)" in reasons.values()
    record = bundle.manifest.extra["openvino_calibration"]
    assert record["format"] == "OpenVINO IR" and record["num"] == 3 and record["config"]["engine"] == "openvino"
    assert record["quality"]["ok"] and record["quality"]["min_psnr_db"] >= 30.0
    assert "calibration" not in bundle.manifest.extra  # the Q/DQ record is calibrate's other engine's


def _fed_by_fake_quantize(op, port: int) -> bool:
    src = op.input_value(port).get_node()
    while src.get_type_name() in ("Convert", "Reshape", "Transpose", "Tile"):
        src = src.input_value(0).get_node()
    return src.get_type_name() == "FakeQuantize"


def test_matmul_activations_and_the_kept_ops_stay_float(ov_bundle):
    """The hybrid recipe: no MatMul reads a quantized activation (the fused int8 cross-attention
    that lost z0 on OpenVINO's bf16 path), and nothing from conv_out on is quantized."""
    core = ov.Core()
    for name in ("unet_encoder", "unet_decoder_fused"):
        float_model = core.read_model(str(ov_bundle / f"{name}.onnx"))
        _, ignored = float_scope(float_model)
        q = core.read_model(str(ov_bundle / f"{name}.{VARIANT}.xml"))
        ops = q.get_ordered_ops()
        matmuls = [op for op in ops if op.get_type_name() == "MatMul"]
        assert matmuls and not any(_fed_by_fake_quantize(op, 0) for op in matmuls)
        assert any(op.get_type_name() == "Convolution" and _fed_by_fake_quantize(op, 0) for op in ops)
        kept = [op for op in ops if op.get_friendly_name() in ignored and op.get_type_name() in ("Convolution", "MatMul")]
        assert kept and not any(_fed_by_fake_quantize(op, 0) for op in kept)


def test_int8_matmul_recipe_quantizes_projections_not_attention(tiny_models, tmp_path_factory):
    """The default recipe, int8-matmul: every projection / feed-forward MatMul reads a quantized activation,
    attention's QK^T and PV (activation x activation) never do, and the manifest names the recipe."""
    out = calibrated(tiny_models, tmp_path_factory)
    record = Bundle.open(out).manifest.extra["openvino_calibration"]
    assert record["recipe"].startswith("int8-matmul:") and record["config"]["recipe"] == "int8-matmul"
    core = ov.Core()
    float_model = core.read_model(str(out / "unet_decoder_fused.onnx"))
    attention = activation_matmuls(float_model)
    _, ignored = float_scope(float_model)
    matmuls = [
        op for op in core.read_model(str(out / f"unet_decoder_fused.{VARIANT}.xml")).get_ordered_ops() if op.get_type_name() == "MatMul"
    ]
    projections = [op for op in matmuls if op.get_friendly_name() not in attention | ignored]
    assert attention and projections
    assert all(_fed_by_fake_quantize(op, 0) for op in projections)
    assert not any(_fed_by_fake_quantize(op, i) for op in matmuls if op.get_friendly_name() in attention for i in (0, 1))


def test_unknown_recipe_is_one_line(tiny_models, tmp_path_factory, capsys):
    fp32 = tiny_bundle(tiny_models, tmp_path_factory, "sd21")
    code, _, err = run(["calibrate", str(fp32), "--engine", "openvino", "--recipe", "full"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1 and "'full' is not one of 'hybrid', 'int8-matmul'" in err


def test_check_passes_and_infer_runs_it(ov_bundle, tmp_path, capsys):
    code, out, err = run(["check", str(ov_bundle), "--backends", "openvino-int8,onnxruntime"], capsys)
    assert code == 0, out + err
    assert "openvino-int8" in out and "check passed" in out
    code, _, err = run(
        ["infer", "--backend", "openvino-int8", "--model", str(ov_bundle), "--prompt", "a cat", "--out", str(tmp_path / "a.png")], capsys
    )
    assert code == 0, err


def test_openvino_int8_needs_its_calibration(tiny_models, tmp_path_factory, tmp_path, capsys):
    fp32 = tiny_bundle(tiny_models, tmp_path_factory, "sd21")
    code, _, err = run(
        ["infer", "--backend", "openvino-int8", "--model", str(fp32), "--prompt", "a cat", "--out", str(tmp_path / "x")], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "calibrate" in err and "--engine openvino" in err


def test_unknown_engine_is_one_line(tiny_models, tmp_path_factory, capsys):
    fp32 = tiny_bundle(tiny_models, tmp_path_factory, "sd21")
    code, _, err = run(["calibrate", str(fp32), "--engine", "tvm"], capsys)
    assert code == 2 and "'tvm' is not one of 'onnxruntime', 'openvino'" in err


@pytest.mark.slow
def test_trained_toy_student_keeps_its_images(tmp_path):
    """The quality gate on the one trained model: end-to-end image PSNR vs fp32 >= 35 dB on
    held-out prompts, as calibrate measures it (OpenVINO int8 UNet, the rest in its default precision)."""
    out = tmp_path / "toy"
    code, _, err = run_cli_plain(["export", "--out", str(out)])
    assert code == 0, err
    code, _, err = run_cli_plain(["calibrate", str(out), "--engine", "openvino", "--num", "8", "--eval-prompts", "4"])
    assert code == 0, err
    quality = json.loads((out / "manifest.json").read_text())["openvino_calibration"]["quality"]
    assert quality["min_psnr_db"] >= 35.0, quality["end_to_end"]
