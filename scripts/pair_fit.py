"""Memorisation or generalisation: a student on its training pairs' noises against fresh noises.

A run trained with ``--regression-pairs`` holds the teacher's (noise, latent) pairs in
``RUN/pairs/``. This script samples the student one pass from those very noises and from fresh
seeds, for the same prompts, and prints (and with ``--json`` writes):

* the latent MSE between the student's z0 and the teacher's on the pair noises;
* on the toy domain, prompt accuracy (all captions, small and large objects) of the teacher's
  targets, of the student on the pair noises, and of the student on fresh noises.

A student close to its teacher on the pair noises but not on fresh ones has memorised the pairs.

    python scripts/pair_fit.py --model runs/toy-student --run runs/toy-student.run [--count 256] [--json fit.json]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

#: Fresh-noise seeds: away from the pairs' (1,000,000 up) and from `toy eval`'s (0, 1, 2, ...).
FRESH_SEED_BASE = 500_000


def read_pairs(run: Path, count: int | None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from tiue_export.distill.pairs import PAIRS_DIR, SPEC_FILE, PairSpec, load_pairs

    spec_file = run / PAIRS_DIR / SPEC_FILE
    if not spec_file.exists():
        raise SystemExit(f"error: no teacher pairs in {run / PAIRS_DIR}: give the run directory of a --regression-pairs run")
    spec = json.loads(spec_file.read_text())
    noise, latents, texts = load_pairs(run, PairSpec(**{**spec, "latent_shape": tuple(spec["latent_shape"])}))
    n = len(texts) if count is None else min(count, len(texts))
    return noise[:n], latents[:n], texts[:n]


def toy_scores(images: np.ndarray, texts: list[str], classifier) -> dict | None:
    from tiue_export.toy import domain

    try:
        attrs = [domain.parse_caption(t) for t in texts]
    except Exception:  # not toy captions: accuracy does not apply
        return None
    out = {"all": classifier.accuracy(images, attrs)["all"]}
    for size in ("small", "large"):
        keep = [i for i, a in enumerate(attrs) if a.size == size]
        if keep:
            out[size] = classifier.accuracy(images[keep], [attrs[i] for i in keep])["all"]
    return out


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="student directory (distill's --out, or distill-export's)")
    ap.add_argument("--run", required=True, type=Path, help="the run directory holding pairs/")
    ap.add_argument("--count", type=int, default=256, help="pairs to use (the first N)")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)

    from tiue_export.io import write_json
    from tiue_export.pipeline import load_pipeline
    from tiue_export.toy.classifier import load_classifier

    noise, targets, texts = read_pairs(args.run, args.count)
    pipe = load_pipeline(args.model)
    if pipe.is_teacher:
        raise SystemExit(f"error: {args.model} is a teacher: give a TiUE student")
    on_pairs, fresh, z0 = [], [], []
    with torch.no_grad():
        for lo in range(0, len(texts), args.batch_size):
            batch = texts[lo : lo + args.batch_size]
            seeds = list(range(FRESH_SEED_BASE + lo, FRESH_SEED_BASE + lo + len(batch)))
            r = pipe.sample(batch, seeds, "one-pass", noise=noise[lo : lo + len(batch)].numpy())
            on_pairs.append(r.images)
            z0.append(r.latents)
            fresh.append(pipe.sample(batch, seeds, "one-pass").images)
        teacher_images = np.concatenate([pipe.decode_latents(targets[lo : lo + args.batch_size]) for lo in range(0, len(texts), args.batch_size)])
    z0, on_pairs, fresh = np.concatenate(z0), np.concatenate(on_pairs), np.concatenate(fresh)
    report = {
        "model": str(args.model),
        "run": str(args.run),
        "pairs": len(texts),
        "latent_mse_on_pair_noises": float(np.mean((z0 - targets.numpy()) ** 2)),
    }
    classifier = load_classifier()
    rows = {"teacher targets": teacher_images, "student, pair noises": on_pairs, "student, fresh noises": fresh}
    for name, images in rows.items():
        scores = toy_scores(images, texts, classifier)
        if scores is not None:
            report.setdefault("toy_prompt_accuracy", {})[name] = scores
    print(f"latent MSE, student vs teacher on the {len(texts)} pair noises: {report['latent_mse_on_pair_noises']:.4f}")
    for name, s in report.get("toy_prompt_accuracy", {}).items():
        parts = " ".join(f"{k} {v:.1%}" for k, v in s.items())
        print(f"{name:22s} {parts}")
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
