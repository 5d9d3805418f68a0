"""Click parameter types that refuse what no model can use, before any model loads."""

from __future__ import annotations

import math

import click

from ..sampling import SEED_MAX


class Finite(click.ParamType):
    """A finite float (``nan`` and ``inf`` are refused), optionally bounded."""

    name = "float"

    def __init__(self, min: float | None = None, max: float | None = None, min_open: bool = False):
        self.min, self.max, self.min_open = min, max, min_open

    def convert(self, value, param, ctx):
        if isinstance(value, float) and math.isfinite(value):
            x = value
        else:
            try:
                x = float(value)
            except (TypeError, ValueError):
                self.fail(f"{value!r} is not a number", param, ctx)
        if not math.isfinite(x):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        if self.min is not None and (x < self.min or (self.min_open and x == self.min)):
            self.fail(f"{x:g} is not {'>' if self.min_open else '>='} {self.min:g}", param, ctx)
        if self.max is not None and x > self.max:
            self.fail(f"{x:g} is not <= {self.max:g}", param, ctx)
        return x


FINITE = Finite()
NON_NEGATIVE = Finite(min=0.0)
POSITIVE = Finite(min=0.0, min_open=True)
SEED = click.IntRange(0, SEED_MAX)
COUNT = click.IntRange(1, None)


def torch_device_options(command):
    """``--device`` and ``--dtype`` of the PyTorch reference (see :mod:`tiue_export.reference.device`)."""
    command = click.option(
        "--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None,
        help="PyTorch weights' dtype [default: fp32 on the CPU, fp16 on CUDA (the VAE stays fp32 where it overflows)].",
    )(command)
    return click.option(
        "--device", default=None, metavar="cpu|cuda[:N]|auto",
        help="Where the PyTorch reference runs [default: auto, CUDA when PyTorch sees a GPU]; z_T is drawn on the CPU.",
    )(command)


#: ``--compile`` of the PyTorch reference (see :func:`tiue_export.reference.torch_graphs.fast_module`)
COMPILE_CHOICES = ("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "cuda-graphs")


def compile_option(command):
    """``--compile``: how the PyTorch reference runs the one-pass UNet graphs."""
    return click.option(
        "--compile", "compile_mode", type=click.Choice(COMPILE_CHOICES), default="none", show_default=True,
        help="torch: run the one-pass UNet graphs eager (none), through torch.compile (default, max-autotune-no-cudagraphs; "
        "reduce-overhead adds CUDA graphs) or as explicitly captured CUDA graphs (cuda-graphs; CUDA only). Shapes are fixed "
        "per batch size: the first batch of a size compiles.",
    )(command)
