"""tiue-export calibrate: which nodes stay float, prompt sets, the int8 Q/DQ graphs TensorRT needs
(symmetric int8, per-channel weights, float biases), their quality on ONNX Runtime CPU, the
atomic bundle update and one-line errors."""

import json
import logging
import shutil
from importlib import resources
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from helpers.bundles import tiny_bundle
from helpers.cli import exit_code
from helpers.cli import run_cli as run
from onnx import numpy_helper

from tiue_export.build import quantize
from tiue_export.build.calibrate import calibrate_bundle
from tiue_export.build.quantize import CalibrationConfig, keep_float_nodes, split_prompts
from tiue_export.errors import ModelError, TiueError
from tiue_export.reference.builtin import ASSETS

ROOT = Path(__file__).resolve().parents[2]
PROMPTS = ["a photo of a cat", "a red cube on a blue table", "an oil painting of a lighthouse at night", "two dogs playing in the snow"]


@pytest.fixture(scope="session")
def fp32_bundle(tiny_models, tmp_path_factory):
    return tiny_bundle(tiny_models, tmp_path_factory, "sd21")


@pytest.fixture(scope="session")
def prompts_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("# a comment\n" + "\n".join(PROMPTS) + "\n\n")
    return path


@pytest.fixture(scope="session")
def int8_bundle(fp32_bundle, prompts_file, tmp_path_factory):
    """The tiny bundle calibrated through the CLI (a copy: the shared export stays fp32 only)."""
    out = tmp_path_factory.mktemp("int8") / "bundle"
    shutil.copytree(fp32_bundle, out)
    assert exit_code(["calibrate", str(out), "--prompts", str(prompts_file), "--num", "3", "--batch", "2", "--eval-prompts", "1"]) == 0
    return out


def copy_of(bundle, tmp_path):
    dest = tmp_path / "bundle"
    shutil.copytree(bundle, dest)
    return dest


# -- pure parts --------------------------------------------------------------------------------
def test_keep_float_nodes_finds_time_embedding_attention_and_patterns(fp32_bundle):
    model = onnx.load(str(fp32_bundle / "unet_encoder.onnx"))
    keep = keep_float_nodes(model, quantize.KEEP_FLOAT)
    time_proj = [n for n in keep if "time_emb_proj" in n]
    assert time_proj and all(keep[n].startswith("constant per timestep") for n in time_proj)
    assert keep["/conv_in/Conv"] == "matches /conv_in/"
    assert any(r == "activation x activation" and n.endswith("attn1/MatMul") for n, r in keep.items())
    weighted = [n.name for n in model.graph.node if n.op_type in quantize.OP_TYPES]
    quantized = [n for n in weighted if n not in keep]
    assert any("resnets.0/conv1" in n for n in quantized) and any("to_q" in n for n in quantized)
    assert "/conv_in/Conv" not in keep_float_nodes(model, ())


def test_split_prompts_holds_out_and_repeats():
    prompts = [f"p{i}" for i in range(10)]
    calib, held = split_prompts(prompts, 20, 3, seed=1)
    assert len(calib) == 20 and len(held) == 3 and not set(calib) & set(held)
    assert split_prompts(prompts, 20, 3, seed=1) == (calib, held)
    assert split_prompts(prompts, 20, 3, seed=2) != (calib, held)
    calib, held = split_prompts(["only"], 2, 1, seed=0)  # too few to hold out: reuse
    assert calib == ["only", "only"] and held == ["only"]


def test_calibration_strides_divide_the_batches():
    assert [quantize.stride_for(n) for n in (1, 2, 3, 4, 5, 6, 7, 8, 9, 16)] == [1, 2, 3, 4, 1, 3, 1, 4, 3, 4]


def test_shipped_prompt_sets():
    from tiue_export.toy.domain import caption, combos

    toy = quantize.read_prompt_file(quantize.CALIBRATION_DIR / "toy_prompts.txt")
    assert toy == [caption(a) for a in combos("train")]
    general = quantize.read_prompt_file(quantize.CALIBRATION_DIR / "prompts.txt")
    assert len(set(general)) == len(general) >= 200
    assert quantize.default_prompts_file(SimpleNamespace(source={"model": "/x/assets/toy-student"})).name == "toy_prompts.txt"
    assert quantize.default_prompts_file(SimpleNamespace(source={"model": "/x/sd21-student"})).name == "prompts.txt"
    # A student distilled from the built-in toy teacher, wherever it lives, reads only toy words.
    shipped = json.loads((ASSETS / "toy-student" / "tiue.json").read_text())
    own = {"model": "/runs/my-student", "tiue": {"provenance": shipped["provenance"]}}
    assert quantize.default_prompts_file(SimpleNamespace(source=own)).name == "toy_prompts.txt"
    own["tiue"]["provenance"] = {**shipped["provenance"], "teacher_unet_sha256": "0" * 64}
    assert quantize.default_prompts_file(SimpleNamespace(source=own)).name == "prompts.txt"


# -- the calibrated bundle ---------------------------------------------------------------------
@pytest.mark.slow
def test_calibrate_writes_int8_variants_into_the_manifest(int8_bundle):
    import jsonschema

    from tiue_export.runtime import Bundle

    manifest = json.loads((int8_bundle / "manifest.json").read_text())
    schema = json.loads(resources.files("tiue_export").joinpath("schemas/manifest.schema.json").read_text())
    jsonschema.validate(manifest, schema, cls=jsonschema.Draft202012Validator)
    Bundle.open(int8_bundle, verify=True)  # every file, the new ones included, has its sha256
    files = {p.relative_to(int8_bundle).as_posix() for p in int8_bundle.rglob("*") if p.is_file()} - {"manifest.json"}
    assert set(manifest["files"]) == files
    assert not list(int8_bundle.parent.glob(f".{int8_bundle.name}.*"))  # no staging directory left
    for name in quantize.QUANTIZED_GRAPHS:
        v = manifest["graphs"][name]["variants"]["int8"]
        assert v["file"] == f"{name}.int8.onnx" and v["precision"] == "int8"
        assert manifest["files"][v["file"]] == v["sha256"]
        assert v["quantized"]["weights"] > 10 and v["kept_float"]
    assert "variants" not in manifest["graphs"]["text_encoder"] and "variants" not in manifest["graphs"]["vae_decoder"]
    cal = manifest["calibration"]
    assert cal["num"] == 4 and cal["config"]["num"] == 3  # rounded up to whole batches of 2
    assert cal["config"]["method"] == "percentile" and cal["quality"]["prompts"]
    assert cal["quality"]["min_psnr_db"] >= quantize.MIN_PSNR["onnxruntime"] and cal["quality"]["ok"]
    assert cal["config"]["min_psnr"] == quantize.MIN_PSNR["onnxruntime"] == cal["quality"]["target_psnr_db"]


@pytest.mark.slow
def test_int8_graphs_are_what_tensorrt_needs(int8_bundle):
    """Symmetric int8 (zero points 0), per-channel weight scales, float biases, float I/O."""
    model = onnx.load(str(int8_bundle / "unet_decoder_fused.int8.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
    assert q and dq
    for n in q + dq:
        zp = inits.get(n.input[2]) if len(n.input) > 2 else None
        assert zp is None or (zp.dtype == np.int8 and not zp.any()), n.name
    weights = [n for n in dq if n.input[0] in inits]
    assert all(inits[n.input[0]].dtype == np.int8 for n in weights)  # no int32 (bias) DequantizeLinear
    assert any(inits[n.input[1]].size > 1 for n in weights)  # per-channel scales
    fp32 = onnx.load(str(int8_bundle / "unet_decoder_fused.onnx"), load_external_data=False)
    io = lambda m: [(v.name, v.type.tensor_type.elem_type) for v in list(m.graph.input) + list(m.graph.output)]  # noqa: E731
    assert io(model) == io(fp32)
    # the fragile layers stayed float: nothing feeds conv_out or a time_emb_proj through a DequantizeLinear
    produced_by_dq = {o for n in dq for o in n.output}
    for n in model.graph.node:
        if "/conv_out/" in n.name or "time_emb_proj" in n.name:
            assert not set(n.input) & produced_by_dq, n.name


@pytest.mark.slow
def test_int8_pipeline_runs_on_onnxruntime_cpu_close_to_fp32(int8_bundle):
    from tiue_export.compare import compare_arrays
    from tiue_export.runtime import Pipeline

    with Pipeline.load(int8_bundle) as fp32, Pipeline.load(int8_bundle, precision="int8") as int8:
        assert int8.bundle.graph_path("unet_encoder").name == "unet_encoder.int8.onnx"
        assert int8.bundle.graph_path("text_encoder").name == "text_encoder.onnx"
        ref = fp32(PROMPTS[:2], seed=7)
        out = int8(PROMPTS[:2], seed=7)
        unfused = int8(PROMPTS[:2], seed=7, fused=False)
    assert not np.array_equal(ref.images, out.images)  # really a different graph
    assert compare_arrays(ref.images, out.images, data_range=255.0).psnr >= quantize.MIN_PSNR["onnxruntime"]
    assert compare_arrays(out.images, unfused.images, data_range=255.0).psnr >= 40


@pytest.mark.slow
def test_infer_cli_precision_int8(int8_bundle, tmp_path, capsys):
    code, out, err = run(
        ["infer", "--backend", "onnxruntime", "--precision", "int8", "--model", str(int8_bundle), "--prompt", "a cat", "--out", str(tmp_path / "a.png")],
        capsys,
    )
    assert code == 0, err
    assert (tmp_path / "a.png").is_file() and "onnxruntime" in out
    from PIL import Image

    assert Image.open(tmp_path / "a.png").text["precision"] == "int8"


# -- errors and atomicity ----------------------------------------------------------------------
def test_int8_needs_calibration(fp32_bundle, tmp_path, capsys):
    from tiue_export.runtime import Pipeline

    with pytest.raises(ModelError, match="has no int8 graphs.*run tiue-export calibrate"):
        Pipeline.load(fp32_bundle, precision="int8")
    code, _, err = run(["infer", "--precision", "int8", "--prompt", "a cat", "--out", str(tmp_path / "x")], capsys)
    assert code == 2 and err.strip() == "error: --precision int8 runs a bundle: use --backend onnxruntime, openvino or tensorrt"


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--num", "0"], "error: Invalid value for '--num': 0 is not in the range x>=1."),
        (["--prompts", "missing.txt"], "error: no such prompts file: missing.txt"),
        (["--keep-float", "conv_in("], "error: bad --keep-float pattern 'conv_in(':"),
        (["--percentile", "20"], "error: --percentile must be in (50, 100], got 20.0"),
    ],
)
def test_calibrate_bad_input_is_one_line(fp32_bundle, capsys, extra, message):
    code, _, err = run(["calibrate", str(fp32_bundle), *extra], capsys)
    assert code == 2 and err.startswith(message) and len(err.strip().splitlines()) == 1


def test_calibrate_refuses_fp16_and_non_bundles(fp32_bundle, tmp_path, capsys):
    code, _, err = run(["calibrate", str(tmp_path)], capsys)
    assert code == 2 and "is not an exported bundle" in err
    fake16 = copy_of(fp32_bundle, tmp_path)
    manifest = json.loads((fake16 / "manifest.json").read_text())
    (fake16 / "manifest.json").write_text(json.dumps({**manifest, "precision": "fp16"}))
    code, _, err = run(["calibrate", str(fake16)], capsys)
    assert code == 2 and err.strip().endswith("calibrate needs the fp32 graphs (tiue-export export --precision fp32)")
    code, _, err = run(["calibrate", str(fp32_bundle), "--method", "kl"], capsys)
    assert code == 2 and "'kl' is not one of" in err


def test_calibration_under_its_gate_is_refused(int8_bundle, fp32_bundle, prompts_file, tmp_path, capsys):
    """The Q/DQ engine's gate (30 dB by default) set above what the tiny bundle reaches: exit 1, one
    error line with the measured PSNR and what to try, nothing written."""
    bundle = copy_of(fp32_bundle, tmp_path)
    before = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    reached = json.loads((int8_bundle / "manifest.json").read_text())["calibration"]["quality"]["min_psnr_db"]
    gate = f"{reached + 20:.0f}"
    argv = ["calibrate", str(bundle), "--prompts", str(prompts_file), "--num", "3", "--batch", "2", "--eval-prompts", "1", "--min-psnr", gate]
    code, _, err = run(argv, capsys)
    assert code == 1 and "Traceback" not in err, err
    err = err.strip().splitlines()[-1]  # after calibrate's progress lines, the refusal
    assert err.startswith("error: ") and err.count("error") == 1
    assert f"int8 images are {reached:.1f} dB from fp32 end to end, under calibrate's {gate} dB gate: nothing was written to {bundle}" in err
    assert "--num 6" in err and "--keep-float REGEX" in err and "another --method (minmax, entropy)" in err
    assert f"accept less with --min-psnr {int(reached)}" in err
    assert {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before
    assert not list(tmp_path.glob(".bundle.*"))


@pytest.mark.slow
def test_failed_calibration_leaves_the_bundle_as_it_was(fp32_bundle, prompts_file, tmp_path, monkeypatch):
    bundle = copy_of(fp32_bundle, tmp_path)
    before = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    real = quantize.quantize_graph
    calls = []

    def flaky(src, dst, *args):
        calls.append(src.name)
        if len(calls) == 2:
            raise ValueError("simulated failure\nwith a second line")
        return real(src, dst, *args)

    monkeypatch.setattr(quantize, "quantize_graph", flaky)
    cfg = CalibrationConfig(bundle=bundle, prompts=prompts_file, num=2, batch=2, eval_prompts=1)
    with pytest.raises(TiueError, match=r"^quantizing unet_decoder failed: simulated failure$"):
        calibrate_bundle(cfg)
    after = {p.relative_to(bundle): p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    assert after == before
    assert not list(tmp_path.glob(".bundle.*"))


@pytest.mark.parametrize("cpuinfo, warned", [("flags : avx2", True), ("flags : avx2 avx512f avx512_vnni", False)])
def test_qdq_graphs_on_openvino_warn_on_cpus_without_vnni(int8_bundle, monkeypatch, caplog, cpuinfo, warned):
    """OpenVINO runs the Q/DQ graphs' int8 x int8 products with 16-bit sums on AVX2-only CPUs, which
    their 8-bit weights saturate (docs/engines.md): loading them there says so and what to use."""
    pytest.importorskip("openvino", reason="openvino is not installed (pip install 'tiue-export[openvino]')")
    from tiue_export import cpu
    from tiue_export.runtime import Pipeline

    monkeypatch.setattr(cpu, "cpu_features", lambda: cpu.parse_cpuinfo(f"model name : Some CPU\n{cpuinfo}\n"))
    logger = logging.getLogger("tiue_export")  # the CLI's logger does not propagate to caplog's root handler
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level("WARNING", logger="tiue_export"), Pipeline.load(int8_bundle, backend="openvino-int8-qdq"):
            pass
    finally:
        logger.removeHandler(caplog.handler)
    said = [r.getMessage() for r in caplog.records if "VNNI" in r.getMessage()]
    expected = (
        "openvino-int8-qdq on Some CPU, a CPU without VNNI: the Q/DQ graphs' 8-bit weights saturate its 16-bit int8 sums; "
        "openvino-int8 (calibrate --engine openvino: 7-bit weights) or onnxruntime-int8 keep their quality there"
    )
    assert said == ([expected] if warned else [])
