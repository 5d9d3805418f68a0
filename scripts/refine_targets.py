"""How good are ``--lambda-refine``'s targets: the teacher's SDEdit refinement of a student's samples.

Samples the student one pass for toy training captions from fresh seeds, refines each sample with
the teacher for every ``--settings`` pair ``T:N`` (noised to timestep T, then N teacher DDIM steps
with CFG, exactly as ``tiue-export distill --lambda-refine`` does), and prints (and with
``--json`` writes) the toy classifier's prompt accuracy of the student's samples and of each
refinement (all, small and large objects), each refinement's latent MSE to the sample, and the
seconds each took. ``--noise initial`` noises each sample with its own z_T (``distill
--refine-noise initial``); ``--pairs`` also samples the teacher's ``ddim:50`` from the same z_T and
gives the latent MSE of the student and of each refinement to it.

    python scripts/refine_targets.py [--model STUDENT] [--count 192] [--settings 300:3,500:5] [--noise initial] [--pairs] [--json f.json]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pair_fit import toy_scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
FRESH_SEED_BASE = 700_000  # away from the pairs' (1,000,000 up) and from `toy eval`'s (0, 1, 2, ...)


def parse_settings(text: str) -> list[tuple[int, int]]:
    try:
        pairs = [tuple(int(v) for v in item.split(":")) for item in text.split(",") if item.strip()]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or not (1 <= p[1] <= p[0] < 1000) for p in pairs):
        raise SystemExit(f"error: --settings wants T:N pairs with 1 <= N <= T < 1000, e.g. 300:3,500:5; got {text!r}")
    return pairs


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="TiUE student directory [default: the built-in model]")
    ap.add_argument("--teacher", default=None, help="teacher directory [default: the built-in toy teacher]")
    ap.add_argument("--count", type=int, default=192, help="samples (training captions drawn with replacement)")
    ap.add_argument("--settings", default="200:2,300:2,400:2,300:3,400:4,500:5,700:7", help="T:N pairs")
    ap.add_argument("--noise", choices=("fresh", "initial"), default="fresh",
                    help="noise the sample with a fresh draw, or with its own z_T (`--refine-noise`)")
    ap.add_argument("--pairs", action="store_true", help="also score the teacher's ddim:50 from the same z_T, and the latent MSE of each refinement to it")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--json", type=Path, default=None, help="also write the numbers here")
    args = ap.parse_args(argv)
    settings = parse_settings(args.settings)

    from tiue_export.distill.pairs import teacher_refinement
    from tiue_export.distill.train import resolve_teacher, teacher_guidance
    from tiue_export.io import write_json
    from tiue_export.pipeline import load_pipeline
    from tiue_export.sampling import initial_noise
    from tiue_export.toy.classifier import load_classifier
    from tiue_export.models import resolve_model

    student = load_pipeline(resolve_model(args.model))
    teacher_dir = resolve_teacher(args.teacher)
    teacher = load_pipeline(teacher_dir)
    guidance = teacher_guidance(teacher_dir)
    captions = [line.strip() for line in (ROOT / "calibration" / "toy-train-prompts.txt").read_text().splitlines() if line.strip()]
    rng = np.random.default_rng(0)
    texts = [captions[i] for i in rng.integers(0, len(captions), args.count)]
    seeds = list(range(FRESH_SEED_BASE, FRESH_SEED_BASE + len(texts)))
    classifier = load_classifier()
    batches = range(0, len(texts), args.batch_size)
    with torch.no_grad():
        samples = [student.sample(texts[lo : lo + args.batch_size], seeds[lo : lo + args.batch_size], "one-pass") for lo in batches]
        z0 = torch.from_numpy(np.concatenate([s.latents for s in samples]))
        z_T = torch.from_numpy(initial_noise(seeds, tuple(z0.shape[1:]))).to(z0.dtype)
        report = {"model": str(args.model or "built-in"), "count": len(texts), "guidance": guidance,
                  "student": toy_scores(np.concatenate([s.images for s in samples]), texts, classifier), "refined": []}
        print(f"student               {report['student']['all']:.1%} (small {report['student']['small']:.1%}, large {report['student']['large']:.1%})")
        conds = [teacher.encode_text(texts[lo : lo + args.batch_size]) for lo in batches]
        unconds = [teacher.encode_text([""] * len(cond)) for cond in conds]
        pair = None
        if args.pairs:
            pairs = [teacher.sample(texts[lo : lo + args.batch_size], seeds[lo : lo + args.batch_size], "ddim:50", guidance=guidance) for lo in batches]
            pair = torch.from_numpy(np.concatenate([s.latents for s in pairs]))
            report["teacher_ddim50"] = toy_scores(np.concatenate([s.images for s in pairs]), texts, classifier)
            report["student_mse_to_pair"] = float(((z0 - pair) ** 2).mean())
            print(f"teacher ddim:50       {report['teacher_ddim50']['all']:.1%}; student's latent MSE to it {report['student_mse_to_pair']:.4f}")
        for t, n in settings:
            t0, images, refined = time.perf_counter(), [], []
            for lo, cond, uncond in zip(batches, conds, unconds):
                z = z0[lo : lo + len(cond)]
                noise = z_T[lo : lo + len(cond)] if args.noise == "initial" else torch.randn(z.shape, generator=torch.Generator().manual_seed(lo))
                z = teacher_refinement(teacher.unet, teacher.scheduler, cond, uncond, z, noise, t, n, guidance)
                images.append(teacher.decode_latents(z))
                refined.append(z)
            scores = toy_scores(np.concatenate(images), texts, classifier)
            refined = torch.cat(refined)
            scores["mse_to_sample"] = float(((refined - z0) ** 2).mean())
            if pair is not None:
                scores["mse_to_pair"] = float(((refined - pair) ** 2).mean())
            seconds = time.perf_counter() - t0
            report["refined"].append({"t": t, "steps": n, **scores, "seconds": seconds})
            extra = f", MSE to ddim:50 {scores['mse_to_pair']:.4f}" if pair is not None else ""
            print(f"refined t={t:3d} steps={n:2d}  {scores['all']:.1%} (small {scores['small']:.1%}, large {scores['large']:.1%})"
                  f"  MSE to the sample {scores['mse_to_sample']:.4f}{extra}  {seconds:.1f} s")
    if args.json:
        write_json(args.json, report)
    return report


if __name__ == "__main__":
    main(sys.argv[1:])
