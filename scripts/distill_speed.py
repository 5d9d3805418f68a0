#!/usr/bin/env python
"""Steps per second and peak memory of `tiue-export distill` at SD 2.1-base size (random weights).

The teacher is SD 2.1-base's exact architecture written as code (tiue_export.reference.random_models: UNet 865M
parameters, OpenCLIP-H text tower, SD VAE); nothing is downloaded. The run is the real
`distill` loop (student pass, two CFG teacher calls, KL, Adam + EMA, LoRA step), timed per step
from its log; the first --warmup steps (allocation, cuDNN autotuning) are left out.

    python scripts/distill_speed.py --work /tmp/distill-speed                          # a GPU: 512 px, fp16
    python scripts/distill_speed.py --width-div 16 --resolution 64 --mixed-precision no --steps 3 --warmup 1  # CPU smoke

Prints one line per setting and writes them to --json.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import sys
import time
from pathlib import Path

PROMPTS = [
    "a photo of an astronaut riding a horse on the moon",
    "a watercolor painting of a lighthouse at dawn",
    "a close-up photo of a red fox in the snow",
    "an isometric illustration of a tiny city",
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--work", type=Path, default=Path("/tmp/distill-speed"), help="model and runs go here")
    ap.add_argument("--width-div", type=int, default=1, help="divide channel widths (1: the real size)")
    ap.add_argument("--resolution", type=int, default=512)
    ap.add_argument("--batch-size", type=int, nargs="+", default=[1, 4, 8], help="per device; one run each")
    ap.add_argument("--mixed-precision", default="fp16", choices=["no", "fp16", "bf16"])
    ap.add_argument("--no-gradient-checkpointing", action="store_true")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    if args.steps <= args.warmup:
        ap.error("--steps must be larger than --warmup")

    import torch

    from tiue_export.cli import quiet_libraries, setup_logging
    from tiue_export.distill.config import DistillConfig
    from tiue_export.distill.train import LOG_FILE, distill
    from tiue_export.reference.random_models import build_sd_pipeline

    setup_logging()
    quiet_libraries()
    cuda = torch.cuda.is_available()
    model = args.work / f"sd21-div{args.width_div}"
    if not (model / "model_index.json").exists():
        build_sd_pipeline(model, "sd21", width_div=args.width_div, student=False)
    prompts = args.work / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    device = torch.cuda.get_device_name() if cuda else "cpu"
    print(f"device: {device}; torch {torch.__version__}; model {model}", flush=True)

    rows = []
    for bs in args.batch_size:
        out = args.work / f"student-bs{bs}"
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(Path(str(out) + ".run"), ignore_errors=True)
        cfg = DistillConfig(
            prompts=str(prompts),
            out=str(out),
            teacher=str(model),
            steps=args.steps,
            batch_size=bs,
            resolution=args.resolution,
            mixed_precision=args.mixed_precision,
            gradient_checkpointing=not args.no_gradient_checkpointing,
            checkpoint_every=10**9,  # only the final checkpoint
        )
        if cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t0 = time.perf_counter()
        try:
            distill(cfg)
        except torch.cuda.OutOfMemoryError as e:  # report it and go on with the next size
            print(f"batch {bs}: out of memory ({str(e).splitlines()[0]})", flush=True)
            rows.append({"batch_size": bs, "oom": True})
            continue
        wall = time.perf_counter() - t0
        log = [json.loads(line) for line in (Path(str(out) + ".run") / LOG_FILE).read_text().splitlines()]
        secs = [r["seconds"] for r in log[args.warmup :]]
        step_s = statistics.median(secs)
        row = {
            "device": device,
            "resolution": args.resolution,
            "width_div": args.width_div,
            "batch_size": bs,
            "mixed_precision": args.mixed_precision,
            "gradient_checkpointing": cfg.gradient_checkpointing,
            "steps_timed": len(secs),
            "seconds_per_step_median": step_s,
            "steps_per_second": 1 / step_s,
            "images_per_second": bs / step_s,
            "peak_gpu_memory_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "wall_seconds_incl_load_and_save": wall,
        }
        rows.append(row)
        mem = f"peak GPU {row['peak_gpu_memory_gib']:.1f} GiB" if cuda else f"peak RSS {row['peak_rss_gib']:.1f} GiB"
        print(
            f"batch {bs}: {row['steps_per_second']:.3f} steps/s ({step_s:.3f} s/step, {row['images_per_second']:.2f} images/s), {mem}",
            flush=True,
        )
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(Path(str(out) + ".run"), ignore_errors=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
