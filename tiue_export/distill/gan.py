"""DMD2's GAN term, image-free: a discriminator on the LoRA teacher's bottleneck.

DMD2 (Yin et al. 2024b, "Improved Distribution Matching Distillation for Fast Image Synthesis",
Sec. 4.3) puts a small classification head on the mid-block features of the "fake" diffusion
model (here the LoRA teacher) and trains it to tell noised real images from noised student
samples; the student gets a non-saturating GAN loss through it. Real images would break the
image-free recipe, so the "real" side is the teacher's own DDIM samples (the regression pairs'
latents): the discriminator learns what the teacher's 50-step samples look like that the
student's one-pass samples do not.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch
from torch import nn

from ..errors import ModelError
from ..student import run_encoder, time_embedding

#: Attribute of the LoRA teacher UNet that holds the head, so DDP, clipping and checkpoints
#: (everything over the LoRA teacher's trainable parameters) cover it without special cases.
HEAD_ATTR = "gan_head"


def _groups(channels: int) -> int:
    """GroupNorm groups: up to 32, at least 4 channels each (a 1x1 bottleneck must not normalise to 0)."""
    return next(g for g in (32, 16, 8, 4, 2, 1) if channels % g == 0 and channels // g >= min(4, channels))


class DiscriminatorHead(nn.Module):
    """Encoder features (N, C, h, w) -> one logit per sample: two 3x3 convolutions (the second
    halves the resolution), GroupNorm + SiLU, a 1x1 projection, averaged over positions (a patch
    discriminator, so any resolution works).

    Args:
        channels: channels of the feature it reads.
        scale: which feature: 1 the mid-block output (DMD2), 2 the deepest encoder feature at
            twice the mid block's resolution (finer detail).
    """

    def __init__(self, channels: int, scale: int = 1):
        super().__init__()
        self.scale = scale
        self.net = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, channels, 3, stride=2, padding=1),
            nn.GroupNorm(_groups(channels), channels),
            nn.SiLU(),
            nn.Conv2d(channels, 1, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features.float()).flatten(1).mean(dim=1)


def pick_feature(features: tuple[torch.Tensor, ...], scale: int) -> torch.Tensor:
    """From ``(mid, skip_0, ..., skip_n)``: the mid feature (scale 1), or the deepest skip at
    ``scale`` times its resolution."""
    if scale == 1:
        return features[0]
    side = features[0].shape[-1] * scale
    found = [f for f in features[1:] if f.shape[-1] == side]
    if not found:
        raise ModelError(f"this UNet's encoder has no feature at {scale}x the mid block's resolution (--gan-scale {scale})")
    return found[-1]


def attach_head(unet, latent_shape, scale: int = 1) -> DiscriminatorHead:
    """Add a fresh discriminator head to the LoRA teacher (before ``accelerator.prepare``); one
    encoder pass on zeros finds the channels of the feature it reads."""
    param = next(unet.parameters())
    x = torch.zeros((1, *latent_shape), dtype=param.dtype, device=param.device)
    ehs = torch.zeros((1, 1, unet.config.cross_attention_dim), dtype=param.dtype, device=param.device)
    with torch.no_grad():
        t = torch.zeros((1,), dtype=torch.long, device=param.device)
        feature = pick_feature(run_encoder(unet, x, time_embedding(unet, t, x), ehs), scale)
    head = DiscriminatorHead(feature.shape[1], scale)
    unet.add_module(HEAD_ATTR, head)
    return head


def bottleneck_logits(unet, x_t: torch.Tensor, t: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
    """The discriminator on noised latents: the UNet's encoder (conv_in .. mid block) at ``t``, then the head."""
    head = getattr(unet, HEAD_ATTR)
    features = run_encoder(unet, x_t, time_embedding(unet, t, x_t), encoder_hidden_states)
    return head(pick_feature(features, head.scale))


@contextmanager
def capture_mid(unet):
    """Record the mid-block output of every forward of ``unet`` run inside the block (a list)."""
    seen: list[torch.Tensor] = []
    handle = unet.mid_block.register_forward_hook(lambda _m, _i, out: seen.append(out))
    try:
        yield seen
    finally:
        handle.remove()


@contextmanager
def frozen(params):
    """Temporarily stop gradients to ``params`` (the discriminator while the student learns through it)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)
