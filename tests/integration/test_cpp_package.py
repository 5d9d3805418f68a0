"""The installed C++ package (engines/: cmake --install) as an application uses it: a separate
project finds it with find_package, makes images from prompts and seeds alone, and they are
`tiue-export infer --backend onnxruntime`'s pixels bit for bit. Also the C++ tokenizer against the
``tokenizers`` library on a corpus (the default bundle's vocabulary and an SD-style CLIP one) and
the C++ z_T against numpy for 1,000 (seed, image index) pairs.

One build (scripts/build_cpp.sh, shared with test_cpp.py through its cache), one install, one
export of the built-in default model per module.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]

#: 21 prompts: the toy domain's captions, unicode, emoji, punctuation, case, whitespace, a special
#: token's text and one over the default model's 16 tokens (a blank prompt is refused by both).
PROMPTS = [
    "a small red triangle on a blue background",
    "a large yellow circle on a black background",
    "a large green cross on a white background",
    "a small blue square on a yellow background",
    "a large white star on a red background",
    "a small black circle on a green background",
    "A LARGE RED SQUARE ON A WHITE BACKGROUND",
    "a small  yellow\ttriangle,   on a blue background!!!",
    "une petite croix verte sur fond bleu, été 🌞",
    "日本語 a small red triangle 中文",
    "İSTANBUL ΟΔΟΣ straße ﬁ a large circle",
    "emoji 🐱🚀👩‍👩‍👧 ❤️ 🇫🇷 on a black background",
    "<|endoftext|> a red square <|startoftext|>",
    "it's the cat's cross, isn't it? they'll we've I'd",
    "numbers 2024 ½ Ⅻ ٣ stars",
    "…—–‘’“”«» #$%^&*()_+=-[]{}|;:,./<>?`~",
    "e\u0301te\u0301 caf\u00e9 na\u00efve",
    " ".join(["a small red triangle on a blue background"] * 4),
    "a",
    "background",
    "red red red red red red red red red red red red red red red red red red",
]
SEED, PER_PROMPT = 7, 3


def _run(cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=600, **kw)


@pytest.fixture(scope="module")
def build_dir() -> Path:
    proc = _run(["bash", ROOT / "scripts" / "build_cpp.sh"])
    if proc.returncode == 3:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-4000:]
    return Path(proc.stdout.strip().splitlines()[-1]).parent


@pytest.fixture(scope="module")
def prefix(build_dir, tmp_path_factory) -> Path:
    """`cmake --install` into a prefix, then moved: the package must not depend on where it was installed."""
    first = tmp_path_factory.mktemp("install") / "first"
    proc = _run(["cmake", "--install", build_dir, "--prefix", first])
    assert proc.returncode == 0, proc.stderr
    moved = first.parent / "moved"
    shutil.move(str(first), str(moved))
    return moved


@pytest.fixture(scope="module")
def app(prefix, tmp_path_factory) -> Path:
    """engines/examples/app built against the installed package only (find_package)."""
    build = tmp_path_factory.mktemp("app-build")
    proc = _run(["cmake", "-S", ROOT / "engines" / "examples" / "app", "-B", build, f"-DCMAKE_PREFIX_PATH={prefix}"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    proc = _run(["cmake", "--build", build, "-j", "2"])
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return build / "tiue_app"


@pytest.fixture(scope="module")
def bundle(tmp_path_factory) -> Path:
    """The built-in default model, exported."""
    from tiue_export.build.export import ExportConfig, export_bundle
    from tiue_export.reference.builtin import default_model

    out = tmp_path_factory.mktemp("default") / "bundle"
    export_bundle(ExportConfig(model=default_model(), out=out))
    return out


def _png_images(directory: Path) -> dict[tuple[str, str], tuple[np.ndarray, dict]]:
    from PIL import Image

    images = {}
    for path in sorted(directory.glob("*.png")):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.mode == "RGB"
            images[(im.text["prompt"], im.text["seed"])] = (np.asarray(im), dict(im.text))
    return images


def test_installed_layout(prefix):
    lib = prefix / "lib"
    for rel in ("include/tiue/generator.hpp", "include/tiue/tokenizer.hpp", "include/tiue/noise.hpp", "include/tiue/version.hpp",
                "lib/libtiue_engines.so", "lib/libonnxruntime.so.1", "lib/cmake/tiue_engines/tiue_enginesConfig.cmake",
                "lib/cmake/tiue_engines/tiue_enginesTargets.cmake", "lib/pkgconfig/tiue_engines.pc", "bin/tiue_infer"):
        assert (prefix / rel).exists(), rel
    for binary, runpath in ((lib / "libtiue_engines.so", "[$ORIGIN]"), (prefix / "bin" / "tiue_infer", "[$ORIGIN/../lib]")):
        dynamic = _run(["readelf", "-d", binary]).stdout
        assert f"Library runpath: {runpath}" in dynamic, dynamic
    # moved after installing, and still runs without LD_LIBRARY_PATH
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    proc = _run([prefix / "bin" / "tiue_infer", "--version"], env=env)
    assert proc.returncode == 0 and proc.stdout.startswith("tiue_infer 0.1.0"), proc.stderr


def test_pkg_config(prefix, tmp_path):
    """The .pc file alone compiles and links a program against the package."""
    if not shutil.which("pkg-config"):
        pytest.skip("pkg-config is not installed")
    pc = prefix / "lib" / "pkgconfig" / "tiue_engines.pc"
    pc.write_text(pc.read_text().replace(pc.read_text().splitlines()[0], f"prefix={prefix}"))  # the prefix was moved
    env = {**os.environ, "PKG_CONFIG_PATH": str(pc.parent)}
    flags = _run(["pkg-config", "--cflags", "--libs", "tiue_engines"], env=env)
    assert flags.returncode == 0, flags.stderr
    (tmp_path / "noise.cpp").write_text(
        '#include <tiue/noise.hpp>\n#include <cstdio>\n'
        "int main() { tiue::Pcg64 rng(0); std::printf(\"%.7g\\n\", tiue::standard_normal_f(rng)); }\n")
    proc = _run(["g++", tmp_path / "noise.cpp", "-o", tmp_path / "noise", *flags.stdout.split()])
    assert proc.returncode == 0, proc.stderr
    out = _run([tmp_path / "noise"])
    assert float(out.stdout) == np.random.default_rng(0).standard_normal(1, dtype=np.float32)[0]


def test_app_matches_python_infer(app, bundle, tmp_path):
    """The done-when check: 21 prompts x 3 seeds from the app equal tiue-export infer's PNGs bit for bit."""
    ours, theirs = tmp_path / "cpp", tmp_path / "python"
    ours.mkdir()
    proc = _run([app, bundle, ours, SEED, PER_PROMPT], input="\n".join(PROMPTS) + "\n")
    assert proc.returncode == 0, proc.stderr
    cli = ["tiue-export", "infer", "--backend", "onnxruntime", "--model", bundle, "--seed", SEED, "--num-images", PER_PROMPT, "--out", theirs]
    for p in PROMPTS:
        cli += ["--prompt", p]
    proc = _run(cli)
    assert proc.returncode == 0, proc.stderr[-3000:]
    a, b = _png_images(ours), _png_images(theirs)
    assert len(a) == len(b) == len(PROMPTS) * PER_PROMPT == 63
    assert a.keys() == b.keys()
    differ = [key for key in a if not np.array_equal(a[key][0], b[key][0])]
    assert not differ, f"{len(differ)} of {len(a)} images differ, e.g. {differ[:3]}"
    for key in a:
        cpp_meta, py_meta = a[key][1], b[key][1]
        assert list(cpp_meta) == list(py_meta)
        assert {k: v for k, v in cpp_meta.items() if k != "software"} == {k: v for k, v in py_meta.items() if k != "software"}
        assert cpp_meta["software"] == "tiue_engines 0.1.0"


# -- tokenizer -----------------------------------------------------------------------------------
def _corpus() -> list[str]:
    lines = []
    for name in ("prompts.txt", "toy_prompts.txt"):
        lines += (ROOT / "tiue_export" / "calibration" / name).read_text(encoding="utf-8").splitlines()
    lines += PROMPTS + ["mixedCASE Words", "x'y 'tis '' ''s don't'S", "\x01 control \x7f", "ﾊﾝｶｸ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "a\u0300\u0301\u0302",
                        "tabs\u00a0nbsp\u3000ideographic", "<|ENDOFTEXT|> <|endoftext|>x", "Ωmega ǈ Ǉ ǅ", "a" * 300,
                        " ".join(PROMPTS)]  # over 77 tokens too
    # tiue_infer --prompts-file strips ASCII whitespace and skips blank lines, as infer does
    return [s for s in (line.strip(" \t\r\n\v\f") for line in lines) if s]


def _check_tokenizer(tiue_infer: Path, bundle: Path, tmp_path: Path) -> int:
    import tokenizers

    manifest = json.loads((bundle / "manifest.json").read_text())["tokenizer"]
    corpus = _corpus()
    (tmp_path / "corpus.txt").write_text("\n".join(corpus) + "\n", encoding="utf-8")
    proc = _run([tiue_infer, bundle, "--prompts-file", tmp_path / "corpus.txt", "--save-ids", tmp_path / "ids.npy"])
    assert proc.returncode == 0, proc.stderr
    tok = tokenizers.Tokenizer.from_file(str(bundle / manifest["file"]))
    tok.enable_truncation(max_length=manifest["model_max_length"])
    tok.enable_padding(pad_id=manifest["pad_id"], pad_token=manifest["pad_token"], length=manifest["model_max_length"])
    texts = corpus
    encodings = tok.encode_batch(texts)
    ours = np.load(tmp_path / "ids.npy")
    theirs = np.asarray([e.ids for e in encodings], dtype=np.int64)
    assert ours.dtype == np.int64 and ours.shape == theirs.shape
    bad = [texts[i][:50] for i in np.flatnonzero((ours != theirs).any(axis=1))]
    assert not bad, f"{len(bad)} of {len(texts)} prompts tokenized differently: {bad[:5]}"
    truncated = sum(bool(e.overflowing) for e in encodings)
    warnings = [line for line in proc.stderr.splitlines() if "tiue_infer: warning: prompt is longer than this model's" in line]
    assert truncated > 0 and len(warnings) == truncated
    return len(texts)


def test_tokenizer_default_bundle(prefix, bundle, tmp_path):
    assert _check_tokenizer(prefix / "bin" / "tiue_infer", bundle, tmp_path) > 400


def test_tokenizer_sd_style_vocabulary(prefix, bundle, tmp_path):
    """A CLIP tokenizer trained here at a few thousand tokens, saved by CLIPTokenizerFast as SD 2.1's
    (pad "!", 77 tokens), in a copy of the bundle's manifest (no graph runs for --save-ids)."""
    from transformers import CLIPTokenizerFast

    from tiue_export.reference.tokenizer_builder import build_clip_tokenizer

    corpus = _corpus()
    build_clip_tokenizer(corpus + PROMPTS * 3, tmp_path / "slow", vocab_size=3000, model_max_length=77)
    fast = CLIPTokenizerFast.from_pretrained(str(tmp_path / "slow"), pad_token="!")
    copy = tmp_path / "bundle"
    copy.mkdir()
    fast.save_pretrained(str(copy / "tokenizer"))
    manifest = json.loads((bundle / "manifest.json").read_text())
    manifest["tokenizer"].update(model_max_length=77, pad_id=fast.pad_token_id, pad_token="!", bos_id=fast.bos_token_id, eos_id=fast.eos_token_id)
    manifest["graphs"]["text_encoder"]["inputs"][0]["shape"] = ["B", 77]
    (copy / "manifest.json").write_text(json.dumps(manifest))
    assert len(fast.get_vocab()) > 1500
    assert _check_tokenizer(prefix / "bin" / "tiue_infer", copy, tmp_path) > 400


# -- z_T -----------------------------------------------------------------------------------------
def test_noise_equals_numpy(prefix, bundle, tmp_path):
    """1,000 (seed, image index) pairs, seeds 0 to 2^64-1 (1 to 2 entropy words), bit for bit; and
    the seeds of several prompts x images as infer assigns them."""
    from tiue_export.sampling import initial_noise

    latent = json.loads((bundle / "manifest.json").read_text())["latent"]
    shape = (latent["channels"], latent["height"], latent["width"])
    compared = 0
    for start, count in ((0, 400), (2**32 - 150, 300), (2**63 - 50, 100), (2**64 - 200, 200)):
        out = tmp_path / f"noise-{start}.npy"
        proc = _run([prefix / "bin" / "tiue_infer", bundle, "--prompt", "x", "--seed", start, "--num-images", count, "--save-noise", out])
        assert proc.returncode == 0, proc.stderr
        ours, theirs = np.load(out), initial_noise(range(start, start + count), shape)
        assert ours.dtype == np.float32 and ours.shape == theirs.shape == (count, *shape)
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), start
        compared += count
    assert compared == 1000
    out = tmp_path / "jobs.npy"
    proc = _run([prefix / "bin" / "tiue_infer", bundle, "--prompt", "a", "--prompt", "b", "--seed", 5, "--num-images", 3, "--save-noise", out])
    assert proc.returncode == 0, proc.stderr
    assert np.array_equal(np.load(out), initial_noise([5, 6, 7, 5, 6, 7], shape))
    proc = _run([prefix / "bin" / "tiue_infer", bundle, "--prompt", "a", "--seed", 2**64 - 1, "--num-images", 2, "--save-noise", out])
    assert proc.returncode == 2 and "does not fit in 64 bits" in proc.stderr
