"""``tiue-export generate`` on a real local Ray (started and stopped in this module): one PNG per
(prompt, seed), a parquet index, and a run killed mid-way that resumes with no duplicates and no gaps.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest

pytest.importorskip("ray.data", reason="the serve extra: pip install 'tiue-export[serve]'")
pq = pytest.importorskip("pyarrow.parquet")

from helpers.bundles import tiny_bundle  # noqa: E402
from helpers.cli import run_cli  # noqa: E402

pytestmark = pytest.mark.slow

COLORS = ("red", "blue", "green", "yellow", "white", "black", "orange", "purple", "pink", "grey")
SHAPES = ("triangle", "circle", "square", "cross", "star")


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    return tiny_bundle(tiny_models, tmp_path_factory, "sd21")


@pytest.fixture(scope="module")
def cluster():
    """A local Ray of two CPUs; generate joins it with --address (as on a real cluster)."""
    import ray

    ray.init(address="local", num_cpus=2, object_store_memory=100 * 2**20, include_dashboard=False, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


def command(bundle, prompts, out, address, *extra):
    return [
        sys.executable, "-m", "tiue_export", "generate", "--model", str(bundle), "--prompts-file", str(prompts),
        "--out", str(out), "--address", address, "--threads", "1", *extra,
    ]


def test_killed_run_resumes_with_no_duplicates_and_no_gaps(bundle, cluster, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("".join(f"a {c} {s}\n" for c in COLORS for s in SHAPES))  # 50 prompts
    out = tmp_path / "out"
    argv = command(bundle, prompts, out, cluster, "--num-images", "4", "--workers", "2", "--batch-size", "2")

    first = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and first.poll() is None:  # bounded: until the first committed batches
        if len(list((out / ".index").glob("*.parquet"))) >= 3:
            break
        time.sleep(0.1)
    assert first.poll() is None, f"generate ended before it could be killed:\n{first.stdout.read()}"
    os.kill(first.pid, signal.SIGKILL)
    first.wait(timeout=30)
    before = len(list(out.glob("*.png")))
    assert 0 < before < 200, before
    assert not (out / "index.parquet").exists()

    t0 = time.perf_counter()
    second = subprocess.run(argv, capture_output=True, text=True, timeout=300)
    seconds = time.perf_counter() - t0
    assert second.returncode == 0, second.stderr[-2000:]
    print(f"killed with {before} PNGs written; resumed in {seconds:.1f} s: {second.stdout.strip().splitlines()[-1]}")

    files = sorted(p.name for p in out.glob("*.png"))
    rows = pq.read_table(out / "index.parquet").to_pylist()
    assert len(files) == 200 and len(rows) == 200
    assert sorted(r["file"] for r in rows) == files
    assert len({(r["prompt"], r["seed"]) for r in rows}) == 200
    assert {r["seed"] for r in rows} == {0, 1, 2, 3}
    assert not (out / ".index").exists() and not list(out.glob(".*.tmp"))
    meta = json.loads(rows[0]["metadata"])
    assert meta["model"] == str(bundle) and meta["prompt"] == rows[0]["prompt"]
    assert "there before" in second.stdout and " 0 there before" not in second.stdout

    again = subprocess.run(argv, capture_output=True, text=True, timeout=120)  # complete: nothing to draw
    assert again.returncode == 0 and "200 there before, 0 drawn" in again.stdout
    assert len(pq.read_table(out / "index.parquet")) == 200


def test_parquet_prompts_and_png_equal_to_infer(bundle, cluster, tmp_path, capsys):
    import pyarrow as pa

    prompts = tmp_path / "prompts.parquet"
    pa.parquet.write_table(pa.table({"caption": ["a red star", "a blue cross"]}), prompts)
    out = tmp_path / "out"
    done = subprocess.run(command(bundle, prompts, out, cluster, "--num-images", "2", "--seed", "7"), capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = pq.read_table(out / "index.parquet").to_pylist()
    assert [(r["prompt"], r["seed"]) for r in rows] == [("a red star", 7), ("a red star", 8), ("a blue cross", 7), ("a blue cross", 8)]
    png = tmp_path / "infer.png"
    code, _, err = run_cli(["infer", "--backend", "onnxruntime", "--model", str(bundle), "--prompt", "a blue cross", "--seed", "8", "--out", str(png)], capsys)
    assert code == 0, err
    assert (out / rows[3]["file"]).read_bytes() == png.read_bytes()


@pytest.mark.parametrize(
    "make, extra, message",
    [
        (None, (), "no such prompts file"),
        ("prompts.xml", (), "unknown prompts format"),
        ("empty.txt", (), "no prompts found"),
        ("prompts.txt", ("--seed", str(2**63 - 1), "--num-images", "2"), "largest seed"),
        ("prompts.txt", ("--backend", "onnxruntime-int8"), "int8"),
        ("prompts.txt", ("--vae", "tiny"), "re-export it with --vae tiny"),
        ("prompts.txt", ("--out", "OTHER"), "another run"),
        ("prompts.txt", ("--out", "FOREIGN"), "not written by generate"),
    ],
)
def test_bad_input_is_one_line_before_ray_starts(bundle, tmp_path, capsys, make, extra, message):
    prompts = tmp_path / (make or "missing.txt")
    if make:
        prompts.write_text("" if make == "empty.txt" else "a red star\n")
    out = tmp_path / "out"
    if "OTHER" in extra:
        (tmp_path / "other").mkdir()
        (tmp_path / "other" / "generate.json").write_text(json.dumps({"model": "elsewhere"}))
    if "FOREIGN" in extra:
        (tmp_path / "foreign").mkdir()
        (tmp_path / "foreign" / "holiday.png").write_bytes(b"")
    extra = tuple({"OTHER": str(tmp_path / "other"), "FOREIGN": str(tmp_path / "foreign")}.get(a, a) for a in extra)
    argv = ["generate", "--model", str(bundle), "--prompts-file", str(prompts), "--out", str(out), *extra]
    code, _, err = run_cli(argv, capsys)
    assert code == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
