"""Random-weight diffusers pipelines built in code, at two scales: nothing is downloaded.

- **tiny** (:func:`build_tiny_pipeline`, for tests): SD's component classes and block types
  (``sd21``: linear projections, as SD 2.x; ``sd15``: conv projections, as SD 1.x;
  ``two-level``: a non-SD layout) at tiny widths.
- **SD size** (:func:`build_sd_pipeline`, for benchmarks and the full-size export check): SD
  2.1-base's (or SD 1.5's) exact architecture, transcribed from the public model configs;
  ``width_div`` scales channel widths down (same blocks, heads and depth) for fast parity tests.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..files import atomic_path
from ..schedule import SD21_SCHEDULER_CONFIG

# -- tiny ---------------------------------------------------------------------------------------
TINY_CORPUS = [
    "a photo of a cat",
    "a red cube on a blue table",
    "an oil painting of a lighthouse at night",
    "a small green triangle on a white background",
    "a large yellow circle",
    "two dogs playing in the snow",
]

TINY_VARIANTS = ("sd21", "sd15", "two-level")


def _unet_config(variant: str) -> dict:
    if variant == "two-level":
        return dict(
            sample_size=8,
            block_out_channels=(16, 32),
            down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
            up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
            layers_per_block=1,
            attention_head_dim=4,
            norm_num_groups=8,
            use_linear_projection=True,
        )
    sd21 = variant == "sd21"
    return dict(
        sample_size=8,
        block_out_channels=(16, 16, 32, 32),
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        layers_per_block=2,
        attention_head_dim=(2, 2, 4, 4) if sd21 else 4,
        norm_num_groups=8,
        use_linear_projection=sd21,
    )


def build_tiny_pipeline(out_dir, variant: str = "sd21", seed: int = 0, student: bool = True) -> Path:
    """Write a tiny random diffusers pipeline directory (with ``tiue.json`` if ``student``)."""
    if variant not in TINY_VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose from {TINY_VARIANTS}")

    def text(tok) -> dict:
        return dict(
            vocab_size=len(tok),
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=16,
            hidden_act="gelu",
            bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id,
            pad_token_id=tok.pad_token_id,
        )

    vae = dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        block_out_channels=(16, 32),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=16,
    )
    unet = dict(in_channels=4, out_channels=4, cross_attention_dim=32, **_unet_config(variant))
    return _write_pipeline(out_dir, seed, 16, text, vae, unet, f"tiny random {variant}" if student else None)


# -- SD size ------------------------------------------------------------------------------------
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
    if arch not in ARCHS:
        raise ValueError(f"unknown architecture {arch!r}; choose from {sorted(ARCHS)}")

    def text(tok) -> dict:
        vocab = 49408 if width_div == 1 else len(tok)
        return text_config(arch, vocab, width_div, tok.bos_token_id, tok.eos_token_id, tok.pad_token_id)

    source = f"random {arch} architecture, width/{width_div}" if student else None
    return _write_pipeline(out_dir, seed, 77, text, vae_config(width_div), unet_config(arch, width_div), source)


# -- both ---------------------------------------------------------------------------------------
def write_model_index(root: Path) -> None:
    """The ``model_index.json`` of a Stable Diffusion pipeline directory."""
    index = {
        "_class_name": "StableDiffusionPipeline",
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "scheduler": ["diffusers", "DDIMScheduler"],
    }
    (root / "model_index.json").write_text(json.dumps(index, indent=2))


def _write_pipeline(out_dir, seed: int, max_length: int, text: Callable[[object], dict], vae: dict, unet: dict, source: str | None) -> Path:
    """A pipeline directory, written atomically: the tiny CLIP tokenizer, then (in this order, from
    ``seed``) the text encoder of ``text(tokenizer)``'s config, the VAE and the UNet; SD 2.1's
    scheduler; and, for a student (``source`` given), a ``tiue.json`` naming its source."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer_builder import tiny_clip_tokenizer

    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        torch.manual_seed(seed)
        tok = tiny_clip_tokenizer(tmp / "tokenizer", model_max_length=max_length)
        CLIPTextModel(CLIPTextConfig(**text(tok))).eval().save_pretrained(tmp / "text_encoder")
        AutoencoderKL(**vae).save_pretrained(tmp / "vae")
        UNet2DConditionModel(**unet).save_pretrained(tmp / "unet")
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD21_SCHEDULER_CONFIG, indent=2))
        write_model_index(tmp)
        if source is not None:
            (tmp / "tiue.json").write_text(json.dumps({"k": 4, "kind": "tiue", "provenance": {"source": source, "seed": seed}}, indent=2))
    return out_dir
