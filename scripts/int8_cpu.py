"""int8 vs fp32 on this CPU: image PSNR and latency of the calibrated Q/DQ UNet graphs on ONNX Runtime.

Not a test: a measurement to record in docs/engines.md. It exports a bundle (a built-in/given
model, or a random SD-architecture model at 1/``--width-div`` of SD's widths), calibrates it,
then times every UNet graph and the whole pipeline in fp32 and int8 and, with ``--ablate``,
calibrates again with different float-kept layer sets to see which exclusions pay.

    python scripts/int8_cpu.py --model tiue_export/assets/toy-student --out /tmp/int8 --num 64
    python scripts/int8_cpu.py --arch sd21 --width-div 8 --height 256 --width 256 --out /tmp/int8-sd
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import time
from dataclasses import replace
from pathlib import Path

import numpy as np


def export(args, out: Path) -> Path:
    from tiue_export.build.export import ExportConfig, export_bundle

    if (out / "manifest.json").is_file():
        return out
    model = Path(args.model) if args.model else None
    if model is None:
        from tiue_export.reference.random_models import build_sd_pipeline

        model = build_sd_pipeline(out.parent / f"model-{args.arch}-w{args.width_div}", args.arch, args.width_div)
    export_bundle(ExportConfig(model=model, out=out, height=args.height, width=args.width, validate_batch=1))
    return out


def calibrate(bundle: Path, args, keep=None, method=None) -> dict:
    from tiue_export.build.calibrate import calibrate_bundle
    from tiue_export.build.quantize import CalibrationConfig

    cfg = CalibrationConfig(
        bundle=bundle, prompts=Path(args.prompts) if args.prompts else None, num=args.num,
        keep_float=keep, eval_prompts=args.eval, threads=args.threads,
    )
    if method:
        cfg = replace(cfg, method=method)
    return calibrate_bundle(cfg).quality


def time_graph(runner, feed, repeats: int) -> float:
    """Median seconds of ``repeats`` runs after one warm-up."""
    runner.infer(feed)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        runner.infer(feed)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed(bundle: Path, args) -> dict:
    from tiue_export.runtime import Pipeline
    from tiue_export.sampling import initial_noise

    prompts = ["a photo of a cat", "a small red circle on a black background", "a lighthouse at night", "a cup of coffee"][: args.batch]
    out = {}
    with Pipeline.load(bundle, ["CPUExecutionProvider"], threads=args.threads) as fp32, Pipeline.load(
        bundle, ["CPUExecutionProvider"], threads=args.threads, precision="int8"
    ) as int8:
        text = fp32.encode_text(prompts)
        noise = initial_noise(range(len(prompts)), fp32.latent_shape)
        feats = fp32.encode(noise, text)
        feeds = {
            "unet_encoder": {"latents": noise, "text_embeddings": text},
            "unet_decoder": {**feats, "text_embeddings": text},
            "unet_decoder_fused": {**feats, "text_embeddings": text, "latents": noise},
        }
        for name, feed in feeds.items():
            a = time_graph(fp32.runner(name), feed, args.repeats)
            b = time_graph(int8.runner(name), feed, args.repeats)
            out[name] = {"fp32_ms": a * 1e3, "int8_ms": b * 1e3, "speedup": a / b}
        for label, pipe in (("fp32", fp32), ("int8", int8)):
            pipe(prompts, seed=0)
            t = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                pipe(prompts, seed=0)
                t.append(time.perf_counter() - t0)
            out.setdefault("pipeline", {})[f"{label}_ms"] = statistics.median(t) * 1e3
        p = out["pipeline"]
        p["speedup"] = p["fp32_ms"] / p["int8_ms"]
    return out


def ablate(bundle: Path, args) -> list[dict]:
    """Re-calibrate copies with other float-kept sets; one row per set: image PSNRs."""
    io = ("/conv_in/", "/conv_out/")
    sets = {
        "nothing kept by name": (),
        "conv_in, conv_out": io,
        "+ cross-attention k/v": io + (r"attn2/to_[kv]/",),
        "+ proj_in/proj_out": io + (r"/proj_(in|out)/",),
        "+ conv_shortcut": io + (r"/conv_shortcut/",),
        "+ proj_in/proj_out + conv_shortcut (default)": None,
    }
    rows = []
    for label, keep in sets.items():
        work = bundle.parent / f"{bundle.name}-ablate"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(bundle, work)
        for method in args.methods:
            q = calibrate(work, args, keep, method)
            rows.append({"kept": label, "method": method, **_psnrs(q)})
            print(json.dumps(rows[-1]), flush=True)
        shutil.rmtree(work, ignore_errors=True)
    return rows


def _psnrs(q: dict) -> dict:
    g = {f"{k}_image_db": v["image"]["psnr"] for k, v in q["graphs"].items()}
    return {**g, "e2e_fused_db": q["end_to_end"]["fused"]["psnr"], "e2e_unfused_db": q["end_to_end"]["unfused"]["psnr"]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="student directory (default: a random --arch model)")
    ap.add_argument("--arch", default="sd21")
    ap.add_argument("--width-div", type=int, default=8)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--out", required=True, help="work directory (the bundle goes in OUT/bundle)")
    ap.add_argument("--prompts", default=None)
    ap.add_argument("--num", type=int, default=32)
    ap.add_argument("--eval", type=int, default=4)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--ablate", action="store_true")
    ap.add_argument("--methods", nargs="+", default=["percentile"], help="methods the ablation tries")
    args = ap.parse_args()

    from tiue_export.cli import setup_logging

    setup_logging()
    root = Path(args.out)
    root.mkdir(parents=True, exist_ok=True)
    bundle = export(args, root / "bundle")
    report = {"bundle": str(bundle), "cpu_threads": args.threads, "batch": args.batch}
    if args.ablate:
        report["ablation"] = ablate(bundle, args)
    report["quality"] = _psnrs(calibrate(bundle, args))
    report["speed"] = speed(bundle, args)
    text = json.dumps(report, indent=2, default=lambda x: None if isinstance(x, float) and not np.isfinite(x) else str(x))
    (root / "int8_cpu.json").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
