#!/usr/bin/env python
"""Load benchmark of ``tiue-export serve``: images/s and p50/p99 latency against client
concurrency and --max-batch, on a local Ray; prints a Markdown table and the batched/unbatched
throughput ratio at the highest concurrency.

    python scripts/serve_bench.py BUNDLE [--concurrency 1 4 16] [--max-batch 1 4 8] [--seconds 15]

Clients are closed loops (send, wait for the PNG, send again), one image a request, each loop
bounded by --seconds and --requests. Every (max batch) is one deployment of the same server.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import socket
import time

import numpy as np
import requests

PROMPTS = ("a small red triangle on a blue background", "a large yellow circle on a black background", "a large green cross on a white background")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(url: str, concurrency: int, seconds: float, requests_per_client: int) -> dict:
    """Closed-loop clients for ``seconds``: images/s and latency percentiles."""
    stop = time.monotonic() + seconds

    def client(k: int) -> list[float]:
        latencies = []
        for i in range(requests_per_client):
            if time.monotonic() > stop:
                break
            t0 = time.perf_counter()
            r = requests.post(url + "/v1/images", json={"prompt": PROMPTS[(k + i) % 3], "seed": 1000 * k + i}, timeout=120)
            r.raise_for_status()
            latencies.append(time.perf_counter() - t0)
        return latencies

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(concurrency) as pool:
        latencies = [x for part in pool.map(client, range(concurrency)) for x in part]
    wall = time.perf_counter() - t0
    return {"images": len(latencies), "ips": len(latencies) / wall, "p50": float(np.percentile(latencies, 50)), "p99": float(np.percentile(latencies, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-batch", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--seconds", type=float, default=15.0, help="load per cell")
    ap.add_argument("--requests", type=int, default=2000, help="most requests per client and cell")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of the replica (serve's default: its CPUs)")
    ap.add_argument("--batch-wait-ms", type=float, default=10.0)
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray [default: all]")
    args = ap.parse_args()

    import ray

    from tiue_export.serve import app
    from tiue_export.serve.config import ServeConfig, worker_config

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    rows = []
    try:
        for mb in args.max_batch:
            worker = worker_config(args.bundle, max_batch=mb, threads=args.threads)
            cfg = ServeConfig(worker, replicas=args.replicas, port=port, batch_wait_ms=args.batch_wait_ms, max_queued=max(64, 4 * max(args.concurrency)))
            url = app.start(cfg)
            load(url, max(args.concurrency), 2.0, 50)  # warm-up: graphs open, threads spin up
            for c in args.concurrency:
                r = load(url, c, args.seconds, args.requests)
                rows.append({"max_batch": mb, "concurrency": c, **r})
                print(f"max batch {mb}, concurrency {c}: {r['ips']:.1f} images/s, p50 {r['p50'] * 1000:.0f} ms, p99 {r['p99'] * 1000:.0f} ms ({r['images']} images)", flush=True)
            app.stop(cfg)
    finally:
        ray.shutdown()

    print("\n| max batch | concurrency | images/s | p50 ms | p99 ms |\n| ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        print(f"| {r['max_batch']} | {r['concurrency']} | {r['ips']:.1f} | {r['p50'] * 1000:.0f} | {r['p99'] * 1000:.0f} |")
    top = max(args.concurrency)
    base = next((r["ips"] for r in rows if r["max_batch"] == 1 and r["concurrency"] == top), None)
    best = max((r for r in rows if r["concurrency"] == top), key=lambda r: r["ips"])
    if base:
        print(f"\nbatched / unbatched at concurrency {top}: {best['ips'] / base:.2f}x (max batch {best['max_batch']})")


if __name__ == "__main__":
    main()
