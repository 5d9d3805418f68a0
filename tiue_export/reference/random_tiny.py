"""Tiny random diffusers pipelines built in code, for tests.

Same component classes and block types as Stable Diffusion (``sd21``: linear projections, as
SD 2.x; ``sd15``: conv projections, as SD 1.x; ``two-level``: a non-SD layout), tiny widths.
"""

from __future__ import annotations

import json
from pathlib import Path

from ..files import atomic_path
from ..schedule import SD21_SCHEDULER_CONFIG

TINY_CORPUS = [
    "a photo of a cat",
    "a red cube on a blue table",
    "an oil painting of a lighthouse at night",
    "a small green triangle on a white background",
    "a large yellow circle",
    "two dogs playing in the snow",
]

VARIANTS = ("sd21", "sd15", "two-level")


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


def build_tiny_pipeline(out_dir, variant: str = "sd21", seed: int = 0, student: bool = True) -> Path:
    """Write a tiny random diffusers pipeline directory (with ``tiue.json`` if ``student``)."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from .tokenizer_builder import tiny_clip_tokenizer

    if variant not in VARIANTS:
        raise ValueError(f"unknown tiny variant {variant!r}; choose from {VARIANTS}")
    out_dir = Path(out_dir)
    with atomic_path(out_dir) as tmp:
        torch.manual_seed(seed)
        tok = tiny_clip_tokenizer(tmp / "tokenizer", model_max_length=16)
        text_cfg = CLIPTextConfig(
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
        CLIPTextModel(text_cfg).eval().save_pretrained(tmp / "text_encoder")
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=("DownEncoderBlock2D",) * 2,
            up_block_types=("UpDecoderBlock2D",) * 2,
            block_out_channels=(16, 32),
            layers_per_block=1,
            latent_channels=4,
            norm_num_groups=8,
            sample_size=16,
        ).save_pretrained(tmp / "vae")
        UNet2DConditionModel(in_channels=4, out_channels=4, cross_attention_dim=32, **_unet_config(variant)).save_pretrained(
            tmp / "unet"
        )
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD21_SCHEDULER_CONFIG, indent=2))
        write_model_index(tmp)
        if student:
            (tmp / "tiue.json").write_text(
                json.dumps({"k": 4, "kind": "tiue", "provenance": {"source": f"tiny random {variant}", "seed": seed}}, indent=2)
            )
    return out_dir
