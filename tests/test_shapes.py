"""SD architectures written as code have the published parameter counts."""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from tiue_export.shapes import text_config, unet_config, vae_config


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch,unet_params,text_params", [("sd21", 865_910_724, 340_387_840), ("sd15", 859_520_964, 123_060_480)])
def test_full_size_parameter_counts(arch, unet_params, text_params):
    with torch.device("meta"):
        assert count(UNet2DConditionModel(**unet_config(arch))) == unet_params
        assert count(CLIPTextModel(CLIPTextConfig(**text_config(arch, 49408)))) == text_params
        assert count(AutoencoderKL(**vae_config())) == 83_653_863


def test_tiny_width_keeps_sd21_blocks(tmp_path):
    from tiue_export.pipeline import load_pipeline
    from tiue_export.shapes import build_sd_pipeline

    p = load_pipeline(build_sd_pipeline(tmp_path / "m", "sd21", width_div=16))
    assert tuple(p.unet.config.down_block_types) == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert p.unet.config.use_linear_projection and p.size_multiple == 64 and p.default_size == 512
    res = p.sample(["a cat"], [0], height=64, width=64)
    assert res.images.shape == (1, 64, 64, 3)
