"""Timesteps and the one-pass coefficients of paper Eq. 11, as pure functions of the scheduler.

A DDIM step with eta=0 is linear in the latent and the noise prediction:
``z_prev = r_t z_t + c_t eps_t`` with ``r_t = sqrt(a_prev / a_t)`` and
``c_t = sqrt(1 - a_prev) - sqrt(a_prev) sqrt(1 - a_t) / sqrt(a_t)``. Composing the K steps gives
``z0 = S z_T + sum_k E_k eps_k`` (Eq. 11): ``S = prod r`` and ``E_k = c_k prod_{j>k} r_j``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

#: The DDIM config of Stable Diffusion 2.1-base (and 1.x): what the authors' students ship.
SD21_SCHEDULER_CONFIG = {
    "_class_name": "DDIMScheduler",
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
    "trained_betas": None,
}


def ddim_step_coefficients(alpha_t: float, alpha_prev: float) -> tuple[float, float]:
    """(r, c) of one DDIM step with eta=0: ``z_prev = r z_t + c eps`` (paper Eqs. 7-10)."""
    r = np.sqrt(alpha_prev / alpha_t)
    c = np.sqrt(1.0 - alpha_prev) - np.sqrt(alpha_prev) * np.sqrt(1.0 - alpha_t) / np.sqrt(alpha_t)
    return float(r), float(c)


def ddim_prev_timesteps(timesteps: Sequence[int], num_train_timesteps: int) -> list[int]:
    """The timestep each DDIM step goes to, as diffusers' ``DDIMScheduler.step`` computes it.

    diffusers takes ``t - num_train_timesteps // K`` (not the next entry of the list); a negative
    value means ``final_alpha_cumprod``. We follow it so that z0 is exactly what diffusers gives.
    """
    stride = num_train_timesteps // len(timesteps)
    return [int(t) - stride for t in timesteps]


def ddim_plan(scheduler, steps: int) -> tuple[list[int], list[int], float]:
    """An N-step DDIM run of a diffusers scheduler: ``(timesteps, prev_timesteps, final_alpha_cumprod)``."""
    scheduler.set_timesteps(steps)
    timesteps = [int(t) for t in scheduler.timesteps]
    prev = ddim_prev_timesteps(timesteps, int(scheduler.config.num_train_timesteps))
    return timesteps, prev, float(scheduler.final_alpha_cumprod)


def one_pass_coefficients(
    alphas_cumprod: Sequence[float],
    timesteps: Sequence[int],
    prev_timesteps: Sequence[int],
    final_alpha_cumprod: float,
) -> tuple[float, list[float]]:
    """S and E_1..E_K of paper Eq. 11, in float64, for K DDIM steps (eta=0) from ``timesteps``.

    Args:
        alphas_cumprod: the scheduler's cumulative alphas, indexed by training timestep.
        timesteps: the K decoder timesteps, in sampling order (e.g. 751, 501, 251, 1).
        prev_timesteps: where each step goes (:func:`ddim_prev_timesteps`); < 0 means final.
        final_alpha_cumprod: alpha of the last step's target (alphas_cumprod[0] for SD).

    Returns:
        ``(S, E)`` with ``z0 = S * z_T + sum_k E[k] * eps_k``.
    """
    ac = np.asarray(alphas_cumprod, dtype=np.float64)
    steps = []
    for t, p in zip(timesteps, prev_timesteps):
        a_prev = ac[p] if p >= 0 else np.float64(final_alpha_cumprod)
        steps.append(ddim_step_coefficients(ac[int(t)], a_prev))
    S = 1.0
    E: list[float] = []
    for r, c in steps:  # fold left: z <- r z + c eps; earlier E's are scaled by later r's
        E = [e * r for e in E] + [c]
        S *= r
    return float(S), [float(e) for e in E]


@dataclass(frozen=True)
class OnePassSchedule:
    """Everything the one-pass sampler needs from the scheduler; it is written to the manifest."""

    k: int
    timesteps: tuple[int, ...]
    prev_timesteps: tuple[int, ...]
    encoder_timestep: int
    final_alpha_cumprod: float
    S: float
    E: tuple[float, ...]

    @classmethod
    def from_scheduler(cls, scheduler, k: int = 4, encoder_timestep: int | None = None) -> "OnePassSchedule":
        """Timesteps from ``scheduler.set_timesteps(k)`` (the authors' choice); encoder at the first."""
        from .errors import ModelError

        if k < 1:
            raise ModelError(f"K must be >= 1, got {k}")
        scheduler.set_timesteps(k)
        timesteps = [int(t) for t in scheduler.timesteps]
        n_train = int(scheduler.config.num_train_timesteps)
        if len(set(timesteps)) != k or min(timesteps) < 0 or max(timesteps) >= n_train:
            raise ModelError(f"the scheduler gives invalid timesteps for K={k}: {timesteps}")
        prev = ddim_prev_timesteps(timesteps, n_train)
        alphas = scheduler.alphas_cumprod.double().numpy()
        final = float(scheduler.final_alpha_cumprod)
        S, E = one_pass_coefficients(alphas, timesteps, prev, final)
        return cls(
            k=k,
            timesteps=tuple(timesteps),
            prev_timesteps=tuple(prev),
            encoder_timestep=int(timesteps[0] if encoder_timestep is None else encoder_timestep),
            final_alpha_cumprod=final,
            S=S,
            E=tuple(E),
        )

    def to_dict(self) -> dict:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


def combine_one_pass(noise, eps, S: float, E: Sequence[float]):
    """Paper Eq. 11 over arrays: ``S * noise + sum_k E[k] * eps[k*B:(k+1)*B]``.

    ``eps`` holds the K x B noise predictions, timestep-major. Works on numpy arrays and torch
    tensors alike (only slicing, scalar products and sums).
    """
    b = noise.shape[0]
    if eps.shape[0] != len(E) * b:
        raise ValueError(f"expected {len(E)} x {b} noise predictions, got {eps.shape[0]}")
    z = S * noise
    for k, e in enumerate(E):
        z = z + e * eps[k * b : (k + 1) * b]
    return z
