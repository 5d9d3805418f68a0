"""The TiUE split: decoder at the encoder's timestep equals a plain UNet forward."""

import pytest
import torch
from diffusers import UNet2DConditionModel

from tiue_export.errors import ModelError
from tiue_export.reference.student import TiUEStudent, skip_count

TIMESTEPS = (751, 501, 251, 1)


@pytest.fixture(scope="module", params=["sd21", "sd15", "two-level"])
def unet(request, tiny_models):
    return UNet2DConditionModel.from_pretrained(tiny_models(request.param) / "unet").eval()


def inputs(unet, b=2, h=8, w=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, unet.config.in_channels, h, w, generator=g)
    ehs = torch.randn(b, 7, unet.config.cross_attention_dim, generator=g)
    return x, ehs


@torch.no_grad()
@pytest.mark.parametrize("hw", [(8, 8), (12, 20)])  # 12x20 is not a multiple of the up factor
def test_decoder_at_encoder_timestep_equals_unet(unet, hw):
    x, ehs = inputs(unet, h=hw[0], w=hw[1])
    student = TiUEStudent(unet, TIMESTEPS)
    ref = unet(x, 751, encoder_hidden_states=ehs).sample
    eps = student(x, ehs)
    assert eps.shape == (4 * 2, *ref.shape[1:])
    # Rows 0..B-1 belong to the first timestep (751 = the encoder's): a full UNet forward.
    torch.testing.assert_close(eps[:2], ref, atol=1e-5, rtol=1e-5)
    # K=1 at the encoder timestep is exactly the UNet.
    one = TiUEStudent(unet, (751,))
    torch.testing.assert_close(one(x, ehs), ref, atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_rows_are_timestep_major(unet):
    """Row block k of the K x B batch is the decoder at timesteps[k], from shared features."""
    x, ehs = inputs(unet, b=3)
    student = TiUEStudent(unet, TIMESTEPS)
    feats = student.encode(x, ehs)
    eps = student.decode(feats, ehs)
    for k, t in enumerate(TIMESTEPS):
        alone = student.decode(feats, ehs, timesteps=torch.tensor([t]))
        torch.testing.assert_close(eps[k * 3 : (k + 1) * 3], alone, atol=1e-5, rtol=1e-5)
    # and a batch of one sample matches its row in the batch of three
    single = student.decode([f[1:2] for f in feats], ehs[1:2])
    torch.testing.assert_close(single, eps[1::3], atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_shared_encoder_differs_from_per_timestep_unet(unet):
    """At a later timestep the decoder reuses the 751 encoder, so it is not the plain UNet."""
    x, ehs = inputs(unet)
    student = TiUEStudent(unet, TIMESTEPS)
    eps = student(x, ehs)
    plain = unet(x, 501, encoder_hidden_states=ehs).sample
    assert not torch.allclose(eps[2:4], plain, atol=1e-4)


def test_feature_names_match_encoder_outputs(unet):
    student = TiUEStudent(unet, TIMESTEPS)
    x, ehs = inputs(unet, b=1)
    with torch.no_grad():
        feats = student.encode(x, ehs)
    assert len(feats) == len(student.feature_names()) == 1 + skip_count(unet)


def test_unsupported_unet_is_refused():
    unet = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        layers_per_block=1,
        cross_attention_dim=8,
        attention_head_dim=2,
        norm_num_groups=4,
        class_embed_type="timestep",
    )
    with pytest.raises(ModelError, match="class_embed_type=timestep"):
        TiUEStudent(unet, TIMESTEPS)
