#!/usr/bin/env python
"""Probe the int8 CPU path: NNCF post-training int8 of a bundle's UNet graphs for OpenVINO, timed
against the same graphs in OpenVINO's bf16, in one run.

    pip install nncf   # not a dependency of tiue-export
    python scripts/openvino_nncf_probe.py BUNDLE --out DIR [--prompts 2] [--runs 3]

Calibration inputs come from the bundle itself (text encoder and UNet encoder on OpenVINO, one
seed per prompt). Writes DIR/<graph>.int8.xml/.bin and DIR/probe.json; prints seconds per graph
and the cosine of z0 (int8 vs bf16). A measurement tool for docs/benchmarks.md, not a product
path: `tiue-export calibrate` (ONNX Runtime Q/DQ graphs) is.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

PROMPTS = ["a photo of a cat", "a red cube on a blue table", "a lighthouse at dusk", "a bowl of fruit"]
GRAPHS = ("unet_encoder", "unet_decoder_fused")
#: Kept in float, as `tiue-export calibrate` keeps them: the UNet's input and output convolutions
#: and the Eq. 11 tail of the fused decoder (top-level Mul/Add nodes), whose error |E_k| amplifies.
KEEP_FLOAT = [r".*conv_in.*", r".*conv_out.*", r"^/(Mul|Add)(_\d+)?$", r".*time_emb.*"]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("bundle", type=Path)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--prompts", type=int, default=2, help="calibration samples (one seed each)")
    ap.add_argument("--runs", type=int, default=3, help="timed runs per graph after one warm-up")
    ap.add_argument("--quantize-all", action="store_true", help="no ignored scope: quantize conv_in/out and the Eq. 11 tail too")
    args = ap.parse_args()

    import nncf
    import openvino as ov

    from tiue_export.runtime import Pipeline

    args.out.mkdir(parents=True, exist_ok=True)
    pipe = Pipeline.load(args.bundle, verify=False, engine="openvino")
    samples = {g: [] for g in GRAPHS}
    for i, prompt in enumerate((PROMPTS * args.prompts)[: args.prompts]):
        _, _, noise = pipe.prepare([prompt], seed=i)
        text = pipe.encode_text([prompt])
        samples["unet_encoder"].append({"latents": noise, "text_embeddings": text})
        samples["unet_decoder_fused"].append({**pipe.encode(noise, text), "text_embeddings": text, "latents": noise})
    pipe.close()

    core = ov.Core()
    report: dict = {"bundle": str(args.bundle), "calibration_samples": args.prompts, "seconds": {}}
    for g in GRAPHS:
        t0 = time.perf_counter()
        q = nncf.quantize(core.read_model(str(args.bundle / f"{g}.onnx")), nncf.Dataset(samples[g]),
                          model_type=nncf.ModelType.TRANSFORMER, subset_size=args.prompts,
                          ignored_scope=None if args.quantize_all else nncf.IgnoredScope(patterns=KEEP_FLOAT, validate=False))
        ov.save_model(q, str(args.out / f"{g}.int8.xml"))
        report.setdefault("quantize_seconds", {})[g] = time.perf_counter() - t0

    z0 = {}
    for kind in ("bf16", "int8"):
        outs: dict = {}
        for g in GRAPHS:
            path = args.bundle / f"{g}.onnx" if kind == "bf16" else args.out / f"{g}.int8.xml"
            compiled = core.compile_model(core.read_model(str(path)), "CPU", {"PERFORMANCE_HINT": "LATENCY"})
            request = compiled.create_infer_request()
            names = [o.get_any_name() for o in compiled.outputs]
            feed = samples[g][0] if g == "unet_encoder" else {**outs["unet_encoder"], **{k: samples[g][0][k] for k in ("text_embeddings", "latents")}}
            times = []
            for _ in range(args.runs + 1):
                t0 = time.perf_counter()
                result = request.infer(feed)
                times.append(time.perf_counter() - t0)
            outs[g] = {n: np.array(result[o]) for n, o in zip(names, compiled.outputs)}
            report["seconds"].setdefault(kind, {})[g] = float(np.median(times[1:]))
            del request, compiled
        z0[kind] = outs["unet_decoder_fused"]["z0"].ravel()
        print(f"{kind}: " + ", ".join(f"{g} {s:.3f} s" for g, s in report["seconds"][kind].items())
              + f"; UNet {sum(report['seconds'][kind].values()):.3f} s", flush=True)
    a, b = z0["bf16"], z0["int8"]
    report["z0_cosine_int8_vs_bf16"] = float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))
    print(f"z0 cosine int8 vs bf16: {report['z0_cosine_int8_vs_bf16']:.6f}")
    (args.out / "probe.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
