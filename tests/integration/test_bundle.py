"""The typed bundle: the manifest is checked against its schema and against itself before any
work, by infer on every backend and by check; torch-free installs run bundles."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.bundles import tiny_bundle
from helpers.cli import run_cli

from tiue_export.bundle import Bundle, Manifest
from tiue_export.errors import ModelError

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    return tiny_bundle(tiny_models, tmp_path_factory)


def edited(bundle: Path, tmp_path: Path, edit) -> Path:
    out = tmp_path / "edited"
    shutil.copytree(bundle, out)
    data = json.loads((out / "manifest.json").read_text())
    edit(data)
    (out / "manifest.json").write_text(json.dumps(data))
    return out


def _set(path, value):
    def edit(d):
        node = d
        for key in path[:-1]:
            node = node[key]
        node[path[-1]] = value(node[path[-1]]) if callable(value) else value

    return edit


#: (edit, words the one-line error must contain)
EDITS = {
    "k": (_set(["sampler", "k"], lambda k: k + 1), "sampler k="),
    "timestep": (_set(["sampler", "timesteps"], lambda ts: [ts[0] - 1, *ts[1:]]), "prev_timesteps"),
    "timestep-and-prev": (lambda d: (d["sampler"]["timesteps"].__setitem__(0, d["sampler"]["timesteps"][0] - 10),
                                     d["sampler"]["prev_timesteps"].__setitem__(0, d["sampler"]["prev_timesteps"][0] - 10)), "the schedule and timesteps give"),
    "S": (_set(["sampler", "S"], lambda s: s * 1.001), "sampler S"),
    "E": (_set(["sampler", "E"], lambda e: [*e[:-1], e[-1] + 1e-3]), "sampler E["),
    "image-height": (_set(["image", "height"], lambda h: h * 2), "vae_decoder.images"),
    "graph-file": (lambda d: d["graphs"]["unet_decoder"].__setitem__("file", d["graphs"]["unet_decoder_fused"]["file"]), "unet_decoder: file"),
}


@pytest.mark.parametrize("what", sorted(EDITS))
def test_an_edited_manifest_is_refused_before_any_work(bundle, tmp_path, what):
    edit, words = EDITS[what]
    path = edited(bundle, tmp_path, edit)
    with pytest.raises(ModelError, match="re-export the bundle") as exc:
        Bundle.open(path)
    assert words in str(exc.value) and "\n" not in str(exc.value)


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino", "onnxruntime-int8", "tensorrt"])
@pytest.mark.parametrize("what", ["k", "S", "graph-file"])
def test_infer_refuses_an_edited_bundle_on_every_backend(bundle, tmp_path, capsys, backend, what):
    edit, words = EDITS[what]
    path = edited(bundle, tmp_path, edit)
    out = tmp_path / "out"
    code, _, err = run_cli(["infer", "--backend", backend, "--model", str(path), "--prompt", "a cat", "--out", str(out)], capsys)
    assert code == 2 and err.startswith("error: ") and words in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


@pytest.mark.parametrize("what", ["timestep", "E", "image-height"])
def test_check_refuses_an_edited_bundle(bundle, tmp_path, capsys, what):
    edit, words = EDITS[what]
    path = edited(bundle, tmp_path, edit)
    code, _, err = run_cli(["check", str(path), "--backends", "onnxruntime", "--image", str(tmp_path / "c.png")], capsys)
    assert code == 2 and words in err and len(err.strip().splitlines()) == 1


def test_manifest_round_trips_and_matches_its_schema(bundle):
    data = json.loads((bundle / "manifest.json").read_text())
    manifest = Bundle.open(bundle).manifest
    assert manifest.to_dict() == data
    assert Manifest.from_dict(manifest.to_dict()) == manifest
    assert manifest.noise["kind"] == "numpy-pcg64" and manifest.tokenizer.RULES["padding"]
    assert set(manifest.chains) == {"fused", "unfused"}


def test_an_older_schema_is_refused_with_what_to_do(bundle, tmp_path):
    path = edited(bundle, tmp_path, _set(["schema_version"], 1))
    with pytest.raises(ModelError, match="older than this tiue-export reads.*re-export"):
        Bundle.open(path)


def test_a_schema_violation_names_its_place(bundle, tmp_path):
    path = edited(bundle, tmp_path, _set(["noise", "kind"], "mersenne"))
    with pytest.raises(ModelError, match="noise/kind"):
        Bundle.open(path)


@pytest.mark.slow
def test_the_base_install_is_torch_free_and_runs_a_bundle(bundle, tmp_path):
    """``pip install .`` with no extras in a fresh venv: no torch, and infer + check run there."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    pip = subprocess.run([str(py), "-m", "pip", "install", "-q", str(ROOT)], capture_output=True, text=True, env=env, timeout=900)
    assert pip.returncode == 0, pip.stderr[-2000:]
    probe = subprocess.run([str(py), "-c", "import importlib.util as u; print(u.find_spec('torch') is None, u.find_spec('diffusers') is None)"],
                           capture_output=True, text=True, env=env)
    assert probe.stdout.split() == ["True", "True"]
    exe = venv / "bin" / "tiue-export"
    out = tmp_path / "img.png"
    run = subprocess.run([str(exe), "infer", "--backend", "onnxruntime", "--model", str(bundle), "--prompt", "a red square", "--out", str(out)],
                         capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr and out.is_file()
    check = subprocess.run([str(exe), "check", str(bundle), "--backends", "onnxruntime", "--image", str(tmp_path / "c.png")],
                           capture_output=True, text=True, env=env, timeout=600)
    assert check.returncode == 0, check.stderr
    assert "stored in the bundle" in check.stderr and "check passed: onnxruntime" in check.stdout
