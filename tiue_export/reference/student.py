"""The TiUE student: a diffusers UNet split into a unified encoder and a K-batched decoder.

The encoder (time embedding at the encoder timestep, conv_in, down blocks, mid block) runs once;
the decoder (up blocks, output layers) runs once for all K timesteps, on a K x B batch whose rows
``k*B .. (k+1)*B-1`` belong to the k-th timestep (timestep-major, as the reference code repeats
features with ``Tensor.repeat`` and flattens ``timesteps[:, None].repeat(1, B)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ModelError


def check_supported(unet) -> None:
    """Refuse UNets whose forward needs inputs the student does not carry (SDXL, Kandinsky, ...)."""
    cfg = unet.config
    unsupported = {
        "class_embed_type": cfg.get("class_embed_type"),
        "num_class_embeds": cfg.get("num_class_embeds"),
        "addition_embed_type": cfg.get("addition_embed_type"),
        "encoder_hid_dim_type": cfg.get("encoder_hid_dim_type"),
        "time_cond_proj_dim": cfg.get("time_cond_proj_dim"),
    }
    used = {k: v for k, v in unsupported.items() if v is not None}
    if used:
        raise ModelError(
            "this UNet needs extra conditioning the TiUE student does not support "
            f"({', '.join(f'{k}={v}' for k, v in used.items())}); SD 1.x/2.x UNets are supported"
        )


def skip_count(unet) -> int:
    """Number of skip features the encoder returns: conv_in's output plus every down-block output."""
    n = 1
    for block in unet.down_blocks:
        n += len(block.resnets) + (len(block.downsamplers) if block.downsamplers is not None else 0)
    return n


def time_embedding(unet, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A UNet's time embedding (projection, MLP, optional activation) for 1-D ``timesteps``."""
    emb = unet.time_embedding(unet.get_time_embed(sample=like, timestep=timesteps), None)
    if unet.time_embed_act is not None:
        emb = unet.time_embed_act(emb)
    return emb


def run_encoder(unet, sample: torch.Tensor, emb: torch.Tensor, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """conv_in, the down blocks and the mid block of a UNet under time embedding ``emb``.

    Returns:
        ``(mid, skip_0, ..., skip_n)``: the mid-block output and every skip feature.
    """
    if unet.config.center_input_sample:
        sample = 2 * sample - 1.0
    h = unet.conv_in(sample)
    skips = (h,)
    for block in unet.down_blocks:
        if getattr(block, "has_cross_attention", False):
            h, res = block(hidden_states=h, temb=emb, encoder_hidden_states=encoder_hidden_states)
        else:
            h, res = block(hidden_states=h, temb=emb)
        skips += res
    if unet.mid_block is not None:
        if getattr(unet.mid_block, "has_cross_attention", False):
            h = unet.mid_block(h, emb, encoder_hidden_states=encoder_hidden_states)
        else:
            h = unet.mid_block(h, emb)
    return (h,) + skips


class TiUEStudent(nn.Module):
    """A UNet2DConditionModel run as a time-independent unified encoder and a K-batched decoder.

    Args:
        unet: any diffusers ``UNet2DConditionModel`` of SD 1.x/2.x kind (any number of blocks).
        timesteps: the K decoder timesteps, in sampling order.
        encoder_timestep: the timestep of the encoder's time embedding (the first of ``timesteps``
            in the authors' code).
    """

    def __init__(self, unet, timesteps: Sequence[int], encoder_timestep: int | None = None):
        super().__init__()
        check_supported(unet)
        self.unet = unet
        self.encoder_timestep = int(timesteps[0] if encoder_timestep is None else encoder_timestep)
        self.register_buffer("timesteps", torch.tensor([int(t) for t in timesteps]), persistent=False)

    @property
    def k(self) -> int:
        return int(self.timesteps.numel())

    @property
    def num_skips(self) -> int:
        return skip_count(self.unet)

    def feature_names(self) -> list[str]:
        """Names of the encoder outputs, in order: the mid feature, then every skip feature."""
        return ["mid"] + [f"skip_{i}" for i in range(self.num_skips)]

    def time_embedding(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The UNet's time embedding (projection, MLP, optional activation) for 1-D ``timesteps``."""
        return time_embedding(self.unet, timesteps, like)

    def encode(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Run the unified encoder once at the encoder timestep.

        Returns:
            ``(mid, skip_0, ..., skip_n)``: the mid-block output and every skip feature.
        """
        t = torch.full((sample.shape[0],), self.encoder_timestep, dtype=torch.long, device=sample.device)
        return run_encoder(self.unet, sample, self.time_embedding(t, sample), encoder_hidden_states)

    def decode(
        self,
        features: Sequence[torch.Tensor],
        encoder_hidden_states: torch.Tensor,
        timesteps: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Run the decoder once for all K timesteps, sharing the encoder's features.

        Args:
            features: ``(mid, skip_0, ..., skip_n)`` from :meth:`encode`, batch B.
            encoder_hidden_states: text embeddings, batch B.
            timesteps: decoder timesteps (default: the student's K).

        Returns:
            The K x B noise predictions, timestep-major.
        """
        unet = self.unet
        timesteps = self.timesteps if timesteps is None else timesteps.reshape(-1)
        k = timesteps.shape[0]
        h, skips = features[0], tuple(features[1:])
        b = h.shape[0]
        if k > 1:
            h = h.repeat(k, 1, 1, 1)
            skips = tuple(s.repeat(k, 1, 1, 1) for s in skips)
            encoder_hidden_states = encoder_hidden_states.repeat(k, 1, 1)
        # k-major rows, as repeat_interleave(b) (an expand: no host sync while CUDA graphs capture)
        emb = self.time_embedding(timesteps.to(h.device)[:, None].expand(k, b).reshape(-1), h)

        # Same rule as the UNet: pass explicit upsample sizes when the latent is not a multiple
        # of the overall upsampling factor (skip_0 has the latent's spatial size).
        factor = 2**unet.num_upsamplers
        forward_upsample_size = any(d % factor != 0 for d in skips[0].shape[-2:])
        upsample_size = None
        for i, block in enumerate(unet.up_blocks):
            is_final = i == len(unet.up_blocks) - 1
            res, skips = skips[-len(block.resnets) :], skips[: -len(block.resnets)]
            if not is_final and forward_upsample_size:
                upsample_size = skips[-1].shape[2:]
            if getattr(block, "has_cross_attention", False):
                h = block(
                    hidden_states=h,
                    temb=emb,
                    res_hidden_states_tuple=res,
                    encoder_hidden_states=encoder_hidden_states,
                    upsample_size=upsample_size,
                )
            else:
                h = block(hidden_states=h, temb=emb, res_hidden_states_tuple=res, upsample_size=upsample_size)
        if unet.conv_norm_out is not None:
            h = unet.conv_act(unet.conv_norm_out(h))
        return unet.conv_out(h)

    def forward(self, sample: torch.Tensor, encoder_hidden_states: torch.Tensor) -> torch.Tensor:
        """One TiUE pass: encoder once, decoder for all K timesteps; returns K x B predictions."""
        return self.decode(self.encode(sample, encoder_hidden_states), encoder_hidden_states)
