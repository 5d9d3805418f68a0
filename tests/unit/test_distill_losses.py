"""Distillation loss terms against hand-computed values and the reference formulas."""

import math

import pytest
import torch

from tiue_export.distill.losses import (
    diffuse,
    gaussian_kl_to_standard,
    kl_loss,
    lora_denoising_loss,
    regression_loss,
    vsd_loss,
    vsd_score_gradient,
)


def test_diffuse_is_the_ddpm_forward_process():
    x0 = torch.full((2, 1, 1, 2), 2.0)
    noise = torch.full((2, 1, 1, 2), -1.0)
    abar = torch.tensor([0.64, 0.36])
    out = diffuse(x0, noise, abar)
    # sqrt(.64) * 2 + sqrt(.36) * -1 = 1.6 - 0.6; sqrt(.36) * 2 + sqrt(.64) * -1 = 1.2 - 0.8
    assert torch.allclose(out[0], torch.tensor(1.0)) and torch.allclose(out[1], torch.tensor(0.4))


def test_vsd_score_gradient_weights_by_sigma_squared_and_drops_nans():
    eps_t = torch.tensor([[[[3.0, float("nan")]]], [[[1.0, 1.0]]]])
    eps_l = torch.tensor([[[[1.0, 0.0]]], [[[0.0, 2.0]]]])
    g = vsd_score_gradient(eps_t, eps_l, torch.tensor([0.75, 0.5]))
    assert torch.equal(g, torch.tensor([[[[0.5, 0.0]]], [[[0.5, -0.5]]]]))


def test_vsd_loss_value_and_gradient():
    z0 = torch.randn(2, 4, 3, 3, requires_grad=True)
    g = torch.randn(2, 4, 3, 3)
    loss = vsd_loss(z0, g)
    assert torch.allclose(loss, 0.5 * (g**2).mean())  # reduction "mean", as the reference
    loss.backward()
    assert torch.allclose(z0.grad, g / g.numel())  # the surrogate's gradient is the score gradient


def test_gaussian_kl_hand_computed():
    x = torch.tensor([[1.0, 3.0], [0.0, 2.0]]).reshape(2, 1, 1, 2)
    # row 0: mu = 2, unbiased var = 2; row 1: mu = 1, var = 2
    expected = torch.tensor([-0.5 * (1 + math.log(2) - 4 - 2), -0.5 * (1 + math.log(2) - 1 - 2)])
    assert torch.allclose(gaussian_kl_to_standard(x), expected)


def test_kl_matches_the_reference_loop():
    torch.manual_seed(0)
    noise = torch.randn(8, 4, 5, 5) * 1.3 + 0.2
    lam = 0.1
    reference = 0
    for n in noise:  # the authors' kl_divergence()
        mu = torch.mean(n)
        logvar = torch.std(n).pow(2).log()
        reference += torch.sum(1 + logvar - mu.pow(2) - logvar.exp()) * (-0.5 * lam)
    assert torch.allclose(kl_loss(noise, lam), reference, rtol=1e-5)


def test_kl_of_standard_normal_is_small_and_zero_weight_is_zero():
    torch.manual_seed(0)
    x = torch.randn(4, 4, 32, 32)
    assert gaussian_kl_to_standard(x).abs().max() < 1e-3
    assert kl_loss(x * 3, 0.0).item() == 0.0
    assert kl_loss(x * 3, 0.1).item() > 0.1


def test_lora_denoising_loss_hand_computed():
    eps = torch.zeros(2, 1, 1, 1)
    noise = torch.ones(2, 1, 1, 1)
    loss = lora_denoising_loss(eps, noise, torch.tensor([0.25, 1.0]))
    assert loss.item() == pytest.approx((0.25 + 1.0) / 2)  # mean of abar * (eps - noise)^2


def test_regression_loss_is_weighted_latent_mse():
    z0 = torch.tensor([[[[1.0, 2.0]]], [[[0.0, -1.0]]]], requires_grad=True)
    target = torch.tensor([[[[0.0, 0.0]]], [[[2.0, -1.0]]]])
    loss = regression_loss(z0, target, 0.5)
    assert torch.allclose(loss, torch.tensor(0.5 * (1 + 4 + 4 + 0) / 4))
    loss.backward()
    assert torch.allclose(z0.grad, 0.5 * 2 * (z0 - target).detach() / 4)
    assert regression_loss(z0, target, 0.0) == 0
