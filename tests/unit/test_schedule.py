"""Paper Eq. 11: the one-pass sum equals K sequential DDIM steps (eta=0)."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from tiue_export.sampling import sample_ddim
from tiue_export.schedule import (
    SD21_SCHEDULER_CONFIG,
    OnePassSchedule,
    combine_one_pass,
    ddim_prev_timesteps,
    one_pass_coefficients,
)


def sd21_scheduler(**overrides):
    return DDIMScheduler.from_config({**SD21_SCHEDULER_CONFIG, **overrides})


def test_sd21_timesteps_and_encoder_timestep():
    s = OnePassSchedule.from_scheduler(sd21_scheduler(), k=4)
    assert s.timesteps == (751, 501, 251, 1)
    assert s.encoder_timestep == 751
    assert s.prev_timesteps == (501, 251, 1, -249)
    # The last step goes to final_alpha_cumprod = alphas_cumprod[0] (set_alpha_to_one=False).
    assert s.final_alpha_cumprod == pytest.approx(float(sd21_scheduler().alphas_cumprod[0]))


def test_paper_closed_form_for_k4():
    """S and E_t from the appendix's Eqs. 7-10 composed by hand, alpha_0 the final alpha.

    Composing Eqs. 7-10 gives ``E_t = sqrt(a_0) (q(a_{t-1}) - q(a_t))`` with q(a) = sqrt(1/a - 1),
    for every t; the appendix prints an extra factor 1/sqrt(a_t) for t >= 2, which disagrees with
    its own Eqs. 7-10 and with diffusers (see test_one_pass_equals_diffusers_ddim).
    """
    sched = sd21_scheduler()
    s = OnePassSchedule.from_scheduler(sched, k=4)
    ac = sched.alphas_cumprod.double().numpy()
    a4, a3, a2, a1 = (ac[t] for t in s.timesteps)
    a0 = s.final_alpha_cumprod
    q = lambda a: np.sqrt(1 / a - 1)  # noqa: E731
    assert s.S == pytest.approx(np.sqrt(a0 / a4), rel=1e-12)
    expected = [
        np.sqrt(a0) * (q(a3) - q(a4)),
        np.sqrt(a0) * (q(a2) - q(a3)),
        np.sqrt(a0) * (q(a1) - q(a2)),
        np.sqrt(a0) * (q(a0) - q(a1)),
    ]
    np.testing.assert_allclose(s.E, expected, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_one_pass_equals_diffusers_ddim(k, spacing):
    """One-pass z0 == K diffusers DDIMScheduler.step calls with the same predictions (float32)."""
    sched = sd21_scheduler(timestep_spacing=spacing)
    s = OnePassSchedule.from_scheduler(sched, k=k)
    g = torch.Generator().manual_seed(k)
    noise = torch.randn(2, 4, 8, 8, generator=g)
    eps = torch.randn(k * 2, 4, 8, 8, generator=g)

    sched.set_timesteps(k)
    z = noise.clone()
    for i, t in enumerate(sched.timesteps):
        z = sched.step(eps[i * 2 : (i + 1) * 2], t, z, eta=0.0).prev_sample
    z0 = combine_one_pass(noise.double(), eps.double(), s.S, s.E).float()
    torch.testing.assert_close(z0, z, atol=2e-5, rtol=1e-5)


@pytest.mark.parametrize("k", [1, 3, 4, 10])
def test_one_pass_equals_float64_sequence(k):
    """float64 coefficients vs a float64 recomputation of the same DDIM sequence: ~1e-12."""
    sched = sd21_scheduler()
    s = OnePassSchedule.from_scheduler(sched, k=k)
    rng = np.random.default_rng(0)
    noise = rng.standard_normal((3, 4, 5, 5))
    eps = rng.standard_normal((k * 3, 4, 5, 5))
    ac = sched.alphas_cumprod.double().numpy()

    z = noise.copy()
    for i, (t, p) in enumerate(zip(s.timesteps, s.prev_timesteps)):
        a_t, a_p = ac[t], (ac[p] if p >= 0 else s.final_alpha_cumprod)
        x0 = (z - np.sqrt(1 - a_t) * eps[i * 3 : (i + 1) * 3]) / np.sqrt(a_t)
        z = np.sqrt(a_p) * x0 + np.sqrt(1 - a_p) * eps[i * 3 : (i + 1) * 3]
    np.testing.assert_allclose(combine_one_pass(noise, eps, s.S, s.E), z, rtol=1e-12, atol=1e-12)


def test_sample_ddim_matches_diffusers_for_a_state_dependent_denoiser():
    """The loop sampler (eps depends on z) agrees with diffusers' step-by-step DDIM."""
    sched = sd21_scheduler()
    sched.set_timesteps(10)
    ts = [int(t) for t in sched.timesteps]
    prev = ddim_prev_timesteps(ts, 1000)
    w = torch.randn(4, 4, generator=torch.Generator().manual_seed(1)) * 0.1

    def eps_fn(z, t):
        return torch.einsum("ij,bjhw->bihw", w, z) + t / 1000.0

    noise = torch.randn(1, 4, 6, 6, generator=torch.Generator().manual_seed(2))
    z = noise.clone()
    for t in sched.timesteps:
        z = sched.step(eps_fn(z, int(t)), t, z).prev_sample
    ours = sample_ddim(noise, eps_fn, ts, prev, sched.alphas_cumprod.double().numpy(), float(sched.final_alpha_cumprod))
    torch.testing.assert_close(ours.float(), z, atol=1e-4, rtol=1e-4)


def test_combine_rejects_wrong_batch():
    with pytest.raises(ValueError, match="expected 4 x 2 noise predictions"):
        combine_one_pass(np.zeros((2, 1)), np.zeros((6, 1)), 1.0, [1.0] * 4)


def test_one_pass_coefficients_k1_is_one_ddim_step():
    ac = np.linspace(0.99, 0.01, 1000)
    S, E = one_pass_coefficients(ac, [999], [-1], 1.0)
    # To alpha=1, one DDIM step is x0 = (z - sqrt(1-a) eps) / sqrt(a).
    assert S == pytest.approx(1 / np.sqrt(ac[999]))
    assert E[0] == pytest.approx(-np.sqrt(1 - ac[999]) / np.sqrt(ac[999]))
