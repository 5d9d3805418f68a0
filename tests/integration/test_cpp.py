"""The C++ runtime (engines/, tiue_infer) against the Python runtime on a tiny bundle.

scripts/build_cpp.sh fetches ONNX Runtime's headers from the npm registry, pairs them with the
onnxruntime wheel's library and builds with CMake, cached in ``TIUE_CPP_CACHE`` (default
``~/.cache/tiue-export/cpp``). Where a prerequisite cannot be had (no cmake, no nlohmann-json,
no registry) the script exits 3 and these tests skip with its reason.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.bundles import REFUSED_MANIFESTS, nested_64, tiny_bundle, tiny_vae_bundle

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples"))
import python_embed  # noqa: E402

PROMPTS = ["a photo of a cat", "a red cube on a blue table"]


@pytest.fixture(scope="module")
def tiue_infer() -> Path:
    """The built example (skips with the build script's reason when it cannot be built here)."""
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_cpp.sh")], capture_output=True, text=True, timeout=1200)
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, f"build_cpp.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    exe = Path(proc.stdout.strip().splitlines()[-1])
    assert exe.is_file()
    return exe


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory) -> Path:
    return tiny_bundle(tiny_models, tmp_path_factory, "sd21")


@pytest.fixture(scope="module")
def python_run(bundle, tmp_path_factory):
    """ids, z_T and Python's z0/images/PNGs from examples/python_embed.py --save-inputs."""
    out = tmp_path_factory.mktemp("python-run")
    assert python_embed.main([str(bundle), *PROMPTS, "--seed", "3", "--out", str(out / "py.png"), "--save-inputs", str(out)]) == 0
    return out


def run(exe: Path, *args) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), *map(str, args)], capture_output=True, text=True, timeout=300)


def read_ppm(path: Path) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.open(path).convert("RGB"))


def test_version(tiue_infer):
    import onnxruntime

    proc = run(tiue_infer, "--version")
    assert proc.returncode == 0
    assert f"onnxruntime {onnxruntime.__version__}" in proc.stdout


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_matches_python_runtime(tiue_infer, bundle, python_run, tmp_path, fused):
    """Same ids and z_T: z0 and images as the Python runtime's (the same ORT library: bit-equal
    in practice; the bound leaves room for another ORT build's kernels)."""
    args = ["--bundle", bundle, "--ids", python_run / "ids.npy", "--noise", python_run / "noise.npy"]
    args += ["--out", tmp_path / "cpp.ppm", "--latents", tmp_path / "z0.npy", "--images", tmp_path / "images.npy"]
    proc = run(tiue_infer, *args, *([] if fused else ["--unfused"]))
    assert proc.returncode == 0, proc.stderr
    assert "2 image(s) 16x16 on onnxruntime:CPUExecutionProvider" in proc.stdout
    z0, ref = np.load(tmp_path / "z0.npy"), np.load(python_run / "latents.npy")
    assert z0.dtype == np.float32 and z0.shape == ref.shape == (2, 4, 8, 8)
    assert np.abs(z0 - ref).max() < 1e-4
    assert np.abs(np.load(tmp_path / "images.npy") - np.load(python_run / "images.npy")).max() < 1e-4
    for i in range(2):
        ours, theirs = read_ppm(tmp_path / f"cpp_{i}.ppm"), read_ppm(python_run / f"py_{i}.png")
        assert ours.shape == theirs.shape == (16, 16, 3)
        assert np.abs(ours.astype(int) - theirs.astype(int)).max() <= 1


def test_text_ids_and_single_image(tiue_infer, bundle, python_run, tmp_path):
    """Ids as text (one prompt per line); one prompt writes exactly --out."""
    ids = np.load(python_run / "ids.npy")[:1]
    (tmp_path / "ids.txt").write_text(" ".join(map(str, ids[0])) + "\n")
    np.save(tmp_path / "noise.npy", np.load(python_run / "noise.npy")[:1])
    proc = run(tiue_infer, "--bundle", bundle, "--ids", tmp_path / "ids.txt", "--noise", tmp_path / "noise.npy", "--out", tmp_path / "one.ppm",
               "--latents", tmp_path / "z0.npy", "--verify", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert read_ppm(tmp_path / "one.ppm").shape == (16, 16, 3)
    assert np.abs(np.load(tmp_path / "z0.npy") - np.load(python_run / "latents.npy")[:1]).max() < 1e-4


# -- errors: one line, the right exit code, nothing written -------------------------------------
@pytest.fixture
def inputs(python_run):
    return ["--ids", python_run / "ids.npy", "--noise", python_run / "noise.npy"]


def expect_error(proc, code: int, text: str, out: Path | None = None) -> None:
    assert proc.returncode == code, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("tiue_infer: error: "), proc.stderr
    assert text in lines[0]
    if out is not None:
        assert not out.exists() and not list(out.parent.glob(f".{out.name}*"))


def test_error_not_a_bundle(tiue_infer, tmp_path, inputs):
    expect_error(run(tiue_infer, "--bundle", tmp_path, *inputs, "--out", tmp_path / "x.ppm"), 2, "has no manifest.json: not a tiue-export bundle", tmp_path / "x.ppm")
    expect_error(run(tiue_infer, "--bundle", tmp_path / "nope", *inputs, "--out", tmp_path / "x.ppm"), 2, "nope does not exist")


def test_error_other_schema_and_broken_manifest(tiue_infer, bundle, tmp_path, inputs):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    (copy / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 99}))
    expect_error(run(tiue_infer, "--bundle", copy, *inputs, "--out", tmp_path / "x.ppm"), 2,
                 "schema_version 99 is newer than this runtime reads (2): rebuild tiue_engines")
    (copy / "manifest.json").write_text(json.dumps({**manifest, "schema_version": 1}))
    expect_error(run(tiue_infer, "--bundle", copy, *inputs, "--out", tmp_path / "x.ppm"), 2,
                 "schema_version 1 is older than this runtime reads (2): re-export the bundle")
    del manifest["sampler"]["S"]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    expect_error(run(tiue_infer, "--bundle", copy, *inputs, "--out", tmp_path / "x.ppm"), 2, "bad or incomplete 'sampler'")
    (copy / "manifest.json").write_text("{not json")
    expect_error(run(tiue_infer, "--bundle", copy, *inputs, "--out", tmp_path / "x.ppm"), 2, "not valid JSON")


def _edit_k(m):
    k = m["sampler"]["k"]
    m["sampler"]["k"] = k + 1
    return f"sampler k={k + 1} but {k} timesteps, {k} prev_timesteps and {k} E coefficients"


def _edit_timestep(m):
    m["sampler"]["timesteps"][-1] += 1
    return f"prev_timesteps {m['sampler']['prev_timesteps']} do not follow from timesteps {m['sampler']['timesteps']}"


def _edit_timestep_range(m):
    n = m["sampler"]["schedule"]["num_train_timesteps"]
    m["sampler"]["timesteps"][0] = n
    return f"timestep {n} is outside 0..{n - 1}"


def _edit_S(m):
    m["sampler"]["S"] *= 1 + 1e-6
    return f"sampler S = {m['sampler']['S']!r}, but the schedule and timesteps give "


def _edit_E(m):
    m["sampler"]["E"][1] *= 1.001
    return f"sampler E[1] = {m['sampler']['E'][1]!r}, but the schedule and timesteps give "


def _edit_image_height(m):
    H, W = m["image"]["height"], m["image"]["width"]
    m["image"]["height"] = 2 * H
    return f"vae_decoder.images has shape [B, 3, {H}, {W}] but the manifest's sizes give [B, 3, {2 * H}, {W}]"


def _edit_graph_file(m):
    m["graphs"]["unet_decoder"]["file"] = other = m["graphs"]["unet_encoder"]["file"]
    return f"unet_decoder: file {other} has another sha256 than the graph records"


@pytest.mark.parametrize("edit", [_edit_k, _edit_timestep, _edit_timestep_range, _edit_S, _edit_E, _edit_image_height, _edit_graph_file],
                         ids=lambda f: f.__name__.removeprefix("_edit_"))
def test_error_edited_manifest(tiue_infer, bundle, tmp_path, inputs, edit):
    """A manifest that contradicts itself (the checks of bundle.directory.check_semantics) is refused in
    one line, exit 2, before any graph is loaded: the copy's graphs are not even ONNX."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("*.onnx"))
    for graph in bundle.glob("*.onnx"):
        (copy / graph.name).write_bytes(b"not an onnx graph")
    manifest = json.loads((bundle / "manifest.json").read_text())
    problem = edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    out = tmp_path / "x.ppm"
    proc = run(tiue_infer, "--bundle", copy, *inputs, "--out", out, "--latents", tmp_path / "z0.npy", "--images", tmp_path / "images.npy")
    expect_error(proc, 2, f"{copy / 'manifest.json'}: {problem}", out)
    assert proc.stderr.rstrip().endswith(": re-export the bundle")
    assert not (tmp_path / "z0.npy").exists() and not (tmp_path / "images.npy").exists()


def test_error_verify_altered_file(tiue_infer, bundle, tmp_path, inputs):
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    with open(copy / "vae_decoder.onnx", "ab") as f:
        f.write(b"\0")
    expect_error(run(tiue_infer, "--bundle", copy, *inputs, "--out", tmp_path / "x.ppm", "--verify"), 2, "vae_decoder.onnx was altered (sha256 mismatch)")
    (copy / "vae_decoder.onnx").unlink()
    expect_error(run(tiue_infer, "--bundle", copy, *inputs, "--out", tmp_path / "x.ppm"), 2, "vae_decoder.onnx is missing: re-export the bundle")


def test_error_bad_inputs(tiue_infer, bundle, python_run, tmp_path):
    ids, noise = python_run / "ids.npy", python_run / "noise.npy"
    out = tmp_path / "x.ppm"
    np.save(tmp_path / "noise1.npy", np.load(noise)[:1])
    expect_error(run(tiue_infer, "--bundle", bundle, "--ids", ids, "--noise", tmp_path / "noise1.npy", "--out", out), 2,
                 "noise has shape [1, 4, 8, 8], this bundle needs [2, 4, 8, 8] for 2 prompt(s)", out)
    np.save(tmp_path / "short.npy", np.load(ids)[:, :5])
    expect_error(run(tiue_infer, "--bundle", bundle, "--ids", tmp_path / "short.npy", "--noise", noise, "--out", out), 2,
                 "token ids have shape [2, 5], this bundle needs [2, 16]", out)
    big = np.load(ids).copy()
    big[0, 1] = 10**6
    np.save(tmp_path / "big.npy", big)
    expect_error(run(tiue_infer, "--bundle", bundle, "--ids", tmp_path / "big.npy", "--noise", noise, "--out", out), 2,
                 "token id 1000000 is outside this bundle's vocabulary", out)
    np.save(tmp_path / "f16ids.npy", np.zeros((2, 16), dtype=np.float16))
    expect_error(run(tiue_infer, "--bundle", bundle, "--ids", tmp_path / "f16ids.npy", "--noise", noise, "--out", out), 2, "unsupported .npy dtype '<f2'")
    (tmp_path / "bad.npy").write_bytes(b"hello")
    expect_error(run(tiue_infer, "--bundle", bundle, "--ids", ids, "--noise", tmp_path / "bad.npy", "--out", out), 2, "not a .npy file (bad magic)")
    (tmp_path / "ids.txt").write_text("1 2 3\n4 5\n")
    expect_error(run(tiue_infer, "--bundle", bundle, "--ids", tmp_path / "ids.txt", "--noise", noise, "--out", out), 2, "line 2 has 2 ids, line 1 has 3")
    expect_error(run(tiue_infer, "--bundle", bundle, "--ids", tmp_path / "missing.npy", "--noise", noise, "--out", out), 2, "cannot open (no such file?)")


def test_error_usage(tiue_infer, bundle, inputs, tmp_path):
    expect_error(run(tiue_infer, "--bundle", bundle, *inputs), 2, "nothing to write: give --out, --latents or --images")
    expect_error(run(tiue_infer, "--bundle", bundle, *inputs, "--out", tmp_path / "no" / "x.ppm"), 2, "its directory does not exist")
    expect_error(run(tiue_infer, "--ids", "a.npy"), 2, "missing --bundle")
    expect_error(run(tiue_infer, "--frobnicate"), 2, "unknown option '--frobnicate'")
    expect_error(run(tiue_infer, "--bundle", bundle, *inputs, "--out", tmp_path / "x.ppm", "--threads", "two"), 2, "--threads needs an integer, got 'two'")
    expect_error(run(tiue_infer, "--bundle", bundle, *inputs, "--out", tmp_path / "x.ppm", "--backend", "tensorrt"), 2,
                 "built without TensorRT: rebuild with -DTIUE_WITH_TENSORRT=ON")
    expect_error(run(tiue_infer, "--bundle", bundle, *inputs, "--out", tmp_path / "x.ppm", "--provider", "npu"), 2, "unknown ONNX Runtime provider 'npu'")
    assert run(tiue_infer, "--help").stdout.startswith("usage: tiue_infer")


def test_build_script_reports_missing_prerequisite(tmp_path):
    """No npm and an empty cache: exit 3 with the reason the tests skip on."""
    env = {k: v for k, v in os.environ.items() if k != "ONNXRUNTIME_ROOT"}
    env.update(TIUE_CPP_CACHE=str(tmp_path / "cache"), PATH=str(tmp_path / "bin"))
    (tmp_path / "bin").mkdir()
    for tool in ("cmake", "g++", "python3", "bash", "dirname", "mkdir", "cat", "tail", "rm"):
        found = shutil.which(tool)
        if found:
            (tmp_path / "bin" / tool).symlink_to(found)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "build_cpp.sh")], capture_output=True, text=True, env=env, timeout=60)
    if not shutil.which("cmake") or not Path("/usr/include/nlohmann/json.hpp").exists():
        assert proc.returncode == 3
        return
    assert proc.returncode == 3, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == "build_cpp: cannot build here: npm is not installed (needed to fetch the ONNX Runtime headers)"


# -- prompts in C++, PNG out, and bad input (one line, the right exit code, nothing written) -----
def test_prompt_to_png_matches_python(tiue_infer, bundle, python_run, tmp_path):
    """tiue_infer BUNDLE --prompt --seed --out x.png: the bundle's tokenizer and numpy's noise in
    C++, a real PNG, the pixels python_embed.py made from the same prompts and seeds."""
    from PIL import Image

    proc = run(tiue_infer, bundle, "--prompt", PROMPTS[0], "--seed", "3", "--out", tmp_path / "cat.png", "--unfused")
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "cat.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(tmp_path / "cat.png") as im:
        assert im.text["prompt"] == PROMPTS[0] and im.text["seed"] == "3"
        assert np.array_equal(np.asarray(im.convert("RGB")), read_ppm(python_run / "py_0.png"))


def test_tiny_vae_matches_python_runtime(tiue_infer, tiny_models, tmp_path_factory, tmp_path):
    """--vae tiny: the bundle's tiny vae_decoder in place of the full one, as
    tiue_export.runtime.Pipeline(vae="tiny") runs it: the same z0, VAE output and PNG pixels and
    text; a bundle without the variant is refused in one line."""
    from PIL import Image

    from tiue_export.runtime import Pipeline

    tiny = tiny_vae_bundle(tiny_models, tmp_path_factory)
    with Pipeline.load(tiny, providers=["CPUExecutionProvider"], vae="tiny") as pipe:
        result = pipe(PROMPTS, seeds=[3, 3])  # tiue_infer: each prompt from --seed
        images = pipe.runner("vae_decoder").infer({"latents": result.latents})["images"]
    with Pipeline.load(tiny, providers=["CPUExecutionProvider"]) as pipe:
        full = pipe(PROMPTS, seeds=[3, 3])
    proc = run(tiue_infer, tiny, "--prompt", PROMPTS[0], "--prompt", PROMPTS[1], "--seed", "3", "--vae", "tiny",
               "--out", tmp_path / "t.png", "--latents", tmp_path / "z0.npy", "--images", tmp_path / "images.npy")
    assert proc.returncode == 0, proc.stderr
    assert np.abs(np.load(tmp_path / "z0.npy") - result.latents).max() < 1e-4
    assert np.abs(np.load(tmp_path / "images.npy") - images).max() < 1e-4
    for i in range(2):
        with Image.open(tmp_path / f"t_{i}.png") as im:
            assert im.text["vae"] == "tiny"
            assert np.abs(np.asarray(im.convert("RGB")).astype(int) - result.images[i].astype(int)).max() <= 1
    assert not np.array_equal(result.images, full.images)  # the tiny decoder did decode
    proc = run(tiue_infer, tiny, "--prompt", PROMPTS[0], "--seed", "3", "--out", tmp_path / "f.png")
    with Image.open(tmp_path / "f.png") as im:
        assert "vae" not in im.text and np.abs(np.asarray(im.convert("RGB")).astype(int) - full.images[0].astype(int)).max() <= 1


def test_error_tiny_vae(tiue_infer, bundle, inputs, tmp_path):
    out = tmp_path / "x.png"
    expect_error(run(tiue_infer, "--bundle", bundle, *inputs, "--out", out, "--vae", "tiny"), 2,
                 f"bundle {bundle} has no tiny graphs (it is fp32): re-export it with --vae tiny", out)
    expect_error(run(tiue_infer, "--bundle", bundle, *inputs, "--out", out, "--vae", "small"), 2, "unknown vae 'small': use full or tiny", out)


def test_error_out_format(tiue_infer, bundle, inputs, tmp_path):
    expect_error(run(tiue_infer, "--bundle", bundle, *inputs, "--out", tmp_path / "x.jpg"), 2, "--out", tmp_path / "x.jpg")


def test_error_threads_bounded(tiue_infer, bundle, inputs, tmp_path):
    expect_error(run(tiue_infer, "--bundle", bundle, *inputs, "--out", tmp_path / "x.png", "--threads", "100000"), 2,
                 "--threads must be 0 to 1024, got 100000", tmp_path / "x.png")
    expect_error(run(tiue_infer, bundle, "--prompt", "a", "--seed", "-1", "--out", tmp_path / "x.png"), 2, "--seed must be an integer from 0")


def _npy_with_header(path: Path, shape: str) -> None:
    header = "{'descr': '<f4', 'fortran_order': False, 'shape': " + shape + ", }"
    header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
    path.write_bytes(b"\x93NUMPY\x01\x00" + len(header).to_bytes(2, "little") + header.encode() + b"\0" * 64)


def test_error_npy_shape_claims(tiue_infer, bundle, python_run, tmp_path):
    """A header claiming a huge or negative shape is refused, not allocated (no std::bad_alloc)."""
    out = tmp_path / "x.png"
    ids = python_run / "ids.npy"
    _npy_with_header(tmp_path / "huge.npy", "(1099511627776, 1099511627776, 4)")
    expect_error(run(tiue_infer, "--bundle", bundle, "--ids", ids, "--noise", tmp_path / "huge.npy", "--out", out), 2,
                 "claims shape [1099511627776, 1099511627776, 4] but the file holds 16 elements", out)
    _npy_with_header(tmp_path / "negative.npy", "(-1, 4)")
    expect_error(run(tiue_infer, "--bundle", bundle, "--ids", ids, "--noise", tmp_path / "negative.npy", "--out", out), 2,
                 "claims a negative shape [-1, 4]", out)


def test_error_truncated_graph(tiue_infer, bundle, inputs, tmp_path):
    """A damaged bundle is bad input, exit 2, as the docs say."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    data = (copy / "unet_encoder.onnx").read_bytes()
    (copy / "unet_encoder.onnx").write_bytes(data[: len(data) // 2])
    expect_error(run(tiue_infer, "--bundle", copy, *inputs, "--out", tmp_path / "x.png"), 2, "ONNX Runtime cannot load unet_encoder.onnx", tmp_path / "x.png")


def test_error_replace_says_why(tiue_infer, bundle, inputs, tmp_path):
    """A failed rename reports the system's reason, not 'Success'."""
    (tmp_path / "x_0.png").mkdir()  # the first of the two images
    proc = run(tiue_infer, "--bundle", bundle, *inputs, "--out", tmp_path / "x.png", "--overwrite")
    expect_error(proc, 1, "x_0.png: cannot replace: Is a directory")
    assert not list(tmp_path.glob(".x_0.png*")) and not (tmp_path / "x_1.png").exists()


@pytest.mark.parametrize("fused", [True, False], ids=["fused", "unfused"])
def test_error_non_finite_stage(tiue_infer, bundle, inputs, tmp_path, fused):
    """NaN weights in the decoder: exit 1, one line naming it, nothing written (--save-ids and
    --save-noise neither)."""
    import onnx
    from onnx import numpy_helper

    graph = "unet_decoder_fused" if fused else "unet_decoder"
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    model = onnx.load(str(copy / f"{graph}.onnx"))
    init = next(i for i in model.graph.initializer if "conv_out" in i.name and i.name.endswith("weight"))
    init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), np.nan), init.name))
    onnx.save(model, str(copy / f"{graph}.onnx"))
    out = tmp_path / "x.png"
    proc = run(tiue_infer, "--bundle", copy, *inputs, "--out", out, "--latents", tmp_path / "z0.npy", *([] if fused else ["--unfused"]))
    expect_error(proc, 1, f"{graph} produced non-finite values (NaN or Inf) in {'z0' if fused else 'eps'}: no image written", out)
    assert not (tmp_path / "z0.npy").exists() and not (tmp_path / "x_0.png").exists()
    saved = ["--save-ids", tmp_path / "ids.npy", "--save-noise", tmp_path / "noise.npy"]  # written with the images
    proc = run(tiue_infer, copy, "--prompt", "a cat", *saved, "--out", out, *([] if fused else ["--unfused"]))
    expect_error(proc, 1, "produced non-finite values (NaN or Inf)", out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bundle"]


# -- the second bad-input sweep: the decisions of the Python runtime, in one line ----------------
@pytest.mark.parametrize("case", sorted(REFUSED_MANIFESTS))
def test_error_manifest_refused_as_python_refuses_it(tiue_infer, bundle, tmp_path, inputs, case):
    """The rows test_bad_input.py gives tiue-export infer: the same refusal, one line, exit 2,
    before any graph is loaded (the copy's graphs are not even ONNX)."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy, ignore=shutil.ignore_patterns("*.onnx"))
    for graph in bundle.glob("*.onnx"):
        (copy / graph.name).write_bytes(b"not an onnx graph")
    text, expect = REFUSED_MANIFESTS[case](json.loads((bundle / "manifest.json").read_text()))
    (copy / "manifest.json").write_text(text)
    out = tmp_path / "x.ppm"
    expect_error(run(tiue_infer, "--bundle", copy, *inputs, "--out", out), 2, expect, out)
    assert str(copy / "manifest.json") in run(tiue_infer, "--bundle", copy, *inputs, "--out", out).stderr


def test_deepest_manifest_and_other_wiring(tiue_infer, bundle, tmp_path):
    """64 levels are read (as Python reads them); a valid chain wired otherwise than the standard
    one, which Python's executor would follow, is refused rather than run as the standard one."""
    from tiue_export.bundle import Bundle

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    manifest = json.loads((bundle / "manifest.json").read_text())
    (copy / "manifest.json").write_text(nested_64(json.loads((bundle / "manifest.json").read_text())))
    proc = run(tiue_infer, copy, "--prompt", "a cat", "--save-ids", tmp_path / "ids.npy")
    assert proc.returncode == 0, proc.stderr
    manifest["runtime"]["chains"]["fused"]["sources"]["vae_decoder.latents"] = "inputs.noise"
    (copy / "manifest.json").write_text(json.dumps(manifest))
    Bundle.open(copy)  # valid: Python would decode z_T
    expect_error(run(tiue_infer, copy, "--prompt", "a cat", "--out", tmp_path / "x.png"), 2,
                 "chain fused feeds vae_decoder.latents from inputs.noise instead of unet_decoder_fused.z0, "
                 "and this runtime runs only the standard wiring: re-export the bundle", tmp_path / "x.png")


def test_error_int8_on_an_uncalibrated_bundle(tiue_infer, bundle, inputs, tmp_path):
    """No int8 graphs: refused with tiue-export infer's words (not fp32 pixels in a PNG saying int8)."""
    out = tmp_path / "x.png"
    expect_error(run(tiue_infer, "--bundle", bundle, *inputs, "--out", out, "--precision", "int8"), 2,
                 f"bundle {bundle} has no int8 graphs (it is fp32): run tiue-export calibrate {bundle}", out)


def test_existing_outputs_are_replaced_only_with_overwrite(tiue_infer, bundle, python_run, tmp_path):
    """As tiue-export infer --out: an existing file is refused before any work (every output, each
    image of several), replaced whole with --overwrite, no temporary file left behind."""
    one = tmp_path / "one.png"
    assert run(tiue_infer, bundle, "--prompt", "a cat", "--out", one).returncode == 0
    first = one.read_bytes()
    expect_error(run(tiue_infer, bundle, "--prompt", "a dog", "--out", one), 2, f"--out {one} exists: pass --overwrite to replace it")
    assert one.read_bytes() == first
    proc = run(tiue_infer, bundle, "--prompt", "a dog", "--out", one, "--overwrite")
    assert proc.returncode == 0, proc.stderr
    assert one.read_bytes() != first and sorted(p.name for p in tmp_path.iterdir()) == ["one.png"]
    (tmp_path / "two_1.ppm").write_bytes(b"keep")  # the second of two images
    expect_error(run(tiue_infer, "--bundle", bundle, "--ids", python_run / "ids.npy", "--noise", python_run / "noise.npy", "--out", tmp_path / "two.ppm"),
                 2, f"--out {tmp_path / 'two_1.ppm'} exists")
    assert not (tmp_path / "two_0.ppm").exists() and (tmp_path / "two_1.ppm").read_bytes() == b"keep"
    expect_error(run(tiue_infer, bundle, "--prompt", "a cat", "--save-noise", one), 2, f"--save-noise {one} exists: pass --overwrite")


@pytest.mark.parametrize(
    "prompt, expect",
    [
        ("", "--prompt is empty"),
        (" \t\u3000\u00a0\x1c", "--prompt is empty"),  # whitespace as Python's str.isspace has it
        ("a" * 10_001, "prompt is 10001 characters long, over 10000: the text encoder reads only the first 77 tokens"),
        ("\u00e9" * 10_001, "prompt is 10001 characters long"),  # characters, not UTF-8 bytes
    ],
    ids=["empty", "whitespace", "too-long", "too-long-unicode"],
)
def test_error_prompt_rules(tiue_infer, bundle, tmp_path, prompt, expect):
    """The prompt rules of infer and serve: before any graph loads, --prompt and --prompts-file alike."""
    out = tmp_path / "x.png"
    expect_error(run(tiue_infer, bundle, "--prompt", "a cat", "--prompt", prompt, "--out", out), 2, expect, out)
    if prompt.strip():
        (tmp_path / "p.txt").write_text(f"a cat\n{prompt}\n", encoding="utf-8")
        expect_error(run(tiue_infer, bundle, "--prompts-file", tmp_path / "p.txt", "--save-ids", tmp_path / "ids.npy"), 2,
                     f"{tmp_path / 'p.txt'}:2: the {expect}", tmp_path / "ids.npy")


def test_longest_prompt_is_taken(tiue_infer, bundle, tmp_path):
    proc = run(tiue_infer, bundle, "--prompt", "\u00e9" * 10_000, "--save-ids", tmp_path / "ids.npy")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "ids.npy").shape[0] == 1


def test_error_destinations_and_bundle_paths(tiue_infer, bundle, tmp_path):
    """Checked before any work: an --out directory that takes no file (read-only even for root), a
    file where a directory should be, a bundle path that is a file, a seed past 64 bits."""
    base = [bundle, "--prompt", "a cat"]
    expect_error(run(tiue_infer, *base, "--out", "/proc/x.png"), 2, "--out /proc/x.png: cannot write into /proc (")
    (tmp_path / "file").write_text("x")
    expect_error(run(tiue_infer, *base, "--latents", tmp_path / "file" / "z.npy"), 2, f"--latents {tmp_path / 'file' / 'z.npy'}: {tmp_path / 'file'} is not a directory")
    expect_error(run(tiue_infer, tmp_path / "file", "--prompt", "a cat", "--out", tmp_path / "x.png"), 2, f"bundle {tmp_path / 'file'} is not a directory")
    expect_error(run(tiue_infer, *base, "--seed", str(2**64), "--out", tmp_path / "x.png"), 2, "--seed must be an integer from 0 to 18446744073709551615")
    assert not list(tmp_path.glob(".tiue-probe-*")) and sorted(p.name for p in tmp_path.iterdir()) == ["file"]


def test_prompts_file_read_as_infer_reads_it(tiue_infer, bundle, tmp_path):
    """tiue_infer --prompts-file takes the prompts tiue-export infer's --prompts-file takes: lines
    as Python's str.splitlines splits them (\\r\\n, \\r, U+2028, U+001C ...), Unicode whitespace
    stripped, blank lines skipped; the same ids come out."""
    from tiue_export.cli.infer import read_prompts
    from tiue_export.runtime import Pipeline

    text = "\u3000a cat\u00a0\r\n\r\n a dog\ra bird\u2028a fish\x1ca cow\x85\t\n"
    (tmp_path / "p.txt").write_bytes(text.encode())
    prompts = read_prompts((), str(tmp_path / "p.txt"))
    assert prompts == ["a cat", "a dog", "a bird", "a fish", "a cow"]
    proc = run(tiue_infer, bundle, "--prompts-file", tmp_path / "p.txt", "--save-ids", tmp_path / "ids.npy")
    assert proc.returncode == 0, proc.stderr
    with Pipeline.load(bundle, providers=["CPUExecutionProvider"]) as pipe:
        assert np.array_equal(np.load(tmp_path / "ids.npy"), pipe.tokenize(prompts))


def test_error_prompt_not_utf8_named_as_python_names_it(tiue_infer, bundle, tmp_path):
    """A byte that is not UTF-8 in --prompt or in a prompts file: the words of tiue-export infer."""
    from tiue_export.cli.infer import read_prompts
    from tiue_export.errors import InputError

    out = tmp_path / "x.png"
    proc = subprocess.run([str(tiue_infer), str(bundle), "--prompt", b"caf\xe9", "--out", str(out)], capture_output=True, text=True, timeout=300)
    expect_error(proc, 2, "--prompt holds a byte 0xe9 at character 3 that is not UTF-8 text: give the prompt in UTF-8", out)
    (tmp_path / "p.txt").write_bytes(b"a cat\n\nz caf\xe9 au lait\n")
    with pytest.raises(InputError) as python:
        read_prompts((), str(tmp_path / "p.txt"))
    expect_error(run(tiue_infer, bundle, "--prompts-file", tmp_path / "p.txt", "--out", out), 2, str(python.value), out)
    assert "(line 3, byte 12: b'\\xe9')" in str(python.value)



def test_prompts_file_of_blank_lines(tiue_infer, bundle, tmp_path):
    """A prompts file with no prompt is no error beside --prompt, and alone gives infer's words."""
    from tiue_export.cli.infer import read_prompts
    from tiue_export.errors import InputError

    (tmp_path / "blank.txt").write_text("\n \u3000\n")
    assert read_prompts(("a cat",), str(tmp_path / "blank.txt")) == ["a cat"]
    proc = run(tiue_infer, bundle, "--prompt", "a cat", "--prompts-file", tmp_path / "blank.txt", "--save-ids", tmp_path / "ids.npy")
    assert proc.returncode == 0, proc.stderr
    assert np.load(tmp_path / "ids.npy").shape[0] == 1
    with pytest.raises(InputError) as python:
        read_prompts((), str(tmp_path / "blank.txt"))
    expect_error(run(tiue_infer, bundle, "--prompts-file", tmp_path / "blank.txt", "--out", tmp_path / "x.png"), 2, str(python.value), tmp_path / "x.png")
