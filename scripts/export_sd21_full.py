#!/usr/bin/env python
"""Export a full-size SD 2.1-base-shaped student (random weights) at 512x512 and time it on CPU.

The architecture is SD 2.1-base's exactly (UNet 865M parameters, OpenCLIP-H text tower, SD VAE),
written as code in tiue_export.reference.random_models: nothing is downloaded. Random weights are enough to check
what size brings: protobuf's 2 GB limit (the fp32 UNet graphs use external data), export time,
memory, file sizes and the one-pass latency of the torch-free runtime.

    python scripts/export_sd21_full.py --work /tmp/sd21-full        # ~15+ GB RAM, many minutes

Prints the numbers docs/bundle.md records.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import sys
import time
from pathlib import Path


def peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/sd21-full"), help="model and bundle go here")
    ap.add_argument("--size", type=int, default=512, help="image height and width")
    ap.add_argument("--precision", choices=["fp32", "fp16"], default="fp32")
    ap.add_argument("--runs", type=int, default=2, help="runtime passes (the first one opens the sessions)")
    args = ap.parse_args()

    from tiue_export.cli import quiet_libraries, setup_logging

    setup_logging()
    quiet_libraries()
    from tiue_export.build.export import ExportConfig, export_bundle
    from tiue_export.reference.random_models import build_sd_pipeline

    model = args.work / "model"
    bundle = args.work / f"bundle-{args.size}-{args.precision}"
    t0 = time.perf_counter()
    if not (model / "model_index.json").exists():
        build_sd_pipeline(model, "sd21")
    print(f"model: {model} ({time.perf_counter() - t0:.0f} s to build)", flush=True)

    t0 = time.perf_counter()
    report = export_bundle(
        ExportConfig(
            model=model,
            out=bundle,
            height=args.size,
            width=args.size,
            precision=args.precision,
            validate_batch=1,  # one image: the CPU validation of a 512x512 UNet takes minutes
        )
    )
    export_s = time.perf_counter() - t0
    gc.collect()
    print(f"export: {export_s:.0f} s, peak RSS {peak_rss_gib():.1f} GiB", flush=True)
    print("seconds:", json.dumps({k: round(v, 1) for k, v in report.seconds.items()}), flush=True)
    for name, size in report.sizes.items():
        print(f"  {name:28s} {size / 2**20:9.1f} MiB (graph + external data)")
    manifest = json.loads((bundle / "manifest.json").read_text())
    print("external data:", {g: e["external_data"] for g, e in manifest["graphs"].items() if e["external_data"]})
    for name, g in report.validation["graphs"].items():
        outs = g.get("outputs", {})
        worst = max((o["max_abs"] or 0 for o in outs.values()), default=0)
        cos = min((o["cosine"] or 1 for o in outs.values()), default=1)
        print(f"  parity {name:20s} ok={g.get('ok')} max_abs={worst:.3g} min_cos={cos:.7f}")
    print("  end to end:", report.validation.get("end_to_end"), flush=True)
    del report
    gc.collect()

    from tiue_export.runtime import Pipeline

    t0 = time.perf_counter()
    with Pipeline.load(bundle) as pipe:
        print(f"runtime: load + sha256 verify {time.perf_counter() - t0:.1f} s, provider {pipe.provider}", flush=True)
        for i in range(args.runs):
            t0 = time.perf_counter()
            result = pipe(["a photo of a cat"], seed=i)
            total = time.perf_counter() - t0
            stages = ", ".join(f"{k} {v:.2f} s" for k, v in result.timings.items())
            print(f"one-pass run {i}: {total:.2f} s ({stages})", flush=True)
    print(f"peak RSS {peak_rss_gib():.1f} GiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
