"""Stable Diffusion architectures written as code, for random-weight models of the exact shape.

Benchmarks and the full-size export check need SD 2.1-base's (or SD 1.5's) exact architecture,
and nothing can be downloaded: these configs are transcribed from the public model configs.
``width_div`` scales channel widths down (same blocks, heads and depth) for fast parity tests.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..schedule import SD21_SCHEDULER_CONFIG


@dataclass(frozen=True)
class Arch:
    name: str
    cross_attention_dim: int
    attention_head_dim: tuple[int, ...] | int
    use_linear_projection: bool
    text_hidden: int
    text_layers: int
    text_heads: int
    text_intermediate: int
    text_act: str
    sample_size: int  # latent side at the native resolution


ARCHS = {
    # SD 2.1-base: OpenCLIP ViT-H text tower (penultimate layer: 23 layers), linear projections.
    "sd21": Arch("sd21", 1024, (5, 10, 20, 20), True, 1024, 23, 16, 4096, "gelu", 64),
    # SD 1.5: CLIP ViT-L/14 text tower, conv projections, 8 heads everywhere.
    "sd15": Arch("sd15", 768, 8, False, 768, 12, 12, 3072, "quick_gelu", 64),
}


def unet_config(arch: str, width_div: int = 1) -> dict:
    a = ARCHS[arch]
    widths = tuple(c // width_div for c in (320, 640, 1280, 1280))
    if isinstance(a.attention_head_dim, tuple):
        heads = tuple(max(1, h // width_div) if width_div > 1 else h for h in a.attention_head_dim)
    else:
        heads = a.attention_head_dim
    return dict(
        sample_size=a.sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        block_out_channels=widths,
        layers_per_block=2,
        attention_head_dim=heads,
        cross_attention_dim=a.cross_attention_dim // width_div,
        use_linear_projection=a.use_linear_projection,
        norm_num_groups=32 if width_div == 1 else max(1, 32 // width_div),
        act_fn="silu",
        flip_sin_to_cos=True,
        freq_shift=0,
    )


def vae_config(width_div: int = 1) -> dict:
    return dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=tuple(c // width_div for c in (128, 256, 512, 512)),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32 if width_div == 1 else max(1, 32 // width_div),
        sample_size=512,
        scaling_factor=0.18215,
    )


def text_config(arch: str, vocab_size: int, width_div: int = 1, bos=0, eos=1, pad=1) -> dict:
    a = ARCHS[arch]
    return dict(
        vocab_size=vocab_size,
        hidden_size=a.text_hidden // width_div,
        intermediate_size=a.text_intermediate // width_div,
        num_hidden_layers=a.text_layers if width_div == 1 else 2,
        num_attention_heads=a.text_heads // width_div if width_div <= a.text_heads else 1,
        max_position_embeddings=77,
        hidden_act=a.text_act,
        bos_token_id=bos,
        eos_token_id=eos,
        pad_token_id=pad,
    )


def build_sd_pipeline(out_dir, arch: str = "sd21", width_div: int = 1, seed: int = 0, student: bool = True) -> Path:
    """Write a random-weight diffusers pipeline of SD's exact architecture (``width_div`` = 1)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from ..files import atomic_path
    from .random_tiny import write_model_index
    from .tokenizer_builder import tiny_clip_tokenizer

    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHS)}")
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        torch.manual_seed(seed)
        tok = tiny_clip_tokenizer(tmp / "tokenizer", model_max_length=77)
        vocab = 49408 if width_div == 1 else len(tok)
        cfg = text_config(arch, vocab, width_div, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)
        CLIPTextModel(CLIPTextConfig(**cfg)).eval().save_pretrained(tmp / "text_encoder")
        AutoencoderKL(**vae_config(width_div)).save_pretrained(tmp / "vae")
        UNet2DConditionModel(**unet_config(arch, width_div)).save_pretrained(tmp / "unet")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD21_SCHEDULER_CONFIG, indent=2))
        write_model_index(tmp)
        if student:
            prov = {"source": f"random {arch} architecture, width/{width_div}", "seed": seed}
            (tmp / "tiue.json").write_text(json.dumps({"k": 4, "kind": "tiue", "provenance": prov}, indent=2))
    return out_dir
