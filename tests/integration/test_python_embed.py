"""examples/python_embed.py: a torch-free program that embeds a bundle and writes PNGs."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.bundles import tiny_bundle

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "python_embed.py"

# Runs the example with torch made unimportable: it must need only the runtime's requirements.
NO_TORCH = "import sys, runpy; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; runpy.run_path(sys.argv[0], run_name='__main__')"


def run_example(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", NO_TORCH, str(EXAMPLE), *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory) -> Path:
    return tiny_bundle(tiny_models, tmp_path_factory, "sd21")


@pytest.mark.slow
def test_writes_the_runtime_images_without_torch(bundle, tmp_path):
    from PIL import Image

    from tiue_export.runtime import Pipeline

    proc = run_example(bundle, "a photo of a cat", "a large yellow circle", "--seed", "5", "--out", tmp_path / "img.png", "--save-inputs", tmp_path / "in")
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "CPUExecutionProvider" in proc.stdout
    with Pipeline.load(bundle) as pipe:
        ref = pipe(["a photo of a cat", "a large yellow circle"], seeds=[5, 6])
    for i in range(2):
        img = Image.open(tmp_path / f"img_{i}.png")
        assert img.text["seed"] == str(5 + i)
        assert np.array_equal(np.asarray(img), ref.images[i])
    assert np.array_equal(np.load(tmp_path / "in" / "latents.npy"), ref.latents)
    ids, noise = np.load(tmp_path / "in" / "ids.npy"), np.load(tmp_path / "in" / "noise.npy")
    assert ids.dtype == np.int64 and ids.shape == (2, 16)
    assert noise.dtype == np.float32 and noise.shape == (2, 4, 8, 8)
    assert np.load(tmp_path / "in" / "images.npy").shape == (2, 3, 16, 16)


def test_error_not_a_bundle(tmp_path):
    proc = run_example(tmp_path / "missing", "a cat", "--out", tmp_path / "x.png")
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [proc.stderr.strip()]
    assert proc.stderr.startswith("python_embed: error: ") and "missing" in proc.stderr
    assert not (tmp_path / "x.png").exists()


def test_error_out_not_png(tmp_path):
    proc = run_example(tmp_path, "a cat", "--out", tmp_path / "x.jpg")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"python_embed: error: --out {tmp_path / 'x.jpg'}: give a .png path"
