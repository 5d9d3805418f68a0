"""The PyTorch fast path (``--compile``): torch.compile on the CPU against eager, one-line refusals
of the CUDA-graph modes without CUDA, device-resident graph outputs, and (where a GPU is present)
CUDA graphs, torch.compile's reduce-overhead and the CUDA bench."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from PIL import Image

from tiue_export.errors import InputError
from tiue_export.executor import run_chain
from tiue_export.reference.pipeline import load_pipeline
from tiue_export.reference.torch_graphs import CUDA_GRAPH_MODES, check_compile_mode, graphs
from tiue_export.sampling import initial_noise, to_uint8_images
from tiue_export.verify.bench import BenchConfig, run_bench, to_markdown

PROMPT = "a red cube"
NO_CUDA = not torch.cuda.is_available()


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cuda_graph_modes_need_cuda(tiny_sd21, tmp_path, capsys):
    for mode in CUDA_GRAPH_MODES:
        with pytest.raises(InputError, match=f"--compile {mode} captures CUDA graphs: it needs --device cuda"):
            check_compile_mode(mode, "cpu")
        code, _, err = run_cli(["infer", "--model", str(tiny_sd21), "--prompt", PROMPT, "--compile", mode, "--out", str(tmp_path / "o")], capsys)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1 and "needs --device cuda" in err, err
        with pytest.raises(InputError, match="needs --device cuda"):
            run_bench(BenchConfig(model=str(tiny_sd21), backends=("torch",), compile=("none", mode), device="cpu", references=False))
    with pytest.raises(InputError, match="--compile 'fast'"):
        check_compile_mode("fast", "cpu")
    with pytest.raises(InputError, match="--device cuda: this PyTorch has no CUDA|--device cuda: PyTorch sees no CUDA"):
        run_bench(BenchConfig(model=str(tiny_sd21), backends=("torch",), device="cuda", references=False))
    assert not (tmp_path / "o").exists()


def test_compile_is_for_the_torch_one_pass_sampler(tiny_sd21, tmp_path, capsys):
    out = str(tmp_path / "o")
    code, _, err = run_cli(["infer", "--model", str(tiny_sd21), "--prompt", PROMPT, "--compile", "default", "--sampler", "loop", "--out", out], capsys)
    assert code == 2 and "--compile speeds up the one-pass sampler's UNet graphs; --sampler loop runs eager" in err
    code, _, err = run_cli(["infer", "--backend", "onnxruntime", "--model", str(tiny_sd21), "--prompt", PROMPT, "--compile", "default", "--out", out], capsys)
    assert code == 2 and "--compile is for --backend torch" in err
    code, _, err = run_cli(["infer", "--model", str(tiny_sd21), "--prompt", PROMPT, "--compile", "fast", "--out", out], capsys)
    assert code == 2 and "Invalid value for '--compile'" in err


def test_device_resident_outputs_are_the_same_numbers(tiny_sd21):
    """Outputs kept as torch tensors between graphs (what a GPU does) give the numpy path's bits."""
    pipe = load_pipeline(tiny_sd21)
    ref = pipe.sample([PROMPT, "a cat"], [0, 1])
    manifest = pipe.manifest()
    ids, noise = pipe.tokenize([PROMPT, "a cat"]), initial_noise([0, 1], pipe.latent_shape())
    g = graphs(pipe, manifest, resident=True)
    out = g.runner("text_encoder").infer({"input_ids": ids})
    assert out and all(isinstance(v, torch.Tensor) for v in out.values())
    result = run_chain(manifest, g, ids, noise, "unfused", keep=True)
    assert np.array_equal(result.z0, ref.latents)
    assert np.array_equal(to_uint8_images(result.images), ref.images)
    assert all(isinstance(v, np.ndarray) for v in result.values.values())  # kept values come to the host
    assert g.gpu_seconds() == {}  # CUDA events only on a GPU


@pytest.mark.slow
def test_torch_compile_on_the_cpu_matches_eager(tiny_sd21, tmp_path, capsys):
    """``--compile default`` (inductor, C++ kernels on the CPU): the same images within rounding,
    its own file name and provider; bench times it beside eager in one run."""
    files = {}
    for mode in ("none", "default"):
        out = tmp_path / mode
        code, _, err = run_cli(["infer", "--model", str(tiny_sd21), "--prompt", PROMPT, "--num-images", "2", "--compile", mode, "--out", str(out)], capsys)
        assert code == 0, err
        files[mode] = sorted(out.glob("*.png"))
    assert len(files["default"]) == 2 and {p.name for p in files["none"]}.isdisjoint(p.name for p in files["default"])
    for eager, compiled in zip(files["none"], files["default"]):
        a, b = np.asarray(Image.open(eager), np.float64), np.asarray(Image.open(compiled), np.float64)
        assert np.abs(a - b).max() <= 2 and np.abs(a - b).mean() < 0.05, np.abs(a - b).max()
    assert Image.open(files["default"][0]).text["provider"] == "PyTorch CPU float32 default"
    assert "provider" not in Image.open(files["none"][0]).text

    report = run_bench(BenchConfig(model=str(tiny_sd21), backends=("torch",), compile=("none", "default"), runs=1, warmup=0, references=False, vae_decoders=False), progress=lambda m: None)
    names = [r["name"] for r in report["results"]]
    assert names == ["torch fp32 one-pass", "torch fp32 one-pass (default)"]
    assert all(r["unet_gflops"] > 0 and "peak_device_mb" not in r for r in report["results"])
    assert report["device"] == "cpu" and set(report["matmul_gflops"]) | set(report["matmul_emulated"]) == {"fp32", "bf16"}
    assert "peak GPU MB" not in to_markdown(report)


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="no CUDA GPU on this machine")
@pytest.mark.parametrize("mode", ["cuda-graphs", "reduce-overhead"])
def test_cuda_graphs_match_eager_on_the_gpu(tiny_sd21, mode):
    """fp16 on CUDA: captured CUDA graphs (ours or inductor's) replay eager's numbers; a second
    batch size captures again; repeated calls do not overwrite earlier results."""
    eager = load_pipeline(tiny_sd21, device="cuda", dtype=torch.float16)
    fast = load_pipeline(tiny_sd21, device="cuda", dtype=torch.float16, compile=mode)
    for prompts in ([PROMPT], [PROMPT, "a cat", "a dog"]):
        seeds = list(range(len(prompts)))
        ref = eager.sample(prompts, seeds)
        first = fast.sample(prompts, seeds)
        again = fast.sample(prompts, [s + 10 for s in seeds])
        assert np.abs(first.images.astype(float) - ref.images).mean() < 1, mode
        assert not np.array_equal(first.images, again.images)  # a replay did not overwrite the first result
        assert np.array_equal(fast.sample(prompts, seeds).images, first.images)
    assert fast.provider == f"PyTorch cuda:0 float16 {mode}"


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="no CUDA GPU on this machine")
def test_bench_on_cuda(tiny_sd21):
    report = run_bench(BenchConfig(model=str(tiny_sd21), backends=("torch",), device="cuda", runs=2, warmup=1, teacher_steps=4, teacher_timed_steps=2), progress=lambda m: None)
    names = [r["name"] for r in report["results"]]
    assert names[:3] == ["torch cuda:0 fp16 one-pass", "torch cuda:0 fp16 one-pass (cuda-graphs)", "torch cuda:0 fp16 one-pass (reduce-overhead)"]
    assert set(report["matmul_gflops"]) == {"fp32", "fp16", "bf16"} and report["machine"]["gpu"]
    for r in report["results"]:
        assert r["peak_device_mb"] > 0
    assert "peak GPU MB" in to_markdown(report)
