"""Can teacher pairs be multiplied for free? The teacher's DDIM map under noise perturbations and flips.

``--regression-pairs`` regresses the student onto (z_T, teacher DDIM latent) pairs, and the shipped
student fits its pairs far better than fresh noises. Two ways to get more pairs without more
teacher calls would be to reuse a target for a nearby noise, or to flip or rotate a pair. This
script measures whether either holds for a teacher: for each ``--sigmas`` value s it samples the
teacher from ``sqrt(1 - s^2) z_T + s e`` (s = 1: an unrelated noise) and gives the latent MSE to the
target of ``z_T``; for each flip or rotation f it gives the MSE between ``teacher(f(z_T))`` and
``f(teacher(z_T))`` (0 for an equivariant teacher). On the toy domain it also gives the prompt
accuracy of every row. Prints, and with ``--json`` writes, the numbers.

    python scripts/teacher_map.py [--model TEACHER] [--count 32] [--steps 50] [--sigmas 0.1,0.2,0.5,1] [--json map.json]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pair_fit import toy_scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SEED_BASE = 700_000  # away from the pairs' (1,000,000 up) and from `toy eval`'s (0, 1, 2, ...)
TRANSFORMS = {
    "hflip": lambda a: a[..., ::-1],
    "vflip": lambda a: a[..., ::-1, :],
    "rot90": lambda a: np.rot90(a, 1, (-2, -1)),
}


def parse_sigmas(text: str) -> list[float]:
    try:
        sigmas = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        sigmas = []
    if not sigmas or any(not 0 <= s <= 1 for s in sigmas):
        raise SystemExit(f"error: --sigmas wants comma-separated values in [0, 1], e.g. 0.1,0.2,1; got {text!r}")
    return sigmas


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="teacher directory (default: the built-in toy teacher)")
    ap.add_argument("--prompts", type=Path, default=ROOT / "calibration" / "toy-train-prompts.txt", help="captions (.txt, .jsonl, .csv, .parquet)")
    ap.add_argument("--count", type=int, default=32, help="noises (one prompt each, drawn from --prompts)")
    ap.add_argument("--steps", type=int, default=50, help="teacher DDIM steps")
    ap.add_argument("--sigmas", default="0.1,0.2,0.3,0.5,1", help="perturbation sizes s in [0, 1]")
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    sigmas = parse_sigmas(args.sigmas)
    if args.count < 1 or args.steps < 1:
        raise SystemExit("error: --count and --steps must be >= 1")

    from tiue_export.distill.data import load_prompts
    from tiue_export.errors import InputError
    from tiue_export.io import write_json
    from tiue_export.models import ASSETS
    from tiue_export.pipeline import load_pipeline
    from tiue_export.sampling import initial_noise
    from tiue_export.toy.classifier import load_classifier

    try:
        prompts = load_prompts(args.prompts)
    except InputError as e:
        raise SystemExit(f"error: {e}") from None
    pipe = load_pipeline(args.model or ASSETS / "toy-teacher")
    if not pipe.is_teacher:
        raise SystemExit(f"error: {args.model} is a TiUE student: give a teacher")
    rng = np.random.default_rng(7)
    texts = [prompts[i] for i in rng.integers(0, len(prompts), args.count)]
    seeds = list(range(SEED_BASE, SEED_BASE + args.count))
    sampler = f"ddim:{args.steps}"
    base = pipe.sample(texts, seeds, sampler)
    z = initial_noise(seeds, base.latents.shape[1:])
    other = np.random.default_rng(3).standard_normal(z.shape).astype(np.float32)
    classifier = load_classifier()

    def row(images: np.ndarray, mse: float | None) -> dict:
        out = {"latent_mse": mse}
        scores = toy_scores(images, texts, classifier)
        if scores is not None:
            out["toy_prompt_accuracy"] = scores
        return out

    report = {"model": str(args.model or "toy-teacher"), "count": args.count, "sampler": sampler,
              "target_variance": float(base.latents.var()), "targets": row(base.images, None), "perturbed": {}, "transformed": {}}
    for s in sigmas:
        r = pipe.sample(texts, seeds, sampler, noise=(np.sqrt(1 - s * s) * z + s * other).astype(np.float32))
        report["perturbed"][str(s)] = row(r.images, float(np.mean((r.latents - base.latents) ** 2)))
    for name, f in TRANSFORMS.items():
        r = pipe.sample(texts, seeds, sampler, noise=np.ascontiguousarray(f(z)))
        report["transformed"][name] = row(r.images, float(np.mean((r.latents - np.ascontiguousarray(f(base.latents))) ** 2)))

    def fmt(name: str, r: dict) -> str:
        acc = " ".join(f"{k} {v:.1%}" for k, v in r.get("toy_prompt_accuracy", {}).items())
        mse = "" if r["latent_mse"] is None else f"latent MSE {r['latent_mse']:.4f}  "
        return f"{name:36s} {mse}{acc}"

    print(f"{args.count} noises, teacher {sampler}, target latent variance {report['target_variance']:.3f}")
    print(fmt("targets", report["targets"]))
    for s, r in report["perturbed"].items():
        print(fmt(f"perturbed, s={s} (vs target)", r))
    for name, r in report["transformed"].items():
        print(fmt(f"{name} (vs the same {name} of the target)", r))
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
