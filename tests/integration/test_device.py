"""The PyTorch reference's device and dtype: parsing, one-line refusals on a machine without CUDA,
dtype plumbing on the CPU, and (where a GPU is present) CUDA images against the CPU's."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers.cli import run_cli
from PIL import Image

from tiue_export.errors import InputError
from tiue_export.reference.device import parse_device, parse_dtype

PROMPT = "a red cube"
NO_CUDA = not torch.cuda.is_available()


def test_device_parsing():
    assert parse_device("cpu") == torch.device("cpu")
    assert parse_device("auto") == parse_device(None) == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    for bad in ("gpu", "cuda:x", "cuda:-1", "tpu"):
        with pytest.raises(InputError, match="use cpu | cuda | cuda:N | auto"):
            parse_device(bad)
    assert parse_dtype(None, torch.device("cpu")) == torch.float32
    assert parse_dtype(None, torch.device("cuda")) == torch.float16
    assert parse_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    with pytest.raises(InputError, match="fp16 is for CUDA"):
        parse_dtype("fp16", torch.device("cpu"))


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cuda_without_cuda_is_one_line_before_loading(tmp_path, capsys):
    for args in (
        ["infer", "--prompt", PROMPT, "--device", "cuda", "--out", str(tmp_path / "o")],
        ["infer", "--prompt", PROMPT, "--device", "cuda:1", "--out", str(tmp_path / "o")],
        ["toy", "eval", "--device", "cuda", "--prompts", "1", "--seeds", "1"],
    ):
        code, _, err = run_cli(args, capsys)
        assert code == 2 and "Traceback" not in err and len(err.strip().splitlines()) == 1, err
        assert "--device cuda" in err and "use --device cpu" in err
    assert not (tmp_path / "o").exists()


def test_device_and_dtype_are_the_torch_backends(tiny_sd21, tmp_path, capsys):
    code, _, err = run_cli(["infer", "--backend", "onnxruntime", "--model", str(tiny_sd21), "--prompt", PROMPT, "--device", "cpu", "--out", str(tmp_path / "o")], capsys)
    assert code == 2 and "--device and --dtype are for --backend torch" in err


def test_bf16_on_the_cpu_runs_every_sampler_close_to_fp32(tiny_sd21, tmp_path, capsys):
    images = {}
    for dtype in ("fp32", "bf16"):
        for sampler in ("one-pass", "loop"):
            out = tmp_path / f"{dtype}-{sampler}.png"
            code, _, err = run_cli(["infer", "--model", str(tiny_sd21), "--prompt", PROMPT, "--sampler", sampler, "--device", "cpu", "--dtype", dtype, "--out", str(out)], capsys)
            assert code == 0, err
            img = Image.open(out)
            images[dtype, sampler] = np.asarray(img, np.float64)
            if dtype == "bf16":
                assert img.text["provider"] == "PyTorch CPU bfloat16"
    for sampler in ("one-pass", "loop"):
        a, b = images["fp32", sampler], images["bf16", sampler]
        assert not np.array_equal(a, b)  # bf16 really ran
        assert np.abs(a - b).mean() < 12, f"{sampler}: bf16 drifted {np.abs(a - b).mean():.1f} grey levels from fp32"


@pytest.mark.gpu
@pytest.mark.skipif(NO_CUDA, reason="no CUDA GPU on this machine")
def test_cuda_images_match_the_cpu(tiny_sd21):
    from tiue_export.reference.pipeline import load_pipeline

    cpu = load_pipeline(tiny_sd21).sample([PROMPT, "a cat"], [0, 1]).images.astype(np.float64)
    for dtype in (torch.float32, torch.float16):
        gpu = load_pipeline(tiny_sd21, device="cuda", dtype=dtype).sample([PROMPT, "a cat"], [0, 1]).images.astype(np.float64)
        assert np.abs(cpu - gpu).mean() < (1 if dtype == torch.float32 else 6), dtype
