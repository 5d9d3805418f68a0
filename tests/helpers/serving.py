"""A ``tiue-export serve`` application on a local Ray (127.0.0.1 only) for one test module, and
``tiue-export infer``'s files to compare what it serves with."""

from __future__ import annotations

import contextlib
import io
import socket


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(bundle, **options):
    """The base URL of ``bundle`` served by one replica (one thread) on a Ray of two CPUs; Ray stops on exit."""
    import ray

    from tiue_export.serve import app
    from tiue_export.serve.config import ServeConfig, worker_config

    worker = worker_config(str(bundle), max_batch=options.pop("max_batch", 4), threads=1)
    cfg = ServeConfig(worker, port=free_port(), **options)
    url = app.start(cfg, {"address": "local", "num_cpus": 2, "object_store_memory": 100 * 2**20})
    try:
        yield url, cfg
    finally:
        app.stop(cfg)
        ray.shutdown()


def infer_pngs(bundle, out, prompt: str, seed: int, num_images: int, capsys, *options) -> dict[int, bytes]:
    """``tiue-export infer`` files of ``prompt`` by seed, read from their own PNG text."""
    from PIL import Image

    from helpers.cli import run_cli

    args = ["infer", "--backend", "onnxruntime", "--model", str(bundle), "--prompt", prompt, "--seed", str(seed)]
    code, _, err = run_cli([*args, "--num-images", str(num_images), "--out", str(out), *options], capsys)
    assert code == 0, err
    files = {}
    for path in out.glob("*.png"):
        data = path.read_bytes()
        files[int(Image.open(io.BytesIO(data)).text["seed"])] = data
    return files
