"""bench: per-stage timings, FLOP accounting and report files (no wall-clock assertions)."""

import json

import pytest

from tiue_export.errors import InputError
from tiue_export.verify.bench import BenchConfig, run_bench, to_markdown, write_report
from tiue_export.verify.bench.meters import unet_flops


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
    from tiue_export.verify.bench.meters import decoder_flops
    from tiue_export.verify.bench.report import vae_decoder_lines
    from tiue_export.verify.bench.timing import time_vae_decoders, tiny_decoder_for_bench

    full = AutoencoderKL.from_pretrained(tiny_sd21 / "vae").eval()
    tiny, what = tiny_decoder_for_bench(full, tiny_sd21)  # no vae_tiny/: random weights, distill-vae's default architecture
    assert what.startswith("random weights, width 64, blocks 3,") and tiny.config.scaling_factor == 1.0
    v = time_vae_decoders(full, tiny, 1, (8, 8), runs=1, warmup=0)
    assert v["full"]["class"] == "AutoencoderKL" and v["tiny"]["class"] == "AutoencoderTiny"
    assert v["flop_ratio"] == v["full"]["flops"] / v["tiny"]["flops"] and v["speedup"] > 0
    assert decoder_flops(full, 2, (8, 8)) == 2 * v["full"]["flops"]  # counted per latent batch
    md = "\n".join(vae_decoder_lines({"vae_decoders": {"tiny_decoder": what, **v}}))
    assert "| tiny: AutoencoderTiny (random weights" in md and ("x fewer FLOPs" in md or "x more FLOPs" in md)
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
    assert "x faster than the K-step loop" in md or "x slower than the K-step loop" in md
    assert "Matmul peak" in md and "ISA ." not in md
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

    from tiue_export.verify.bench import meters

    sides = []
    real = torch.randn

    def spy(*shape, **kw):
        sides.append(shape[0])
        return real(*shape, **kw)

    monkeypatch.setattr(torch, "randn", spy)
    assert meters.matmul_rate("bf16", min_seconds=0.0) > 0 and set(sides) == {256}
    sides.clear()
    assert meters.matmul_rate("fp32", n=1024, min_seconds=float("inf")) > 0 and sides[-1] == 1024 and sides[0] == 256


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
    assert f"- {names[1]}: VAE decoder " in md and " than the full one, end to end " in md
    assert f"- {names[3]}: VAE decoder " in md and f" than {names[0]} (sequential rows; control: text encoder " in md
    with pytest.raises(InputError, match="--vae small: give full, tiny or full,tiny"):
        run_bench(BenchConfig(model=str(bundle), vae=("small",)))


# -- the truth on any CPU: ISA line, peaks only where native, ratios, the optional chart ------------
AVX2_EPYC = "vendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC 7B13\nflags\t\t: fpu sse sse2 avx fma avx2 bmi2\n"
AMX_XEON = (
    "vendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
    "flags\t\t: avx2 avx512f avx512_vnni avx512_bf16 amx_bf16 amx_tile amx_int8\n"
)


def test_cpu_features_from_cpuinfo():
    from tiue_export.cpu import parse_cpuinfo

    avx2 = parse_cpuinfo(AVX2_EPYC)
    assert avx2.vendor == "AuthenticAMD" and avx2.flags == ("AVX2",) and not avx2.vnni
    assert avx2.native == {"fp32": True, "bf16": False, "int8": False}
    assert avx2.line() == "AMD EPYC 7B13 (AuthenticAMD): AVX2; int8 dot products 16-bit intermediate sums (no VNNI)"
    amx = parse_cpuinfo(AMX_XEON)
    assert amx.flags == ("AVX2", "AVX-512", "AVX512-VNNI", "AVX512-BF16", "AMX-BF16", "AMX-INT8") and amx.vnni
    assert amx.native == {"fp32": True, "bf16": True, "int8": True} and amx.line().endswith("int8 dot products 32-bit (VNNI)")
    assert parse_cpuinfo("").flags == ()


@pytest.mark.parametrize("cpuinfo, measured, emulated", [(AVX2_EPYC, ["fp32"], ["bf16"]), (AMX_XEON, ["fp32", "bf16"], [])])
def test_matmul_peaks_only_for_native_precisions(monkeypatch, cpuinfo, measured, emulated):
    from tiue_export import cpu
    from tiue_export.verify.bench import meters

    monkeypatch.setattr(cpu, "cpu_features", lambda: cpu.parse_cpuinfo(cpuinfo))
    timed = []
    monkeypatch.setattr(meters, "matmul_rate", lambda dtype, **kw: timed.append(dtype) or 100.0)
    peaks, left_out = meters.matmul_peaks("cpu")
    assert timed == measured and list(peaks) == measured and left_out == emulated


def _report(isa, peaks, emulated, rows):
    """A bench report as run_bench leaves it, with made-up medians (only the wording is under test)."""
    from tiue_export.verify.bench.report import add_rates

    def row(name, encoder_ms, decoder_ms):
        stages = {s: {"median_ms": ms, "p90_ms": ms, "n": 1} for s, ms in (("unet_encoder", encoder_ms), ("unet_decoder", decoder_ms))}
        return {"name": name, "stages": stages, "total": {"median_ms": encoder_ms + decoder_ms, "p90_ms": 0.0}, "peak_rss_mb": 1.0, "note": ""}

    report = {
        "machine": {"cpu": "AMD EPYC 7B13", "cores": 2, "torch": "2", "torch_threads": 2, "isa": isa},
        "flops": {"one_pass_unet": 10e9, "unet_encoder": 4e9, "unet_decoder": 6e9, "full_unet_step": 8e9},
        "matmul_gflops": peaks,
        "matmul_emulated": emulated,
        "device": "cpu",
        "results": [row(*r) for r in rows],
    }
    add_rates(report)
    return report


def test_bench_on_an_avx2_cpu_reports_no_emulated_peak():
    """10 GFLOP in 50 ms is 200 GFLOP/s: of a 400 GFLOP/s fp32 peak, 50%; bf16 and int8 rows get no
    percentage (bf16 emulated, no int8 peak), and no share ever passes 100%."""
    rows = [("torch fp32 one-pass", 20, 30), ("torch bf16 one-pass", 10, 10), ("openvino int8 one-pass (OpenVINO)", 5, 5)]
    report = _report(["AVX2"], {"fp32": 400.0}, ["bf16"], rows)
    fp32, bf16, int8 = report["results"]
    assert fp32["unet_share_of_matmul_peak"] == pytest.approx(0.5) and fp32["unet_peak"] == "50% of the fp32 peak"
    assert bf16["unet_share_of_matmul_peak"] is None and bf16["unet_peak"] == "bf16 emulated"
    assert int8["unet_share_of_matmul_peak"] is None and int8["unet_peak"] == "no int8 peak"
    md = to_markdown(report)
    assert "ISA AVX2." in md and "| 200 (50% of the fp32 peak) |" in md and "| 500 (bf16 emulated) |" in md
    assert "Matmul peak on cpu: fp32 400 GFLOP/s, bf16 emulated (no bf16 dot-product instructions: not measured)" in md
    fast = _report([], {"fp32": 100.0}, [], [("torch fp32 one-pass", 20, 30)])
    assert fast["results"][0]["unet_peak"] == "above the fp32 peak" and "ISA none of AVX2, AVX-512," in to_markdown(fast)


def test_ratios_read_bigger_is_faster():
    from tiue_export.verify.bench.report import times, vae_decoder_lines

    assert times(2.0, "faster", "slower") == "2.0x faster" and times(0.5, "faster", "slower") == "2.0x slower"
    assert times(1.0, "faster", "slower", 2) == "1.00x faster"
    dec = {"class": "X", "flops": 1e9, "params": 1e6, "median_ms": 1.0, "p90_ms": 1.0}
    v = {"tiny_decoder": "random", "full": dec, "tiny": dec, "flop_ratio": 0.1, "speedup": 0.9}
    assert "- tiny VAE decoder: 10.0x more FLOPs, 1.1x slower than the full decoder" in "\n".join(vae_decoder_lines({"vae_decoders": v}))


def test_bench_without_matplotlib_skips_the_chart_up_front(monkeypatch, tmp_path, capsys):
    """No matplotlib (the [torch] extra alone): one line before the run names the extra that draws
    the chart, and the JSON and Markdown are still written."""
    import importlib.util

    from helpers.cli import run_cli

    from tiue_export.verify import bench

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "matplotlib" else real(name, *a))
    said = []

    def run(cfg, progress):
        said.append(capsys.readouterr().err)  # what was printed before the run started
        return _report(["AVX2"], {"fp32": 400.0}, ["bf16"], [("torch fp32 one-pass", 20, 30)]) | {"config": {}, "k": 4}

    monkeypatch.setattr(bench, "run_bench", run)
    code, out, err = run_cli(["bench", "--out", str(tmp_path)], capsys)
    assert code == 0, err
    assert said == ["no bench.png: matplotlib is not installed (pip install 'tiue-export[bench]')\n"]
    assert f"wrote {tmp_path / 'bench.json'}" in out and f"wrote {tmp_path / 'bench.md'}" in out and not (tmp_path / "bench.png").exists()


def test_bench_without_psutil_says_so_before_it_starts(monkeypatch, tiny_sd21):
    import sys

    from tiue_export.errors import MissingDependency
    from tiue_export.verify.bench import run_bench

    monkeypatch.setitem(sys.modules, "psutil", None)
    with pytest.raises(MissingDependency, match=r"^psutil is not installed \(bench's peak memory\): pip install 'tiue-export\[bench\]'$"):
        run_bench(BenchConfig(model=str(tiny_sd21)))
