"""The OpenVINO graph cache on disk: entries written whole, evicted least recently used first past
the cap, never reused for a changed graph, listed and cleared by ``tiue-export cache``, and safe
with several processes filling and evicting it at once."""

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers.bundles import VARIANTS, tiny_bundle
from helpers.cli import run_cli as run

from tiue_export.backends import graph_cache
from tiue_export.errors import InputError
from tiue_export.files import OWNER


def fill(root: Path, key: str, nbytes: int, used: float) -> Path:
    """An entry of ``nbytes`` last used at ``used`` (seconds since the epoch), released."""
    entry = graph_cache.entry_dir(root, key, Path("src") / key, lambda d: (d / "blob").write_bytes(b"x" * nbytes))
    graph_cache.release(key)
    os.utime(entry, (used, used))
    return entry


def test_entries_are_evicted_least_recently_used_first(tmp_path):
    root = tmp_path / "openvino"
    for i, key in enumerate(["a", "b", "c", "d"]):
        fill(root, key, 1000, used=1_000_000 + 10 * i)
    graph_cache.touch(root / "a")  # used now: the newest
    sizes = {e.key: e.bytes for e in graph_cache.entries(root)}
    assert set(sizes) == {"a", "b", "c", "d"} and all(1000 < n < 1200 for n in sizes.values())
    assert [e.key for e in graph_cache.entries(root)] == ["b", "c", "d", "a"]
    assert json.loads((root / "b" / graph_cache.INFO).read_text())["source"].endswith("src/b")

    removed = graph_cache.evict(root, limit=2 * sizes["a"] + 10)
    assert [e.key for e in removed] == ["b", "c"]
    assert sorted(p.name for p in root.iterdir()) == ["a", "d"], "no staging or removed folders left"
    # an entry this process holds open stays whatever the cap; released, it goes like any other
    graph_cache.entry_dir(root, "d", Path("src/d"))
    assert [e.key for e in graph_cache.evict(root, limit=0)] == ["a"]
    graph_cache.release("d")
    assert [e.key for e in graph_cache.evict(root, limit=0)] == ["d"] and graph_cache.entries(root) == []


def test_a_writer_killed_before_its_rename_leaves_a_folder_that_is_swept(tmp_path):
    """The staging folder names its writer until the rename (its owner file goes only after it):
    a writer killed just before the rename leaves a folder the next writer removes; a finished
    entry holds no owner file."""
    root = tmp_path / "openvino"
    script = (
        "import os, sys; from pathlib import Path; from tiue_export.backends import graph_cache\n"
        "os.rename = lambda *a: os._exit(9)  # killed once the folder is full, before its rename\n"
        "graph_cache.entry_dir(Path(sys.argv[1]), 'k', Path('src'), lambda d: (d / 'blob').write_bytes(b'x'))\n"
    )
    proc = subprocess.run([sys.executable, "-c", script, str(root)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    (left,) = [p for p in root.iterdir()]
    assert left.name.startswith(".k.entry-") and (left / OWNER).is_file()
    entry = fill(root, "k", 10, used=1_000_000)  # a new process's first staging folder sweeps
    assert sorted(p.name for p in root.iterdir()) == ["k"] and not (entry / OWNER).exists()


def test_remains_without_info_are_no_entry_and_a_whole_entry_is_never_set_aside(tmp_path):
    """A folder named like an entry but without its info file (what a compile leaves where its
    entry was evicted) is replaced by a whole entry; a folder that turns out whole when set aside
    (another process renamed its entry in meanwhile) goes back in place."""
    root = tmp_path / "openvino"
    (root / "k" / "compiled").mkdir(parents=True)
    entry = graph_cache.entry_dir(root, "k", Path("src/k"), lambda d: (d / "blob").write_bytes(b"x"))
    graph_cache.release("k")
    assert (entry / graph_cache.INFO).is_file() and (entry / "blob").is_file() and sorted(p.name for p in root.iterdir()) == ["k"]
    graph_cache._set_aside(entry)  # whole: it stays
    assert (entry / "blob").is_file() and sorted(p.name for p in root.iterdir()) == ["k"]
    (root / "j").mkdir()
    graph_cache._set_aside(root / "j")
    assert sorted(p.name for p in root.iterdir()) == ["k"]


def test_an_entry_held_twice_stays_until_both_release(tmp_path):
    """Pipelines share entries (a bundle's bf16 and int8 variants, its full and tiny VAE
    runtimes): one holder closing must not let the other's entry go."""
    root = tmp_path / "openvino"
    fill(root, "shared", 1000, used=1_000_000)
    graph_cache.entry_dir(root, "shared", Path("src/shared"))
    graph_cache.entry_dir(root, "shared", Path("src/shared"))
    graph_cache.release("shared")
    assert graph_cache.evict(root, limit=0) == [] and (root / "shared").is_dir()
    graph_cache.release("shared")
    assert [e.key for e in graph_cache.evict(root, limit=0)] == ["shared"]


def test_an_entry_that_cannot_be_removed_stays_with_a_warning(tmp_path, monkeypatch):
    """A read-only or shared cache over its cap: the graph already loaded, so eviction only warns."""
    root = tmp_path / "openvino"
    fill(root, "a", 1000, used=1_000_000)
    warnings = []

    def refuse(*args):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(graph_cache.os, "rename", refuse)
    monkeypatch.setattr(graph_cache.log, "warning", lambda msg, *args: warnings.append(msg % args))
    assert graph_cache.evict(root, limit=0) == []
    assert (root / "a").is_dir() and len(warnings) == 1 and "cannot remove" in warnings[0]


def test_cache_size_cap_parsing(monkeypatch):
    assert graph_cache.parse_size("10GB") == 10 * 1000**3
    assert graph_cache.parse_size("2 GiB") == 2 * 1024**3
    assert graph_cache.parse_size("1.5m") == 1_500_000 and graph_cache.parse_size("123") == 123
    monkeypatch.delenv("TIUE_EXPORT_OV_CACHE_MAX", raising=False)
    assert graph_cache.max_bytes() == graph_cache.DEFAULT_MAX_BYTES
    monkeypatch.setenv("TIUE_EXPORT_OV_CACHE_MAX", "ten gigs")
    with pytest.raises(InputError, match="TIUE_EXPORT_OV_CACHE_MAX 'ten gigs': give a number of bytes"):
        graph_cache.max_bytes()


def test_cache_command_shows_and_clears(tmp_path, monkeypatch, capsys):
    root = Path(os.environ["TIUE_EXPORT_CACHE"]) / "openvino"
    for i, key in enumerate(["old", "mid", "new"]):
        fill(root, key, 2000, used=1_000_000 + i)
    code, out, err = run(["cache", "show"], capsys)
    assert code == 0, err
    assert re.match(rf"{re.escape(str(root))}: 3 entries, 6\.\d kB \(cap 10\.0 GB\)$", out.splitlines()[0])
    lines = out.splitlines()[1:]
    assert [line.split()[0] for line in lines] == ["old", "mid", "new"] and lines[0].endswith("src/old")

    code, out, err = run(["cache", "clear", "--max-size", "5kB"], capsys)
    assert code == 0, err
    assert out.startswith("removed 1 entry (2.") and "2 left" in out
    assert sorted(p.name for p in root.iterdir()) == ["mid", "new"]
    code, out, _ = run(["cache", "clear"], capsys)
    assert code == 0 and out.startswith("removed 2 entries") and "0 left (0 B)" in out

    code, _, err = run(["cache", "clear", "--max-size", "lots"], capsys)
    assert code == 2 and "'lots': give a number of bytes" in err
    monkeypatch.setenv("TIUE_EXPORT_OV_CACHE", "0")
    code, _, err = run(["cache", "show"], capsys)
    assert code == 2 and err.strip() == "error: the graph cache is off (TIUE_EXPORT_OV_CACHE=0): nothing to show or clear"


# --- with OpenVINO ---------------------------------------------------------------------------

ov = pytest.importorskip("openvino", reason="openvino is not installed (pip install 'tiue-export[openvino]')")


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    return tiny_bundle(tiny_models, tmp_path_factory, "sd21", **VARIANTS["sd21"])


def test_loaders_evict_past_the_cap_and_a_changed_graph_misses(bundle, tmp_path, monkeypatch):
    from tiue_export.runtime import OvLoader, OvRunner, Pipeline

    cache = tmp_path / "ovcache"
    latents = np.ones((1, *Pipeline.load(bundle).latent_shape), np.float32)

    def load(graph, precision="bf16"):
        loader = OvLoader(graph, precision, cache_dir=cache)
        with OvRunner(loader) as r:
            r.infer({"latents": latents})
        return loader.key()

    vae = load(bundle / "vae_decoder.onnx")
    one = graph_cache.entries(cache)[0].bytes
    fp32 = load(bundle / "vae_decoder.onnx", "fp32")  # the same graph compiled from its ONNX: another entry
    assert fp32 != vae and {e.key for e in graph_cache.entries(cache)} == {vae, fp32}

    monkeypatch.setenv("TIUE_EXPORT_OV_CACHE_MAX", str(one))
    again = load(bundle / "vae_decoder.onnx")  # a hit: the newest, so the fp32 entry goes
    assert again == vae and [e.key for e in graph_cache.entries(cache)] == [vae]

    # a graph rewritten behind the manifest (same bytes, new mtime) never meets its old entry
    changed = tmp_path / "vae_decoder.onnx"
    changed.write_bytes((bundle / "vae_decoder.onnx").read_bytes())
    new = load(changed)
    assert new != vae and [e.key for e in graph_cache.entries(cache)] == [new]

    monkeypatch.setenv("TIUE_EXPORT_OV_CACHE_MAX", "much")
    with pytest.raises(InputError, match="TIUE_EXPORT_OV_CACHE_MAX 'much'"):
        load(changed)


def test_an_entry_evicted_under_a_loader_is_made_again(bundle, tmp_path, monkeypatch):
    """Another process may evict the entry between its lookup and the compile: the loader makes
    it again and compiles the fp16 IR (not the bundle's fp32 ONNX), without a warning. (The failed
    compile leaves a folder of that name holding only OpenVINO's CACHE_DIR: no entry.)"""
    from tiue_export.backends import openvino as ov_backend
    from tiue_export.runtime import OvLoader

    cache, compiled, warnings = tmp_path / "ovcache", [], []
    lookup, compile_ = OvLoader.cached, OvLoader.compile

    def cached_then_evicted(self):
        found = lookup(self)
        if not compiled:
            shutil.rmtree(found[0].parent)  # evicted right after the lookup, before the compile
        return found

    def compile_seen(self, source, **extra):
        compiled.append(Path(source).name)
        return compile_(self, source, **extra)

    monkeypatch.setattr(OvLoader, "cached", cached_then_evicted)
    monkeypatch.setattr(OvLoader, "compile", compile_seen)
    monkeypatch.setattr(ov_backend.log, "warning", lambda *a: warnings.append(a[0] % a[1:]))
    loader = OvLoader(bundle / "vae_decoder.onnx", "bf16", cache_dir=cache)
    assert loader() is not None
    assert compiled == ["model.xml", "model.xml"] and warnings == [], (compiled, warnings)
    assert [e.key for e in graph_cache.entries(cache)] == [loader.key()] and (cache / loader.key() / "model.xml").is_file()
    loader.release_entry()


def test_a_damaged_entry_is_discarded_and_made_again(bundle, tmp_path, monkeypatch):
    """An entry whose IR no longer reads (a disk error, a truncated copy) is removed after the
    failed compile and made again from the bundle by the second attempt, without a warning."""
    from tiue_export.backends import openvino as ov_backend
    from tiue_export.runtime import OvLoader

    cache, warnings = tmp_path / "ovcache", []
    loader = OvLoader(bundle / "vae_decoder.onnx", "bf16", cache_dir=cache)
    assert loader() is not None
    loader.release_entry()
    shutil.rmtree(cache / loader.key() / "compiled")
    (cache / loader.key() / "model.xml").write_text("<net broken")
    monkeypatch.setattr(ov_backend.log, "warning", lambda *a: warnings.append(a[0] % a[1:]))
    again = OvLoader(bundle / "vae_decoder.onnx", "bf16", cache_dir=cache)
    assert again() is not None and warnings == []
    assert (cache / again.key() / "model.xml").read_text().startswith("<?xml")
    again.release_entry()


WORKER = """
import sys, numpy as np
from pathlib import Path
from tiue_export.runtime import OvLoader, OvRunner
bundle, cache = Path(sys.argv[1]), Path(sys.argv[2])
# each process loads both graphs twice in its own order, with a cap of one entry: it fills, hits,
# and evicts what the others hold
order = ["vae_decoder", "text_encoder"] if int(sys.argv[3]) % 2 else ["text_encoder", "vae_decoder"]
for name in order * 2:
    with OvRunner(OvLoader(bundle / f"{name}.onnx", "bf16", cache_dir=cache)) as r:
        pass
print("ok")
"""


def test_processes_share_and_evict_the_cache_at_once(bundle, tmp_path):
    cache = tmp_path / "ovcache"
    env = {**os.environ, "TIUE_EXPORT_OV_CACHE_MAX": "1", "PYTHONPATH": os.pathsep.join(sys.path)}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(bundle), str(cache), str(i)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for i in range(4)
    ]
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0 and out.strip() == "ok", err
        assert "Traceback" not in err
    # whatever was evicted, what is left is whole: each entry's IR and info are complete
    for e in graph_cache.entries(cache):
        assert (e.path / "model.xml").is_file() and (e.path / "model.bin").is_file() and (e.path / graph_cache.INFO).is_file()
        ov.Core().read_model(str(e.path / "model.xml"))
    assert not [p.name for p in cache.iterdir() if p.name.startswith(".")], "staging or removed folders left behind"
