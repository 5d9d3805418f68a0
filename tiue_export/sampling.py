"""Samplers as small pure functions over arrays and denoiser callables (numpy and torch alike).

Nothing here imports torch: the torch-free runtime and the PyTorch reference share these.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError
from .schedule import ddim_step_coefficients

#: Seeds are non-negative and fit 63 bits: numpy's SeedSequence and torch.Generator.manual_seed
#: both take every one of them, and ``seed + image index`` stays in range for any run here.
SEED_MAX = 2**63 - 1
#: The largest image side a model draws, as a multiple of its native side: past it a one-pass
#: student's images fall apart while the work grows with the area (16x the pixels at 4x the side).
MAX_SIZE_FACTOR = 4


@dataclass(frozen=True)
class SamplerChoice:
    """A parsed ``--sampler`` value: ``one-pass``, ``loop`` or ``ddim:N`` (what to run; the
    manifest's :class:`~tiue_export.bundle.manifest.Sampler` is the one-pass sampler's numbers)."""

    kind: str
    steps: int = 0

    @classmethod
    def parse(cls, text: str) -> "SamplerChoice":
        if text in ("one-pass", "loop"):
            return cls(text)
        if text.startswith("ddim:"):
            try:
                n = int(text[5:])
            except ValueError:
                n = 0
            if n >= 1:
                return cls("ddim", n)
        raise InputError(f"unknown sampler {text!r}: use one-pass, loop or ddim:N (N >= 1)")

    def __str__(self) -> str:
        return f"ddim:{self.steps}" if self.kind == "ddim" else self.kind


@dataclass
class SampleResult:
    """What a pipeline call made: images (uint8 NHWC), the z0 latents they came from, their seeds,
    per-stage seconds, what ran them (``provider``: the bundle backends'), and the K-step eps of
    the PyTorch one-pass sampler (``eps``)."""

    images: np.ndarray
    latents: np.ndarray
    seeds: list[int]
    timings: dict[str, float] = field(default_factory=dict)
    provider: str = ""
    eps: np.ndarray | None = None


def initial_noise(seeds: Sequence[int], shape: Sequence[int]) -> np.ndarray:
    """z_T for each seed: float32 N(0, I) of ``shape`` from numpy's PCG64, one generator per image.

    One generator per image makes image i depend only on its own seed (not on the batch), and
    every backend (PyTorch, ONNX Runtime, TensorRT, C++ given this array) starts from the same z_T.
    """
    return np.stack([np.random.default_rng(int(s)).standard_normal(tuple(shape), dtype=np.float32) for s in seeds])


def sample_ddim(
    noise,
    eps_fn: Callable,
    timesteps: Sequence[int],
    prev_timesteps: Sequence[int],
    alphas_cumprod: Sequence[float],
    final_alpha_cumprod: float,
):
    """Sequential DDIM with eta=0 (Song et al. 2021, Eq. 12): ``z <- r_t z + c_t eps_fn(z, t)``."""
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    z = noise
    for t, p in zip(timesteps, prev_timesteps):
        r, c = ddim_step_coefficients(ac[int(t)], ac[p] if p >= 0 else final_alpha_cumprod)
        z = r * z + c * eps_fn(z, int(t))
    return z


def classifier_free_guidance(eps_uncond, eps_cond, scale: float):
    """Classifier-free guidance (Ho & Salimans 2022): ``eps_u + w (eps_c - eps_u)``."""
    return eps_uncond + scale * (eps_cond - eps_uncond)


def to_uint8_images(decoded: np.ndarray) -> np.ndarray:
    """VAE output in [-1, 1], NCHW, to uint8 NHWC (``x * 127.5 + 128`` truncated, as the authors)."""
    x = np.clip(np.floor(np.asarray(decoded, dtype=np.float32) * 127.5 + 128.0), 0, 255)
    return x.astype(np.uint8).transpose(0, 2, 3, 1)
