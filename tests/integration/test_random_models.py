"""SD architectures written as code have the published parameter counts."""

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

from tiue_export.reference.random_models import text_config, unet_config, vae_config


def count(module):
    return sum(p.numel() for p in module.parameters())


@pytest.mark.parametrize("arch,unet_params,text_params", [("sd21", 865_910_724, 340_387_840), ("sd15", 859_520_964, 123_060_480)])
def test_full_size_parameter_counts(arch, unet_params, text_params):
    with torch.device("meta"):
        assert count(UNet2DConditionModel(**unet_config(arch))) == unet_params
        assert count(CLIPTextModel(CLIPTextConfig(**text_config(arch, 49408)))) == text_params
        assert count(AutoencoderKL(**vae_config())) == 83_653_863


def test_tiny_width_keeps_sd21_blocks(tmp_path):
    from tiue_export.reference.pipeline import load_pipeline
    from tiue_export.reference.random_models import build_sd_pipeline

    p = load_pipeline(build_sd_pipeline(tmp_path / "m", "sd21", width_div=16))
    assert tuple(p.unet.config.down_block_types) == ("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",)
    assert p.unet.config.use_linear_projection and p.size_multiple == 64 and p.default_size == 512
    res = p.sample(["a cat"], [0], height=64, width=64)
    assert res.images.shape == (1, 64, 64, 3)


@pytest.mark.slow
def test_sd21_shaped_tiny_width_bundle_parity(tmp_path):
    """SD 2.1-base's exact block layout (width / 16) exports, validates and runs on ONNX Runtime
    with images equal to PyTorch's (>= 40 dB)."""
    import json

    import numpy as np

    from tiue_export.build.export import ExportConfig, export_bundle
    from tiue_export.compare import psnr
    from tiue_export.reference.pipeline import load_pipeline
    from tiue_export.reference.random_models import build_sd_pipeline
    from tiue_export.runtime import Pipeline

    model = build_sd_pipeline(tmp_path / "m", "sd21", width_div=16)
    bundle = export_bundle(ExportConfig(model=model, out=tmp_path / "b", height=64, width=64)).path
    validation = json.loads((bundle / "validation.json").read_text())
    assert validation["ok"] is True
    prompts = ["a photo of a cat", "a red cube on a blue table"]
    ref = load_pipeline(model).sample(prompts, [3, 4], height=64, width=64)
    with Pipeline.load(bundle) as pipe:
        out = pipe(prompts, seeds=[3, 4])
    np.testing.assert_allclose(out.latents, ref.latents, atol=1e-4)
    assert psnr(ref.images, out.images, 255.0) >= 40.0
