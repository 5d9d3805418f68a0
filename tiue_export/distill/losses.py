"""The distillation losses as small pure functions over torch tensors (no state, no I/O).

Notation: ``abar_t`` is the scheduler's cumulative alpha at the sampled timesteps, one per sample;
noise predictions and latents are (N, C, H, W).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def per_sample(abar_t: torch.Tensor) -> torch.Tensor:
    """Shape per-sample scalars (N,) for broadcasting over (N, C, H, W)."""
    return abar_t.reshape(-1, 1, 1, 1)


def diffuse(x0: torch.Tensor, noise: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """DDPM forward process q(x_t | x_0) (Ho et al. 2020, Eq. 4): ``sqrt(abar) x0 + sqrt(1 - abar) eps``."""
    a = per_sample(abar_t).to(x0.dtype)
    return a.sqrt() * x0 + (1 - a).sqrt() * noise


def vsd_score_gradient(eps_teacher: torch.Tensor, eps_lora: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """VSD score gradient (L_vsd of ProlificDreamer/SwiftBrush): ``nan_to_num(sigma_t^2 (eps_teacher - eps_lora))``."""
    sigma2 = 1 - per_sample(abar_t).to(eps_teacher.dtype)
    return torch.nan_to_num(sigma2 * (eps_teacher - eps_lora))


def vsd_loss(z0: torch.Tensor, score_gradient: torch.Tensor) -> torch.Tensor:
    """Surrogate whose gradient w.r.t. z0 is the VSD gradient / numel: ``0.5 mean((z0 - sg(z0 - g))^2)``."""
    target = (z0 - score_gradient).detach()
    return 0.5 * F.mse_loss(z0.float(), target.float(), reduction="mean")


def gaussian_kl_to_standard(x: torch.Tensor) -> torch.Tensor:
    """Per-sample KL(N(mu, var) || N(0, 1)) = -0.5 (1 + log var - mu^2 - var) (paper L_kl), one value per row.

    ``mu`` and ``var`` are the scalar mean and unbiased variance of each row's elements, as the
    reference computes them (``torch.mean(n)``, ``torch.std(n) ** 2``).
    """
    flat = x.float().flatten(1)
    mu = flat.mean(dim=1)
    var = flat.var(dim=1, unbiased=True)
    return -0.5 * (1 + var.log() - mu.pow(2) - var)


def kl_loss(noise_preds: torch.Tensor, lambda_kl: float) -> torch.Tensor:
    """The KL regulariser L_kl of the paper: ``lambda_kl * sum_i KL_i`` over all K x B noise predictions."""
    if lambda_kl == 0:
        return noise_preds.new_zeros((), dtype=torch.float32)
    return lambda_kl * gaussian_kl_to_standard(noise_preds).sum()


def regression_loss(z0: torch.Tensor, target: torch.Tensor, lambda_reg: float) -> torch.Tensor:
    """DMD's regression term L_reg on teacher pairs, in latent space: ``lambda_reg * mean((z0 - z0_teacher)^2)``."""
    return lambda_reg * F.mse_loss(z0.float(), target.float(), reduction="mean")


def lora_denoising_loss(eps_lora: torch.Tensor, noise: torch.Tensor, abar_t: torch.Tensor) -> torch.Tensor:
    """LoRA teacher's diffusion loss (SwiftBrush, alpha-weighted): ``mean((sqrt(abar) eps_lora - sqrt(abar) eps)^2)``."""
    a = per_sample(abar_t).sqrt()
    return F.mse_loss((a * eps_lora).float(), (a * noise).float(), reduction="mean")


def clip_text_loss(text_features: torch.Tensor, image_features: torch.Tensor, tau: float) -> torch.Tensor:
    """The Loopfree authors' CLIP term: ``relu(tau - mean_i cos(text_i, image_i))``; zero once the
    images match their prompts to cosine ``tau`` on average."""
    cos = torch.nn.functional.cosine_similarity(text_features.float(), image_features.float(), dim=-1, eps=1e-7)
    return torch.relu(tau - cos.mean())


def clip_weight(step: int, total: int, initial: float) -> float:
    """The CLIP term's weight: ``initial`` at step 0, decaying linearly to 0 at ``total`` steps."""
    return max(0.0, initial * (1 - step / max(total, 1)))
