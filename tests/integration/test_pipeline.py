"""The PyTorch reference pipeline: loading, samplers, determinism, bad model directories."""

import json
import logging
import shutil

import numpy as np
import pytest
import torch

from tiue_export.errors import InputError, ModelError
from tiue_export.reference.pipeline import load_pipeline
from tiue_export.sampling import SamplerChoice as Sampler


@pytest.fixture(scope="module")
def pipe(tiny_sd21):
    return load_pipeline(tiny_sd21)


def test_one_pass_is_deterministic_and_per_image(pipe):
    a = pipe.sample(["a red cube", "a cat"], [3, 4])
    b = pipe.sample(["a red cube", "a cat"], [3, 4])
    np.testing.assert_array_equal(a.images, b.images)
    assert a.images.dtype == np.uint8 and a.images.shape == (2, 16, 16, 3)
    # An image depends only on its own prompt and seed, not on the batch it is in.
    alone = pipe.sample(["a cat"], [4])
    np.testing.assert_allclose(alone.latents[0], a.latents[1], atol=1e-5)
    other = pipe.sample(["a cat"], [5])
    assert not np.allclose(other.latents, alone.latents)


def test_one_pass_latents_equal_authors_sequential_procedure(pipe):
    """The authors' script: K scheduler.step calls over the K chunks of the batched decoder."""
    res = pipe.sample(["a red cube", "a cat"], [0, 1])
    noise = torch.from_numpy(np.stack([np.random.default_rng(s).standard_normal((4, 8, 8), dtype=np.float32) for s in (0, 1)]))
    sched = pipe.scheduler
    sched.set_timesteps(4)
    z = noise
    eps = torch.from_numpy(res.eps)
    for i, t in enumerate(sched.timesteps):
        z = sched.step(eps[i * 2 : (i + 1) * 2], t, z).prev_sample
    np.testing.assert_allclose(res.latents, z.numpy(), atol=2e-5, rtol=1e-5)


def test_loop_with_k1_equals_one_pass_with_k1(tiny_sd21):
    p1 = load_pipeline(tiny_sd21, k=1)
    a = p1.sample(["a cat"], [0], sampler="one-pass")
    b = p1.sample(["a cat"], [0], sampler="loop")
    np.testing.assert_allclose(a.latents, b.latents, atol=1e-5)


def test_loop_and_ddim_samplers_run(pipe):
    loop = pipe.sample(["a cat"], [0], sampler="loop")
    one = pipe.sample(["a cat"], [0])
    assert not np.allclose(loop.latents, one.latents)  # the loop reruns the encoder each step
    ddim = pipe.sample(["a cat"], [0], sampler="ddim:3", guidance=4.5)
    assert ddim.images.shape == (1, 16, 16, 3)
    assert set(ddim.timings) == {"text_encoder", "unet", "vae_decoder"}


def test_sampler_parse():
    assert Sampler.parse("ddim:50") == Sampler("ddim", 50)
    assert str(Sampler.parse("one-pass")) == "one-pass"
    for bad in ("ddim:0", "ddim:x", "euler"):
        with pytest.raises(InputError, match="unknown sampler"):
            Sampler.parse(bad)


def test_authors_format_directory_without_tiue_json(tiny_sd21, tmp_path):
    plain = tmp_path / "plain"
    shutil.copytree(tiny_sd21, plain)
    (plain / "tiue.json").unlink()
    p = load_pipeline(plain)
    assert p.schedule.k == 4 and p.schedule.timesteps == (751, 501, 251, 1)
    assert load_pipeline(plain, k=2).schedule.timesteps == (501, 1)


def test_prompt_longer_than_tokenizer_warns_and_truncates(pipe, caplog):
    long = " ".join(["red cube"] * 40)
    logger = logging.getLogger("tiue_export")  # the CLI stops propagation: listen on it directly
    logger.addHandler(caplog.handler)
    try:
        with caplog.at_level(logging.WARNING, logger="tiue_export"):
            ids = pipe.tokenize([long])
    finally:
        logger.removeHandler(caplog.handler)
    assert ids.shape == (1, pipe.tokenizer.model_max_length)
    assert "truncated" in caplog.text


@pytest.mark.parametrize("h,w,msg", [(15, 16, "height 15"), (16, 0, "width 0"), (16, 20, "width 20")])
def test_impossible_size(pipe, h, w, msg):
    with pytest.raises(InputError, match=f"{msg} is not possible for this model: use a positive multiple of 16"):
        pipe.latent_shape(h, w)


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_missing_directory(tmp_path):
    with pytest.raises(ModelError, match="no such model directory"):
        load_pipeline(tmp_path / "nope")


def test_not_a_diffusers_directory(tmp_path):
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ModelError, match="is not a diffusers pipeline directory"):
        load_pipeline(tmp_path)


def test_missing_component(tiny_sd21, tmp_path):
    d = _copy(tiny_sd21, tmp_path / "m")
    shutil.rmtree(d / "vae")
    with pytest.raises(ModelError, match="missing component 'vae'"):
        load_pipeline(d)


def test_corrupt_component(tiny_sd21, tmp_path):
    d = _copy(tiny_sd21, tmp_path / "m")
    weights = next((d / "unet").glob("*.safetensors"))
    weights.write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="cannot load 'unet'"):
        load_pipeline(d)


def test_tiue_json_contradicting_scheduler(tiny_sd21, tmp_path):
    d = _copy(tiny_sd21, tmp_path / "m")
    (d / "tiue.json").write_text(json.dumps({"k": 4, "timesteps": [999, 749, 499, 249]}))
    with pytest.raises(ModelError, match=r"lists timesteps \[999, 749, 499, 249\] but the scheduler gives \[751, 501, 251, 1\]"):
        load_pipeline(d)


def test_invalid_tiue_json(tiny_sd21, tmp_path):
    d = _copy(tiny_sd21, tmp_path / "m")
    (d / "tiue.json").write_text("{not json")
    with pytest.raises(ModelError, match="not a valid tiue.json"):
        load_pipeline(d)
    (d / "tiue.json").write_text(json.dumps({"k": 3, "timesteps": [751, 501]}))
    with pytest.raises(ModelError, match="k=3 but 2 timesteps are listed"):
        load_pipeline(d)


def test_non_epsilon_scheduler_is_refused(tiny_sd21, tmp_path):
    d = _copy(tiny_sd21, tmp_path / "m")
    cfg = json.loads((d / "scheduler" / "scheduler_config.json").read_text())
    cfg["prediction_type"] = "v_prediction"
    (d / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    with pytest.raises(ModelError, match="only epsilon is supported"):
        load_pipeline(d)


def test_torch_noise_source_matches_authors_draw(pipe):
    res = pipe.sample(["a cat"], [42], sampler="ddim:1", guidance=1.0, noise_source="torch")
    expected = torch.randn((1, 4, 8, 8), generator=torch.Generator().manual_seed(42))
    again = pipe.sample(["a cat"], [0], sampler="ddim:1", guidance=1.0, noise=expected.numpy())
    np.testing.assert_array_equal(res.latents, again.latents)
    with pytest.raises(InputError, match="unknown noise source"):
        pipe.sample(["a cat"], [0], noise_source="cuda")


def test_default_guidance_from_tiue_json(tiny_sd21, tmp_path):
    d = _copy(tiny_sd21, tmp_path / "m")
    assert load_pipeline(d).default_guidance == 7.5
    (d / "tiue.json").write_text(json.dumps({"k": 4, "kind": "teacher", "provenance": {"guidance": 5.0}}))
    p = load_pipeline(d)
    assert p.default_guidance == 5.0 and p.default_sampler == "ddim:50"
