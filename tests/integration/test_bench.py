"""bench: per-stage timings, FLOP accounting and report files (no wall-clock assertions)."""

import json

import pytest

from tiue_export.errors import InputError
from tiue_export.verify.bench import BenchConfig, run_bench, to_markdown, unet_flops, write_report


def test_one_pass_flops_account_for_one_unet_step(tiny_sd21):
    from diffusers import UNet2DConditionModel

    cfg = dict(UNet2DConditionModel.load_config(tiny_sd21 / "unet"))
    k4 = unet_flops(cfg, (751, 501, 251, 1), 2, (8, 8), 16)
    k1 = unet_flops(cfg, (751,), 2, (8, 8), 16)
    # encoder + one-timestep decoder is one full UNet forward (plus the decoder's own time MLP)
    assert k1["unet_encoder"] + k1["unet_decoder"] == pytest.approx(k1["full_unet_step"], rel=1e-3)
    # the K-batched decoder does K single-timestep decoders' work
    assert k4["unet_decoder"] == 4 * k1["unet_decoder"]
    assert k4["unet_encoder"] == k1["unet_encoder"] > 0


def test_vae_decoders_side_by_side(tiny_sd21):
    from diffusers import AutoencoderKL

    from tiue_export.reference.builtin import default_model
    from tiue_export.reference.tiny_vae import SHIPPED
    from tiue_export.verify.bench import decoder_flops, time_vae_decoders, tiny_decoder_for_bench, vae_decoder_lines

    full = AutoencoderKL.from_pretrained(tiny_sd21 / "vae").eval()
    tiny, what = tiny_decoder_for_bench(full, tiny_sd21)  # no vae_tiny/: random weights, distill-vae's default architecture
    assert what.startswith("random weights, width 64, blocks 3,") and tiny.config.scaling_factor == 1.0
    v = time_vae_decoders(full, tiny, 1, (8, 8), runs=1, warmup=0)
    assert v["full"]["class"] == "AutoencoderKL" and v["tiny"]["class"] == "AutoencoderTiny"
    assert v["flop_ratio"] == v["full"]["flops"] / v["tiny"]["flops"] and v["speedup"] > 0
    assert decoder_flops(full, 2, (8, 8)) == 2 * v["full"]["flops"]  # counted per latent batch
    md = "\n".join(vae_decoder_lines({"vae_decoders": {"tiny_decoder": what, **v}}))
    assert "| tiny: AutoencoderTiny (random weights" in md and "x fewer FLOPs" in md
    toy = AutoencoderKL.from_pretrained(default_model() / "vae")
    assert tiny_decoder_for_bench(toy, default_model())[1] == f"the model's tiny decoder ({SHIPPED})"


@pytest.mark.slow
def test_bench_writes_reports(tiny_sd21, tmp_path):
    cfg = BenchConfig(model=str(tiny_sd21), backends=("torch", "torch-bf16"), runs=2, warmup=0, teacher_steps=4, teacher_timed_steps=2)
    report = run_bench(cfg, progress=lambda m: None)
    names = [r["name"] for r in report["results"]]
    assert names == ["torch fp32 one-pass", "torch bf16 one-pass", "torch K-step loop", "torch teacher DDIM-4 CFG"]
    one = report["results"][0]
    assert set(one["stages"]) == {"text_encoder", "unet_encoder", "unet_decoder", "sum", "vae_decoder"}
    assert one["stages"]["unet_decoder"]["n"] == 2 and one["unet_gflops"] > 0
    assert "extrapolated from 2 timed steps" in report["results"][3]["note"]
    md = to_markdown(report)
    assert "x the K-step loop" in md and "Matmul peak" in md
    paths = write_report(report, None, tmp_path)
    assert json.loads((tmp_path / "bench.json").read_text())["k"] == 4
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(paths) == 3


@pytest.mark.slow
def test_bench_times_a_bundle_on_onnxruntime(tiny_models, tmp_path_factory):
    from helpers.bundles import tiny_bundle

    bundle = tiny_bundle(tiny_models, tmp_path_factory, "sd21")
    report = run_bench(BenchConfig(model=str(bundle), backends=("onnxruntime",), runs=1, warmup=0, references=False), progress=lambda m: None)
    (res,) = report["results"]
    assert res["name"] == "onnxruntime fp32 one-pass (CPUExecutionProvider)"
    assert set(res["stages"]) == {"text_encoder", "unet_encoder", "unet_decoder", "vae_decoder"}
    assert report["model"] == str(tiny_models("sd21"))  # the bundle's source model is the reference


def test_bench_bad_input(tiny_sd21):
    with pytest.raises(InputError, match="unknown shape 'sd99'"):
        run_bench(BenchConfig(shape="sd99"))
    with pytest.raises(InputError, match="not both"):
        run_bench(BenchConfig(model=str(tiny_sd21), shape="sd21-tiny"))
    with pytest.raises(InputError, match="unknown backend 'nope': choose from torch, torch-bf16, onnxruntime"):
        run_bench(BenchConfig(model=str(tiny_sd21), backends=("nope",), references=False, runs=1))


def test_matmul_rate_stops_growing_once_a_product_is_slow(monkeypatch):
    """The side doubles from 256 only while one product is fast; at min_seconds 0 it stays at 256."""
    import torch

    from tiue_export.verify import bench

    sides = []
    real = torch.randn

    def spy(*shape, **kw):
        sides.append(shape[0])
        return real(*shape, **kw)

    monkeypatch.setattr(torch, "randn", spy)
    assert bench.matmul_rate("bf16", min_seconds=0.0) > 0 and set(sides) == {256}
    sides.clear()
    assert bench.matmul_rate("fp32", n=1024, min_seconds=float("inf")) > 0 and sides[-1] == 1024 and sides[0] == 256


@pytest.mark.slow
def test_bench_tiny_vae_rows_and_ratios(tiny_models, tmp_path_factory):
    """--vae full,tiny: a row per VAE decoder of each bundle backend (alternating runs on one
    loaded pipeline), the decoder and end-to-end ratios from the same run."""
    from helpers.bundles import tiny_vae_bundle

    bundle = tiny_vae_bundle(tiny_models, tmp_path_factory)
    only = {"references": False, "runtime_memory": False, "vae_decoders": False}
    cfg = BenchConfig(model=str(bundle), backends=("onnxruntime", "openvino"), runs=2, warmup=0, vae=("full", "tiny"), **only)
    report = run_bench(cfg, progress=lambda m: None)
    names = [r["name"] for r in report["results"]]
    assert names[:2] == ["onnxruntime fp32 one-pass (CPUExecutionProvider)", "onnxruntime fp32 one-pass, tiny VAE (CPUExecutionProvider)"]
    assert [r["vae"] for r in report["results"]] == ["full", "tiny", "full", "tiny"]
    assert all(r["stages"]["vae_decoder"]["n"] == 2 for r in report["results"])
    md = to_markdown(report)
    assert f"- {names[1]}: VAE decoder " in md and "x faster than the full one, end to end " in md
    assert f"- {names[3]}: VAE decoder " in md and f"x {names[0]} (sequential rows; control: text encoder " in md
    with pytest.raises(InputError, match="--vae small: give full, tiny or full,tiny"):
        run_bench(BenchConfig(model=str(bundle), vae=("small",)))
