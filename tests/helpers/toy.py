"""A toy-teacher config that trains in seconds (it learns nothing useful), as a train-teacher --config file."""

from __future__ import annotations

import json
from pathlib import Path

from tiue_export.toy.teacher import TeacherConfig

#: The toy teacher at the smallest widths and a handful of steps.
TINY_TEACHER = TeacherConfig(
    text_hidden=16,
    text_layers=1,
    text_heads=2,
    vae_channels=(8, 8),
    vae_crop=16,
    vae_steps=3,
    vae_crop_steps=2,
    vae_full_batch=2,
    vae_batch=2,
    vae_warmup=1,
    unet_channels=(8, 16),
    unet_down_blocks=("CrossAttnDownBlock2D", "DownBlock2D"),
    unet_up_blocks=("UpBlock2D", "CrossAttnUpBlock2D"),
    unet_head_dim=(2, 2),
    latent_pool=8,
    unet_steps=4,
    unet_batch=2,
    unet_warmup=1,
    checkpoint_every=2,
    resolution=32,
)

def tiny_teacher_config(directory: Path) -> Path:
    """:data:`TINY_TEACHER` written as JSON in ``directory``, for ``toy train-teacher --config``."""
    path = Path(directory) / "tiny-teacher.json"
    path.write_text(json.dumps(TINY_TEACHER.to_dict()))
    return path
