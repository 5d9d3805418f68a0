"""Peak memory and cold start of the torch-free runtime alone, each measured in a fresh process."""

from __future__ import annotations

import json
import time

from ...errors import TiueError
from .timing import open_runtime


def runtime_memory(backend: str, bundle_path, threads: int = 0, timeout: float = 3600) -> dict:
    """Peak resident memory and cold start of the torch-free runtime alone: a fresh Python process
    loads the bundle with ``backend`` and makes one image, with every graph held (a service) and
    with ``low_memory`` (one graph at a time).

    ``first_image_s`` is a fresh process's time from launch to its first image. OpenVINO runs
    first with an empty graph cache (``*_empty_cache``: converting and compiling every graph), then
    with the cache that run filled, as a ``serve`` replica after the first finds it; the peak and
    the ratio to the weights are the cached run's. ``weight_mb`` is the bundle's bytes of the
    graphs one image loads; ``held_weight_mb`` the bytes of the files the runtime maps (OpenVINO's
    fp16 IR where it stores the float graphs so)."""
    import tempfile

    from ...backends import get

    engine = get(backend).engine
    out = {}
    with tempfile.TemporaryDirectory(prefix="tiue-bench-cache-") as cache:
        env = {"TIUE_EXPORT_CACHE": cache, "TIUE_EXPORT_OV_CACHE": "1"}
        if engine == "openvino":
            first = _runtime_memory_run(backend, bundle_path, threads, False, timeout, env)
            out.update({f"{k}_empty_cache": v for k, v in first.items()})
        out.update(_runtime_memory_run(backend, bundle_path, threads, False, timeout, env))
        low = _runtime_memory_run(backend, bundle_path, threads, True, timeout, env)
        out.update({f"{k}_low_memory": v for k, v in low.items()})
    weights = _runtime_weight_bytes(bundle_path, get(backend).variant)
    out["weight_mb"] = weights / 2**20
    out["peak_over_weights"] = out["peak_rss_mb"] / out["weight_mb"]
    out["peak_over_held_weights"] = out["peak_rss_mb"] / out["held_weight_mb"]
    out["peak_over_weights_low_memory"] = out["peak_rss_mb_low_memory"] / out["weight_mb"]
    return out


def runtime_memory_child(backend: str, bundle_path: str, threads: int, low_memory: bool, launched: float) -> dict:
    """One image in this (fresh) process, for :func:`runtime_memory`: its peak RSS, the bytes of
    the graph files it loaded, and the seconds since ``launched`` (the parent's clock at launch)."""
    import resource
    import sys

    rt = open_runtime(backend, bundle_path, threads, low_memory)
    r = rt(["a photo of a cat"], seed=0)
    first = time.time() - launched
    held = 0
    for name in rt.manifest.chains["fused"].graphs:
        loader = rt.graphs.factories[name]().loader
        cached = loader.cached() if hasattr(loader, "cached") else None
        path = cached[0] if cached else loader.path
        beside = [path.with_suffix(".bin")] if path.suffix == ".xml" else list(path.parent.glob(path.name + ".data*"))
        held += sum(f.stat().st_size for f in [path, *beside] if f.is_file())
    # VmHWM, not ru_maxrss: Linux carries the forking parent's high-water mark into ru_maxrss
    # across exec, so a child of a big process would report the parent's memory.
    try:
        hwm = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:")).split()[1]
        peak = int(hwm) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "peak_rss_mb": peak, "torch_loaded": "torch" in sys.modules, "seconds": sum(r.timings.values()),
        "first_image_s": first, "held_weight_mb": held / 2**20,
    }


def _runtime_memory_run(backend: str, bundle_path, threads: int, low_memory: bool, timeout: float, env: dict | None = None) -> dict:
    import os
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from tiue_export.verify.bench.runtime_memory import runtime_memory_child\n"
        "a = sys.argv\n"
        "print(json.dumps(runtime_memory_child(a[1], a[2], int(a[3]), a[4] == '1', float(a[5]))))\n"
    )
    launched = time.time()
    argv = [sys.executable, "-c", code, backend, str(bundle_path), str(threads), "1" if low_memory else "0", repr(launched)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TiueError(f"the {backend} runtime failed in its own process: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _runtime_weight_bytes(bundle_path, precision: str | None) -> int:
    """Bytes on disk of the graphs (and their external data) one fused one-pass run loads."""
    from ...bundle import Bundle

    bundle = Bundle.open(bundle_path, verify=False).with_variant(precision)
    total = 0
    for name in bundle.manifest.chains["fused"].graphs:
        path = bundle.graph_path(name)
        total += path.stat().st_size
        total += sum(f.stat().st_size for f in path.parent.glob(path.name + ".data*"))
        total += sum((path.parent / f).stat().st_size for f in bundle.manifest.graphs[name].external_data if path.suffix == ".xml")
    return total

