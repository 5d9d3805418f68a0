"""Where the PyTorch reference runs: ``--device cpu|cuda[:N]|auto`` and ``--dtype``, resolved once.

Noise is always drawn on the CPU (numpy, or a CPU ``torch.Generator``) and moved, so a seed gives
the same z_T on every device; images then agree across devices within float rounding.
"""

from __future__ import annotations

import re

from ..errors import InputError

DEVICE_CHOICES = "cpu | cuda | cuda:N | auto"
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def parse_device(text: str | None = "auto"):
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when PyTorch sees a GPU) as a
    ``torch.device``; a one-line :class:`InputError` for a device this machine does not have."""
    import torch

    text = (text or "auto").strip().lower()
    if text == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if text == "cpu":
        return torch.device("cpu")
    m = re.fullmatch(r"cuda(?::(\d+))?", text)
    if not m:
        raise InputError(f"--device {text!r}: use {DEVICE_CHOICES}")
    if not torch.cuda.is_available():
        why = "this PyTorch has no CUDA" if torch.version.cuda is None else "PyTorch sees no CUDA device"
        raise InputError(f"--device {text}: {why}; use --device cpu (or auto)")
    index = int(m.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise InputError(f"--device {text}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return torch.device("cuda", index)


def parse_dtype(text: str | None, device):
    """The weights' dtype: ``fp32`` / ``fp16`` / ``bf16``; default fp32 on the CPU, fp16 on CUDA.
    fp16 on the CPU is refused (slow, and not what any CPU runtime here computes in)."""
    import torch

    if text is None:
        return torch.float16 if device.type == "cuda" else torch.float32
    if text not in DTYPES:
        raise InputError(f"--dtype {text!r}: use {', '.join(DTYPES)}")
    if text == "fp16" and device.type == "cpu":
        raise InputError("--dtype fp16 is for CUDA devices: use fp32 or bf16 on the CPU")
    return getattr(torch, DTYPES[text])
