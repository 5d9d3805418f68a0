#!/usr/bin/env python
"""Load benchmark of ``tiue-export serve``: images/s and p50/p99 latency against client
concurrency and --max-batch, on a local Ray; prints a Markdown table and the batched/unbatched
throughput ratio at the highest concurrency.

    python scripts/serve_bench.py BUNDLE [--concurrency 1 4 16] [--max-batch 1 4 8] [--seconds 15] [--rounds 1]

Clients are closed loops (send, wait for the PNG, send again), one image a request, each loop
bounded by --seconds and --requests. Every (max batch) is one deployment of the same server.
On a machine shared with other jobs their load drifts over minutes, and the cells of one max
batch run back to back: ``--rounds N`` deploys the max batches N times, in reverse order every
other round, and gives each cell's median and each round's ratio.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import socket
import time

import numpy as np
import requests

PROMPTS = (
    "a small red triangle on a blue background",
    "a large yellow circle on a black background",
    "a large green cross on a white background",
)


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
    return {
        "images": len(latencies),
        "ips": len(latencies) / wall,
        "p50": float(np.percentile(latencies, 50)),
        "p99": float(np.percentile(latencies, 99)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle")
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 16])
    ap.add_argument("--max-batch", type=int, nargs="+", default=[1, 4, 8])
    ap.add_argument("--seconds", type=float, default=15.0, help="load per cell")
    ap.add_argument("--requests", type=int, default=2000, help="most requests per client and cell")
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads of the replica (serve's default: its CPUs)")
    ap.add_argument("--batch-wait-ms", type=float, default=0.0, help="as serve's (its default)")
    ap.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray [default: all]")
    ap.add_argument("--rounds", type=int, default=1, help="deploy every max batch this many times, alternating the order")
    args = ap.parse_args()

    import ray

    from tiue_export.serve import app
    from tiue_export.serve.config import ServeConfig, worker_config

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    port = free_port()
    rows = []
    try:
        for round_ in range(args.rounds):
            for mb in args.max_batch if round_ % 2 == 0 else args.max_batch[::-1]:
                worker = worker_config(args.bundle, max_batch=mb, threads=args.threads)
                cfg = ServeConfig(
                    worker,
                    replicas=args.replicas,
                    port=port,
                    batch_wait_ms=args.batch_wait_ms,
                    max_queued=max(64, 4 * max(args.concurrency)),
                )
                url = app.start(cfg)
                load(url, max(args.concurrency), 2.0, 50)  # warm-up: graphs open, threads spin up
                for c in args.concurrency:
                    r = load(url, c, args.seconds, args.requests)
                    rows.append({"round": round_, "max_batch": mb, "concurrency": c, **r})
                    print(
                        f"round {round_ + 1}, max batch {mb}, concurrency {c}: {r['ips']:.1f} images/s, "
                        f"p50 {r['p50'] * 1000:.0f} ms, p99 {r['p99'] * 1000:.0f} ms ({r['images']} images)",
                        flush=True,
                    )
                app.stop(cfg)
    finally:
        ray.shutdown()

    def cell(mb: int, c: int, key: str) -> float:
        return float(np.median([r[key] for r in rows if r["max_batch"] == mb and r["concurrency"] == c]))

    many = " (median of rounds)" if args.rounds > 1 else ""
    print(f"\n| max batch | concurrency | images/s{many} | p50 ms | p99 ms |\n| ---: | ---: | ---: | ---: | ---: |")
    for mb in args.max_batch:
        for c in args.concurrency:
            print(f"| {mb} | {c} | {cell(mb, c, 'ips'):.1f} | {cell(mb, c, 'p50') * 1000:.0f} | {cell(mb, c, 'p99') * 1000:.0f} |")
    top = max(args.concurrency)
    if 1 in args.max_batch and len(args.max_batch) > 1:
        for mb in (m for m in args.max_batch if m != 1):
            per_round = [
                next(r["ips"] for r in rows if r["round"] == i and r["max_batch"] == mb and r["concurrency"] == top)
                / next(r["ips"] for r in rows if r["round"] == i and r["max_batch"] == 1 and r["concurrency"] == top)
                for i in range(args.rounds)
            ]
            rounds = f" (rounds: {', '.join(f'{x:.2f}x' for x in per_round)})" if args.rounds > 1 else ""
            print(f"batched / unbatched at concurrency {top}, max batch {mb}: {cell(mb, top, 'ips') / cell(1, top, 'ips'):.2f}x{rounds}")


if __name__ == "__main__":
    main()
