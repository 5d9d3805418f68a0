"""calibrate --engine openvino: NNCF's int8 UNet graphs (int8-matmul and hybrid recipes) as the bundle's openvino-int8 variant,
what stays float, the manifest, check, and the quality gate on the trained toy student."""

import json
import shutil
from pathlib import Path

import pytest
from helpers.bundles import tiny_bundle
from helpers.cli import exit_code
from helpers.cli import run_cli as run

pytest.importorskip("openvino", reason="openvino is not installed (pip install 'tiue-export[openvino]')")
pytest.importorskip("nncf", reason="nncf is not installed (pip install 'tiue-export[openvino]')")

import openvino as ov  # noqa: E402

import tiue_export  # noqa: E402
from tiue_export.backends import graph_cache  # noqa: E402
from tiue_export.build import quantize  # noqa: E402
from tiue_export.build import quantize_openvino as ov_quantize  # noqa: E402
from tiue_export.build.quantize_openvino import VARIANT, activation_matmuls, float_scope  # noqa: E402
from tiue_export.bundle import Bundle  # noqa: E402
from tiue_export.cpu import cpu_features  # noqa: E402

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

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = exit_code(argv)
    return code, out.getvalue(), err.getvalue()


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
    import jsonschema

    schema = json.loads((Path(tiue_export.__file__).parent / "schemas/manifest.schema.json").read_text())
    jsonschema.validate(json.loads((ov_bundle / "manifest.json").read_text()), schema, cls=jsonschema.Draft202012Validator)
    record = bundle.manifest.extra["openvino_calibration"]
    assert record["format"] == "OpenVINO IR" and record["num"] == 3 and record["config"]["engine"] == "openvino"
    assert record["quality"]["ok"] and record["quality"]["min_psnr_db"] >= 35.0 and record["quality"]["target_psnr_db"] == 35.0
    assert record["config"]["min_psnr"] == 35.0
    assert record["int8"]["overflow_fix"] == "enable" and record["int8"]["weight_bits"] == 7
    assert record["measured_on"] == cpu_features().to_dict()
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
    # the graph cache keeps what calibrate's measurement compiled from the bundle (text encoder,
    # VAE), not the entries of the staged int8 graphs, which no load would meet again
    sources = [Path(e.source) for e in graph_cache.entries(graph_cache.cache_root())]
    assert sources and all(s.parent == out.resolve() for s in sources), sources
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


def test_weights_keep_a_7_bit_range_for_cpus_without_vnni(tiny_models, tmp_path_factory):
    """The overflow fix on every quantized layer: no int8 weight exceeds 64 in magnitude, so two
    u8 x s8 products (AVX2's vpmaddubsw pairs) sum to at most 2 * 255 * 64 < 2^15 and never saturate."""
    out = calibrated(tiny_models, tmp_path_factory)
    core = ov.Core()
    for name in ("unet_encoder", "unet_decoder_fused"):
        weights = [
            op.get_data()
            for op in core.read_model(str(out / f"{name}.{VARIANT}.xml")).get_ordered_ops()
            if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() == "i8"
        ]
        assert weights and max(int(abs(w.astype(int)).max()) for w in weights) <= 64


def _bundle_state(root):
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def _scaled_feeds(real, factor):
    def feeds(*args, **kwargs):
        for feed in real(*args, **kwargs):
            yield {n: v * factor if v.dtype.kind == "f" else v for n, v in feed.items()}

    return feeds


def test_a_calibration_under_the_gate_is_refused_and_nothing_written(tiny_models, tmp_path_factory, tmp_path, monkeypatch, capsys):
    """An intentionally broken calibration (every calibration input 10^4 times too large, so each
    activation range is far too wide for 8 bits) misses the 35 dB gate: exit 1, one error line saying by
    how much and what to try, and the bundle exactly as it was."""
    out = tmp_path / "bundle"
    shutil.copytree(tiny_bundle(tiny_models, tmp_path_factory, "sd21"), out)
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    before = _bundle_state(out)
    monkeypatch.setattr(ov_quantize, "graph_feeds", _scaled_feeds(quantize.graph_feeds, 1e4))
    argv = ["calibrate", str(out), "--engine", "openvino", "--prompts", str(prompts), "--num", "3", "--eval-prompts", "1"]
    code, _, err = run(argv, capsys)
    assert code == 1 and "Traceback" not in err, err
    err = err.strip().splitlines()[-1]  # after calibrate's progress lines, the refusal
    assert err.startswith("error: ") and err.count("error") == 1
    assert "OpenVINO int8 images are" in err and "dB from fp32 end to end, under calibrate's 35 dB gate: nothing was written" in err
    assert "--num 6" in err and "--keep-float REGEX" in err and "--recipe hybrid" in err and "accept less with --min-psnr" in err
    assert _bundle_state(out) == before  # no variant, no record, no staging folder left


@pytest.mark.parametrize(
    "option, message",
    [
        (["--eval-prompts", "0"], "Invalid value for '--eval-prompts': 0 is not in the range x>=1"),
        (["--min-psnr", "nan"], "Invalid value for '--min-psnr': 'nan' is not a finite number"),
    ],
)
def test_calibrate_needs_its_measurement(tiny_models, tmp_path_factory, capsys, option, message):
    fp32 = tiny_bundle(tiny_models, tmp_path_factory, "sd21")
    code, _, err = run(["calibrate", str(fp32), "--engine", "openvino", *option], capsys)
    assert code == 2 and message in err


def test_config_without_held_out_prompts_is_refused():
    from tiue_export.errors import InputError

    with pytest.raises(InputError, match="--eval-prompts must be at least 1, got 0: calibrate measures int8 against fp32 before it writes"):
        quantize.check_config(quantize.CalibrationConfig(bundle=".", engine="openvino", eval_prompts=0))


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
    held-out prompts, as calibrate measures it (OpenVINO int8 UNet, the rest in its default
    precision), on whichever CPU runs it: the overflow fix keeps AVX2-only CPUs above it too."""
    out = tmp_path / "toy"
    code, _, err = run_cli_plain(["export", "--out", str(out)])
    assert code == 0, err
    code, _, err = run_cli_plain(["calibrate", str(out), "--engine", "openvino", "--num", "8", "--eval-prompts", "4"])
    assert code == 0, err
    quality = json.loads((out / "manifest.json").read_text())["openvino_calibration"]["quality"]
    assert quality["min_psnr_db"] >= 35.0, quality["end_to_end"]
