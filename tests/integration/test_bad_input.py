"""Bad input, as a new user gives it: one line on stderr (no traceback), a non-zero exit, no image
made of NaNs, nothing half written, no earlier output lost; and a fuzz test of the bundle: random
byte flips in its files and random changes to its manifest never give exit 0 with another image."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from helpers.bundles import REFUSED_MANIFESTS, VARIANTS, nested_64, tiny_bundle
from helpers.cli import run_cli

PROMPT = "a red cube"


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    return tiny_bundle(tiny_models, tmp_path_factory, "sd21", **VARIANTS["sd21"])


def one_line_error(code: int, err: str, expect: str, exit_code: int | None = None) -> None:
    """The failure contract: non-zero exit, exactly one ``error:`` line holding ``expect``, no traceback."""
    assert code != 0, err
    if exit_code is not None:
        assert code == exit_code, err
    assert "Traceback" not in err, err
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and expect in errors[0], err


def tree(path: Path) -> dict[str, bytes]:
    """Every file under ``path`` (hidden ones too) with its bytes."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


def nan_weights(model: Path, dest: Path) -> Path:
    """A copy of ``model`` whose UNet weights hold NaNs (same size: the loader cannot tell)."""
    shutil.copytree(model, dest)
    (weights,) = (dest / "unet").glob("*.safetensors")
    data = bytearray(weights.read_bytes())
    header = 8 + int.from_bytes(data[:8], "little")
    data[header + 64 : header + 64 + 4096] = b"\xff" * 4096  # float32 0xffffffff is NaN
    weights.write_bytes(bytes(data))
    return dest


# -- numbers: non-finite outputs, non-finite or out-of-range flags --------------------------------
def test_nan_weights_fail_naming_the_stage_and_write_nothing(tiny_sd21, tmp_path, capsys):
    model = nan_weights(tiny_sd21, tmp_path / "nan-model")
    for sampler, stage in (("one-pass", "unet_encoder."), ("loop", "loop.z0"), ("ddim:3", "ddim:3.z0")):
        out = tmp_path / f"out-{sampler.replace(':', '')}"
        code, _, err = run_cli(["infer", "--model", str(model), "--prompt", PROMPT, "--sampler", sampler, "--out", str(out)], capsys)
        one_line_error(code, err, "is not finite", 1)
        assert stage in err and "nothing was written" in err, err
        assert not out.exists() or not any(out.rglob("*.png"))


@pytest.mark.parametrize(
    "command, flag, value",
    [
        ("infer", "--guidance", "nan"),
        ("infer", "--guidance", "inf"),
        ("infer", "--seed", "-1"),
        ("infer", "--seed", str(2**70)),
        ("infer", "--height", "0"),
        ("check", "--seed", "-5"),
        ("calibrate", "--percentile", "nan"),
        ("calibrate", "--num", "0"),
        ("toy eval", "--guidance", "-inf"),
        ("distill", "--lr", "nan"),
    ],
)
def test_non_finite_or_out_of_range_flags_are_refused_before_loading(command, flag, value, tmp_path, capsys):
    args = {
        "infer": ["--prompt", PROMPT, "--out", str(tmp_path / "o")],
        "check": [str(tmp_path / "b")],
        "calibrate": [str(tmp_path / "b")],
        "toy eval": ["--json", str(tmp_path / "r.json")],
        "distill": ["--teacher", str(tmp_path / "t"), "--prompts", str(tmp_path / "p.txt"), "--out", str(tmp_path / "d")],
    }[command]
    code, _, err = run_cli([*command.split(), *args, f"{flag}={value}"], capsys)
    one_line_error(code, err, flag, 2)
    assert not list(tmp_path.iterdir())


def test_largest_seed_with_torch_noise_works_and_overflow_is_refused(tiny_sd21, tmp_path, capsys):
    top = 2**63 - 1
    code, _, err = run_cli(["infer", "--model", str(tiny_sd21), "--prompt", PROMPT, "--seed", str(top), "--noise", "torch", "--out", str(tmp_path / "o")], capsys)
    assert code == 0, err
    code, _, err = run_cli(["infer", "--model", str(tiny_sd21), "--prompt", PROMPT, "--seed", str(top), "--num-images", "2", "--out", str(tmp_path / "p")], capsys)
    one_line_error(code, err, "passes the largest seed", 2)


# -- destinations: read-only, wrong kind, existing files ------------------------------------------
READ_ONLY = Path("/sys/tiue-export-test")  # a read-only file system even for root


@pytest.mark.skipif(os.access("/sys", os.W_OK) and not Path("/sys/kernel").is_dir(), reason="no read-only /sys here")
def test_read_only_destinations_are_one_line_before_any_work(tiny_sd21, bundle, tmp_path, capsys):
    cases = [
        (["infer", "--model", str(tiny_sd21), "--prompt", PROMPT, "--out", str(READ_ONLY)], "--out"),
        (["infer", "--model", str(tiny_sd21), "--prompt", PROMPT, "--out", str(READ_ONLY / "x.png")], "--out"),
        (["infer", "--model", str(bundle), "--backend", "onnxruntime", "--prompt", PROMPT, "--out", str(READ_ONLY)], "--out"),
        (["export", "--model", str(tiny_sd21), "--out", str(READ_ONLY / "b")], "--out"),
        (["check", str(bundle), "--backends", "onnxruntime", "--json", str(READ_ONLY / "c.json")], "--json"),
    ]
    for args, flag in cases:
        t0 = time.perf_counter()
        code, out, err = run_cli(args, capsys)
        one_line_error(code, err, flag, 2)
        assert "wrote" not in out and time.perf_counter() - t0 < 30


def test_destinations_of_the_wrong_kind(tiny_sd21, tmp_path, capsys):
    base = ["infer", "--model", str(tiny_sd21), "--prompt", PROMPT]
    code, _, err = run_cli([*base, "--out", str(tmp_path / "new.jpg")], capsys)
    one_line_error(code, err, "writes PNG", 2)
    assert not (tmp_path / "new.jpg").exists()
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli([*base, "--out", str(tmp_path / "file" / "sub")], capsys)
    one_line_error(code, err, "is not a directory", 2)
    code, _, err = run_cli([*base, "--out", str(tmp_path / "file")], capsys)
    one_line_error(code, err, "is not a directory", 2)


def test_an_existing_png_is_replaced_only_with_overwrite(tiny_sd21, tmp_path, capsys):
    target = tmp_path / "one.png"
    base = ["infer", "--model", str(tiny_sd21), "--out", str(target)]
    assert run_cli([*base, "--prompt", PROMPT], capsys)[0] == 0
    first = target.read_bytes()
    code, _, err = run_cli([*base, "--prompt", "a cat"], capsys)
    one_line_error(code, err, "--overwrite", 2)
    assert target.read_bytes() == first
    assert run_cli([*base, "--prompt", "a cat", "--overwrite"], capsys)[0] == 0
    assert target.read_bytes() != first


def test_prompts_that_share_a_prefix_or_differ_in_model_keep_their_own_files(tiny_models, tmp_path, capsys):
    long = "a red cube on a blue table next to a green ball, in the morning light"
    out = tmp_path / "o"
    for model in (tiny_models("sd21"), tiny_models("sd15")):
        for prompt in (long + " A", long + " B"):
            assert run_cli(["infer", "--model", str(model), "--prompt", prompt, "--out", str(out)], capsys)[0] == 0
    assert len(list(out.glob("*.png"))) == 4


def test_concurrent_runs_into_one_directory_lose_nothing(tiny_sd21, tmp_path):
    out = tmp_path / "shared"
    runs = [
        subprocess.Popen(
            [sys.executable, "-m", "tiue_export", "infer", "--model", str(tiny_sd21), "--prompt", PROMPT, "--num-images", "3", "--sampler", s, "--out", str(out)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for s in ("one-pass", "loop")
    ]
    for r in runs:
        _, err = r.communicate(timeout=300)
        assert r.returncode == 0, err
    assert len(list(out.glob("*.png"))) == 6
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# -- prompts files and runs ----------------------------------------------------------------------
def test_prompts_files_that_are_not_text(tiny_sd21, bundle, tmp_path, capsys):
    latin = tmp_path / "latin1.txt"
    latin.write_bytes("caf\xe9 au lait\n".encode("latin-1"))
    for args in (["--model", str(tiny_sd21)], ["--model", str(bundle), "--backend", "onnxruntime"]):
        code, _, err = run_cli(["infer", *args, "--prompts-file", str(latin), "--out", str(tmp_path / "o")], capsys)
        one_line_error(code, err, "not UTF-8", 2)
        code, _, err = run_cli(["infer", *args, "--prompts-file", str(tmp_path), "--out", str(tmp_path / "o")], capsys)
        one_line_error(code, err, "is a directory", 2)


def test_distill_resume_refuses_a_folder_without_a_run(tiny_models, tmp_path, capsys):
    prompts = tmp_path / "p.txt"
    prompts.write_text("a cat\n")
    (tmp_path / "empty").mkdir()
    from tiue_export.reference.random_models import build_tiny_pipeline

    teacher = build_tiny_pipeline(tmp_path / "teacher", "sd21", student=False)
    code, _, err = run_cli(["distill", "--teacher", str(teacher), "--prompts", str(prompts), "--out", str(tmp_path / "empty"), "--resume", "--steps", "1"], capsys)
    one_line_error(code, err, "no run to continue", 2)
    assert not list((tmp_path / "empty").iterdir())


# -- killed writers ------------------------------------------------------------------------------
def test_a_killed_export_leaves_staging_that_the_next_export_removes(tiny_sd21, tmp_path):
    out = tmp_path / "bundle"
    cmd = [sys.executable, "-m", "tiue_export", "export", "--model", str(tiny_sd21), "--out", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob(".bundle.*.tmp/bundle/*.onnx")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    assert proc.poll() is None, "export finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    (stale,) = tmp_path.glob(".bundle.*.tmp")
    assert not out.exists()
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert not stale.exists() and (out / "manifest.json").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["bundle"]


def test_a_live_writers_staging_is_left_alone(tmp_path):
    from tiue_export.files import OWNER, staging_dir, sweep_stale

    mine = staging_dir(tmp_path / "target", "test")
    assert sweep_stale(tmp_path / "target") == [] and mine.is_dir()
    owner = json.loads((mine / OWNER).read_text())
    foreign = tmp_path / ".target.x-1.tmp"  # another host's writer: not ours to judge
    foreign.mkdir()
    (foreign / OWNER).write_text(json.dumps({**owner, "host": owner["host"] + "-elsewhere", "pid": 1}))
    unowned = tmp_path / ".target.y-2.tmp"  # no owner file: not ours
    unowned.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    gone = tmp_path / ".target.z-3.tmp"
    gone.mkdir()
    (gone / OWNER).write_text(json.dumps({**owner, "pid": int(dead), "start": "0"}))
    assert sweep_stale(tmp_path / "target") == [gone]
    assert mine.is_dir() and foreign.is_dir() and unowned.is_dir() and not gone.exists()


# -- manifests: what JSON does not allow, nesting, chains (the C++ runtime decides the same) -----
@pytest.mark.parametrize("case", sorted(REFUSED_MANIFESTS))
def test_manifests_refused_as_the_cpp_runtime_refuses_them(case, bundle, tmp_path, capsys):
    """NaN, Infinity, a number past float64, nesting past 64 levels, a chain that runs a missing
    graph or feeds an input from nothing: one line, exit 2, before any graph loads (the rows of
    helpers.bundles.REFUSED_MANIFESTS, which test_cpp.py gives tiue_infer)."""
    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    text, expect = REFUSED_MANIFESTS[case](json.loads((bundle / "manifest.json").read_text()))
    (copy / "manifest.json").write_text(text)
    out = tmp_path / "x.png"
    code, _, err = run_cli(["infer", "--model", str(copy), "--backend", "onnxruntime", "--prompt", PROMPT, "--out", str(out)], capsys)
    one_line_error(code, err, expect, 2)
    assert str(copy / "manifest.json") in err and not out.exists()


def test_the_deepest_manifest_both_readers_take(bundle, tmp_path):
    from tiue_export.bundle import Bundle

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    (copy / "manifest.json").write_text(nested_64(json.loads((bundle / "manifest.json").read_text())))
    assert Bundle.open(copy).manifest.extra["notes"]


# -- the bundle fuzz test ------------------------------------------------------------------------
def _infer_png(bundle: Path, out: Path, capsys) -> tuple[int, bytes | None, str]:
    """Exit code, the image's pixels (not its metadata, which names the bundle's path), stderr."""
    from PIL import Image

    code, _, err = run_cli(["infer", "--model", str(bundle), "--backend", "onnxruntime", "--prompt", PROMPT, "--out", str(out)], capsys)
    return code, (np.asarray(Image.open(out)).tobytes() if out.is_file() else None), err


def _mutations(value, path=()):
    """(path, new value) for every leaf of the manifest: numbers moved, strings changed, flags flipped, lists cut."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield from _mutations(v, (*path, k))
    elif isinstance(value, list):
        if value:
            yield path, value[:-1]
        for i, v in enumerate(value):
            yield from _mutations(v, (*path, i))
    elif isinstance(value, bool):
        yield path, not value
    elif isinstance(value, (int, float)):
        yield path, value + 1 if isinstance(value, int) else value * 1.5 + 1e-3
    elif isinstance(value, str):
        yield path, value + "x"


def _set(d, path, value):
    for k in path[:-1]:
        d = d[k]
    d[path[-1]] = value


@pytest.mark.filterwarnings("error::RuntimeWarning")  # a numpy warning leaking out is a failure too
def test_fuzz_byte_flips_and_manifest_mutations_never_give_another_image(bundle, tmp_path, capsys):
    """Every outcome is one of: exit 0 with the untouched bundle's image, or a one-line error."""
    code, baseline, err = _infer_png(bundle, tmp_path / "base.png", capsys)
    assert code == 0 and baseline, err
    rng = np.random.default_rng(0)
    files = sorted(p.relative_to(bundle) for p in bundle.rglob("*") if p.is_file())
    manifest = json.loads((bundle / "manifest.json").read_text())
    mutations = list(_mutations(manifest))
    picked = [mutations[i] for i in rng.choice(len(mutations), size=min(30, len(mutations)), replace=False)]
    trials = [("flip", f) for f in files] + [("field", m) for m in picked]
    outcomes = {"same image": 0, "refused": 0}
    for i, (kind, what) in enumerate(trials):
        work = tmp_path / f"b{i}"
        shutil.copytree(bundle, work)
        if kind == "flip":
            target = work / what
            data = bytearray(target.read_bytes())
            for pos in rng.integers(0, len(data), size=int(rng.integers(1, 4))):
                data[pos] ^= 1 << int(rng.integers(0, 8))
            target.write_bytes(bytes(data))
        else:
            m = json.loads((work / "manifest.json").read_text())
            _set(m, *what)
            (work / "manifest.json").write_text(json.dumps(m, indent=2))
        code, png, err = _infer_png(work, tmp_path / f"o{i}.png", capsys)
        if code == 0:
            assert png == baseline, f"{kind} {what}: exit 0 with another image"
            outcomes["same image"] += 1
        else:
            one_line_error(code, err, "")
            assert png is None, f"{kind} {what}: failed but wrote an image"
            outcomes["refused"] += 1
        shutil.rmtree(work)
    print(f"fuzz: {len(trials)} trials: {outcomes}")
    assert outcomes["refused"] >= len(files)  # graph flips at least are caught


def test_verbose_shows_the_traceback(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    args = ["infer", "--prompt", PROMPT, "--out", str(tmp_path / "file" / "sub")]
    code, _, err = run_cli(args, capsys)
    one_line_error(code, err, "is not a directory", 2)
    code, _, err = run_cli(["-v", *args], capsys)
    assert code == 2 and "Traceback" in err and "InputError" in err and err.strip().splitlines()[-1].startswith("error:")


def _truncated_bundle(bundle: Path, dest: Path) -> Path:
    shutil.copytree(bundle, dest)
    graph = dest / "unet_encoder.onnx"
    graph.write_bytes(graph.read_bytes()[: graph.stat().st_size // 2])
    return dest


@pytest.mark.parametrize(
    "case",
    [
        "infer: empty prompts file", "infer: empty model directory", "infer onnxruntime: truncated graph",
        "infer openvino: truncated graph", "infer onnxruntime: not a bundle", "export: empty model directory",
        "calibrate: truncated graph", "check: missing bundle", "check: truncated graph", "bench: missing model",
        "toy eval: missing model", "distill: empty prompts file", "distill: missing teacher",
    ],
)
def test_missing_empty_and_truncated_inputs_across_commands(case, bundle, tmp_path, capsys):
    empty_file = tmp_path / "empty.txt"
    empty_file.write_text("\n \n")
    empty_dir = tmp_path / "empty-dir"
    empty_dir.mkdir()
    out = tmp_path / "out"
    cases = {
        "infer: empty prompts file": (["infer", "--prompts-file", str(empty_file), "--out", str(out)], "no prompt given"),
        "infer: empty model directory": (["infer", "--model", str(empty_dir), "--prompt", PROMPT, "--out", str(out)], str(empty_dir)),
        "infer onnxruntime: truncated graph": (["infer", "--backend", "onnxruntime", "--model", str(tmp_path / "trunc"), "--prompt", PROMPT, "--out", str(out)], "unet_encoder.onnx"),
        "infer openvino: truncated graph": (["infer", "--backend", "openvino", "--model", str(tmp_path / "trunc"), "--prompt", PROMPT, "--out", str(out)], "unet_encoder.onnx"),
        "infer onnxruntime: not a bundle": (["infer", "--backend", "onnxruntime", "--model", str(empty_dir), "--prompt", PROMPT, "--out", str(out)], "not an exported bundle"),
        "export: empty model directory": (["export", "--model", str(empty_dir), "--out", str(out)], str(empty_dir)),
        "calibrate: truncated graph": (["calibrate", str(tmp_path / "trunc")], "unet_encoder.onnx"),
        "check: missing bundle": (["check", str(tmp_path / "nope")], "no such bundle"),
        "check: truncated graph": (["check", str(tmp_path / "trunc"), "--backends", "onnxruntime"], "unet_encoder.onnx"),
        "bench: missing model": (["bench", "--model", str(tmp_path / "nope"), "--runs", "1"], "nope"),
        "toy eval: missing model": (["toy", "eval", "--model", str(tmp_path / "nope")], "nope"),
        "distill: empty prompts file": (["distill", "--teacher", str(empty_dir), "--prompts", str(empty_file), "--out", str(out)], ""),
        "distill: missing teacher": (["distill", "--teacher", str(tmp_path / "nope"), "--prompts", str(empty_file), "--out", str(out)], ""),
    }
    if "truncated" in case:
        _truncated_bundle(bundle, tmp_path / "trunc")
    args, expect = cases[case]
    before = tree(bundle)
    code, stdout, err = run_cli(args, capsys)
    one_line_error(code, err, expect)
    assert not out.exists() and "wrote" not in stdout
    assert tree(bundle) == before


# -- the second sweep: prompts files, prompt text, bodies, sizes, destinations, listen, cluster ----
def _write_prompts(path: Path, case: str) -> tuple[Path, str]:
    """A malformed prompts file of one of generate's formats, and what its error must say."""
    if case == "txt: a line over the length limit":
        path = path / "p.txt"
        path.write_text("a red star\n\n" + "x" * 10_001 + "\n")
        return path, f"{path}:3: the prompt is 10001 characters long"
    if case == "jsonl: a caption that is not text":
        path = path / "p.jsonl"
        path.write_text('{"caption": "a red star"}\n{"caption": 3}\n')
        return path, f"{path}:2: the prompt must be text"
    if case == "jsonl: nested too deeply":
        path = path / "p.jsonl"
        path.write_text('{"caption": "a"}\n' + "[" * 100_000 + "\n")
        return path, f"{path}:2: not valid JSON"
    if case == "csv: a quote left open":
        path = path / "p.csv"
        path.write_text('caption\na red star\n"a blue cross\nmore\n')
        return path, f"{path}:3: not valid CSV"
    if case == "csv: a field over the csv module's limit":
        path = path / "p.csv"
        path.write_text('caption\n"' + "y" * 200_000 + '"\n')
        return path, f"{path}:2: not valid CSV"
    if case == "parquet: not a parquet file":
        path = path / "p.parquet"
        path.write_bytes(b"PAR1 not really PAR1")
        return path, "not a readable Parquet file"
    if case == "parquet: a caption column of numbers":
        import pyarrow as pa
        import pyarrow.parquet as pq

        path = path / "p.parquet"
        pq.write_table(pa.table({"caption": [1, 2]}), path)
        return path, f"{path}: row 1: the prompt must be text"
    raise AssertionError(case)


MALFORMED_PROMPTS = [
    "txt: a line over the length limit", "jsonl: a caption that is not text", "jsonl: nested too deeply", "csv: a quote left open",
    "csv: a field over the csv module's limit", "parquet: not a parquet file", "parquet: a caption column of numbers",
]


@pytest.mark.parametrize("case", MALFORMED_PROMPTS)
def test_malformed_prompts_files_name_the_file_and_line(case, bundle, tmp_path, capsys):
    pytest.importorskip("ray.data", reason="generate needs the serve extra")
    prompts, expect = _write_prompts(tmp_path, case)
    out = tmp_path / "out"
    code, _, err = run_cli(["generate", "--model", str(bundle), "--prompts-file", str(prompts), "--out", str(out)], capsys)
    one_line_error(code, err, expect, 2)
    assert not out.exists()


SURROGATE = "caf" + b"\xe9".decode("utf-8", "surrogateescape")  # argv's text for a Latin-1 byte


@pytest.mark.parametrize(
    "prompt, expect, in_a_file",
    [
        (SURROGATE, "byte 0xe9 at character 3 that is not UTF-8", "p.txt is not UTF-8 text (line 3, byte 15: b'\\xe9')"),
        ("  \t ", "is empty", None),
        ("z" * 10_001, "reads only the first 77 tokens", "p.txt:3: the prompt is 10001 characters long"),
    ],
    ids=["not UTF-8", "whitespace only", "over 10,000 characters"],
)
def test_prompt_rules_are_the_same_in_infer_generate_and_serve(prompt, expect, in_a_file, tiny_sd21, bundle, tmp_path, capsys):
    from tiue_export.serve.api import RequestError, parse_request
    from tiue_export.serve.openai_api import Served, parse_generation

    for model in (["--model", str(tiny_sd21)], ["--model", str(bundle), "--backend", "onnxruntime"]):
        code, _, err = run_cli(["infer", *model, "--prompt", prompt, "--out", str(tmp_path / "o")], capsys)
        one_line_error(code, err, f"--prompt {expect}" if expect == "is empty" else expect, 2)
    assert not (tmp_path / "o").exists()
    code, _, err = run_cli(["check", str(bundle), "--backends", "onnxruntime", "--prompt", prompt], capsys)
    one_line_error(code, err, f"--prompt {expect}" if expect == "is empty" else expect, 2)
    body = json.dumps({"prompt": prompt}).encode()  # JSON escapes a lone surrogate: it reaches the server as one
    for parse in (lambda: parse_request(body, 4, ["full"]), lambda: parse_generation(body, Served(str(bundle), 16, 16), 4)):
        with pytest.raises(RequestError) as refused:
            parse()
        assert refused.value.field == "prompt" and expect in refused.value.message
    if in_a_file:  # a prompts file: blank lines are skipped, the others are held to the rules
        pytest.importorskip("ray.data", reason="generate needs the serve extra")
        (tmp_path / "p.txt").write_text(f"a red star\n\n{prompt}\n", errors="surrogateescape")
        args = ["generate", "--model", str(bundle), "--prompts-file", str(tmp_path / "p.txt"), "--out", str(tmp_path / "g")]
        code, _, err = run_cli(args, capsys)
        one_line_error(code, err, in_a_file, 2)
        if "UTF-8" not in in_a_file:  # calibrate reads its prompts before any work, by the same rules
            before = sorted(p.name for p in bundle.iterdir())
            code, _, err = run_cli(["calibrate", str(bundle), "--prompts", str(tmp_path / "p.txt")], capsys)
            one_line_error(code, err, in_a_file.replace("p.txt", str(tmp_path / "p.txt")) if "p.txt:" in in_a_file else in_a_file, 2)
            assert sorted(p.name for p in bundle.iterdir()) == before


BODIES = {
    "not JSON": (b"{prompt: 1}", None, "not JSON"),
    "not UTF-8": (b"\xff\xfe{}", None, "not JSON"),
    "nested too deeply": (b"[" * 100_000, None, "nested too deeply"),
    "a list, not an object": (b'["a red star"]', None, "JSON object"),
    "no prompt": (b'{"seed": 1}', "prompt", "prompt"),
    "prompt of the wrong type": (b'{"prompt": ["a"]}', "prompt", "must be a string"),
    "seed of the wrong type": (b'{"prompt": "a", "seed": [1]}', "seed", "must be an integer"),
    "a lone surrogate": (b'{"prompt": "\\ud800"}', "prompt", "not UTF-8"),
}


@pytest.mark.parametrize("route", ["/v1/images", "/v1/images/generations"])
@pytest.mark.parametrize("case", list(BODIES))
def test_malformed_bodies_are_refused_naming_the_problem(route, case):
    """What both POST routes make of a body, without Ray (the HTTP answers: test_serve*.py)."""
    from tiue_export.serve.api import RequestError, parse_request
    from tiue_export.serve.openai_api import Served, parse_generation

    raw, field, words = BODIES[case]
    with pytest.raises(RequestError) as refused:
        if route == "/v1/images":
            parse_request(raw, 4, ["full"])
        else:
            parse_generation(raw, Served("b", 16, 16), 4)
    assert refused.value.field == field and words in refused.value.message and len(refused.value.message) < 300


@pytest.mark.parametrize(
    "args, expect",
    [
        (["infer", "--height", "4096", "--width", "4096"], "height 4096 is over this model's largest, 64 (4x its native 16)"),
        (["infer", "--width", "80"], "width 80 is over this model's largest, 64"),
        (["export", "--height", "128"], "height 128 is over this model's largest, 64"),
    ],
)
def test_sizes_far_past_the_model_are_refused_naming_the_limit(args, expect, tiny_sd21, tmp_path, capsys):
    out = tmp_path / "o"
    extra = ["--prompt", PROMPT] if args[0] == "infer" else []
    code, _, err = run_cli([*args, "--model", str(tiny_sd21), *extra, "--out", str(out)], capsys)
    one_line_error(code, err, expect, 2)
    assert not out.exists()


@pytest.mark.parametrize("command", ["check", "toy eval", "bench"])
def test_report_files_are_checked_before_the_work(command, bundle, tmp_path, capsys):
    (tmp_path / "taken.json").mkdir()
    args = {
        "check": ["check", str(bundle), "--backends", "onnxruntime", "--json", str(tmp_path / "taken.json")],
        "toy eval": ["toy", "eval", "--model", str(tmp_path / "nope"), "--json", str(tmp_path / "taken.json")],
        "bench": ["bench", "--model", str(bundle), "--runs", "1", "--json", str(tmp_path / "taken.json"), "--out", str(tmp_path / "b")],
    }[command]
    code, out, err = run_cli(args, capsys)
    one_line_error(code, err, "--json", 2)
    assert "is a directory" in err and "check passed" not in out and not (tmp_path / "b").exists()


@pytest.mark.parametrize("case", ["images: an empty folder", "images: not a folder", "samples: no such prompts file", "model: a bundle"])
def test_distill_vae_refusals_leave_no_run_folder(case, tiny_sd21, bundle, tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    model, data, expect = {
        "images: an empty folder": (tiny_sd21, ["--images", str(tmp_path / "empty")], "holds no images"),
        "images: not a folder": (tiny_sd21, ["--images", str(tmp_path / "nope")], "is not a directory"),
        "samples: no such prompts file": (tiny_sd21, ["--samples", "4", "--prompts", str(tmp_path / "nope.txt")], "no such prompts file"),
        "model: a bundle": (bundle, [], "distill-vae takes the PyTorch model directory"),
    }[case]
    out = tmp_path / "vae"
    code, _, err = run_cli(["distill-vae", "--model", str(model), *data, "--out", str(out), "--steps", "1"], capsys)
    one_line_error(code, err, expect, 2)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["empty"]


@pytest.mark.parametrize("how", ["mocked", "chmod"])
@pytest.mark.parametrize("command", ["infer", "generate"])
def test_a_prompts_file_that_cannot_be_read_is_not_called_missing(command, how, bundle, tmp_path, capsys, monkeypatch):
    """A file in a directory this user may not enter: there, but not readable (click's own
    readability check sees a path that does not exist and lets it through)."""
    import errno

    locked = tmp_path / "locked"
    locked.mkdir()
    prompts = locked / "p.txt"
    prompts.write_text("a red star\n")
    if how == "chmod":
        if os.geteuid() == 0:
            pytest.skip("root enters any directory: the mocked variant covers it")
        locked.chmod(0o600)
    else:
        real = os.stat

        def stat(path, *args, **kwargs):
            if Path(path) == prompts:
                raise PermissionError(errno.EACCES, "Permission denied", str(path))
            return real(path, *args, **kwargs)

        monkeypatch.setattr(os, "stat", stat)
    if command == "generate":
        pytest.importorskip("ray.data", reason="generate needs the serve extra")
        args = ["generate", "--model", str(bundle), "--prompts-file", str(prompts), "--out", str(tmp_path / "o")]
    else:
        args = ["infer", "--model", str(bundle), "--backend", "onnxruntime", "--prompts-file", str(prompts), "--out", str(tmp_path / "o")]
    try:
        code, _, err = run_cli(args, capsys)
    finally:
        locked.chmod(0o755)
    one_line_error(code, err, f"cannot read prompts file {prompts}: Permission denied", 2)
    assert "no such" not in err


def test_install_hints_name_extras_that_exist(monkeypatch):
    import importlib.util

    from tiue_export import errors
    from tiue_export.backends import REGISTRY
    from tiue_export.errors import MissingDependency, require

    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())["project"]
    extras, base = set(project["optional-dependencies"]), {d.split(">")[0].split("[")[0] for d in project["dependencies"]}
    for module, spec in errors.INSTALL.items():
        name = spec.strip("'")
        assert (name.startswith("tiue-export[") and name[12:-1] in extras) or name in base, f"{module}: pip install {spec}"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    assert REGISTRY["openvino"].unavailable(None) == "openvino is not installed: pip install 'tiue-export[openvino]'"
    assert REGISTRY["onnxruntime"].unavailable(None) == "onnxruntime is not installed: pip install onnxruntime"
    monkeypatch.setitem(sys.modules, "nncf", None)  # an import of it fails
    with pytest.raises(MissingDependency, match=r"^nncf is not installed \(calibrate --engine openvino\): pip install 'tiue-export\[openvino\]'$"):
        require("nncf", "calibrate --engine openvino")


@pytest.mark.parametrize("command", ["export", "check"])
def test_a_bundle_given_for_a_model_names_what_the_command_takes(command, bundle, tiny_sd21, tmp_path, capsys):
    args = {
        "export": (["export", "--model", str(bundle), "--out", str(tmp_path / "b")], f"export takes the PyTorch model directory a bundle is made from ({tiny_sd21})"),
        "check": (["check", str(bundle), "--model", str(bundle), "--backends", "onnxruntime"], "the bundle is check's argument"),
    }
    argv, expect = args[command]
    code, _, err = run_cli(argv, capsys)
    one_line_error(code, err, expect, 2)
    assert "--backend " not in err and not (tmp_path / "b").exists()


@pytest.fixture
def held_port():
    """A port a listener holds as Serve's proxy does (SO_REUSEPORT): a second one could share it."""
    import socket

    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock.getsockname()[1]
    finally:
        sock.close()


@pytest.mark.parametrize(
    "args, expect",
    [
        (["--port", "HELD"], "is in use"),
        (["--host", "no-such-host.invalid"], "--host no-such-host.invalid: no such address"),
        (["--host", "203.0.113.77"], "--host 203.0.113.77 is not an address of this machine"),
        (["--port", "80", "PRIVILEGED"], "ports below 1024 need root"),
    ],
    ids=["port in use", "no such host", "not this machine's address", "privileged port"],
)
def test_serve_refuses_an_address_it_cannot_listen_on_before_ray_starts(args, expect, bundle, held_port, capsys, monkeypatch):
    pytest.importorskip("ray.serve", reason="serve needs the serve extra")
    import errno
    import socket

    import ray

    if "PRIVILEGED" in args:  # root may bind port 80: the refusal it would meet otherwise is mocked
        args = args[:-1]
        real_bind = socket.socket.bind

        def bind(self, address):
            if address[1] == 80:
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_bind(self, address)

        monkeypatch.setattr(socket.socket, "bind", bind)
    code, _, err = run_cli(["serve", str(bundle), *[str(held_port) if a == "HELD" else a for a in args]], capsys)
    one_line_error(code, err, expect, 2)
    assert not ray.is_initialized()  # refused before Ray started


@pytest.fixture(scope="module")
def ray_cluster():
    """A local Ray of two CPUs and no GPU, joined by address (so that the commands leave it up)."""
    ray = pytest.importorskip("ray")
    pytest.importorskip("ray.serve", reason="the serve extra")
    ray.init(address="local", num_cpus=2, num_gpus=0, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.mark.parametrize(
    "args, expect",
    [
        (["generate", "--gpus-per-worker", "1"], "--gpus-per-worker 1 asks for more GPUs than the Ray cluster can give one actor (0 GPUs in all)"),
        (["generate", "--cpus-per-worker", "64"], "--cpus-per-worker 64 asks for more CPUs than the Ray cluster can give one actor (2 CPUs in all)"),
        (["generate", "--workers", "3"], "3 workers x --cpus-per-worker 1 is 3 CPUs; the Ray cluster has 2"),
        (["serve", "--gpus-per-replica", "1"], "--gpus-per-replica 1 asks for more GPUs than the Ray cluster can give one actor (0 GPUs in all)"),
        (["serve", "--replicas", "3"], "3 replicas x --cpus-per-replica 1 is 3 CPUs; the Ray cluster has 2"),
    ],
)
def test_asks_the_cluster_cannot_place_are_refused_not_waited_for(args, expect, bundle, ray_cluster, tmp_path, capsys):
    (tmp_path / "p.txt").write_text("a red star\n")
    where = ["--model", str(bundle), "--prompts-file", str(tmp_path / "p.txt"), "--out", str(tmp_path / "o")] if args[0] == "generate" else [str(bundle)]
    code, _, err = run_cli([args[0], *where, *args[1:], "--address", ray_cluster], capsys)
    one_line_error(code, err, expect, 2)
    assert not (tmp_path / "o").exists()  # refused before --out was claimed
