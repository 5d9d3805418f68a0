"""Score a text-to-image model on the toy domain: prompt accuracy, per-attribute accuracy, FD, PRDC.

The model is any ``sample_fn(prompts, seeds) -> uint8 NHWC images``; :func:`make_sample_fn`
builds one from a generator (:mod:`tiue_export.generator`), on any backend. For each split the
evaluator samples ``seeds`` images for each of ``prompts`` captions, classifies them with the toy
classifier, and compares the classifier's features with those of as many real renders of the
same captions.

- prompt accuracy: share of images whose every stated attribute is classified right (the
  toy's stand-in for a CLIP score);
- FD: Frechet distance of Gaussian fits of classifier features (the toy's FID);
- precision / recall / density / coverage: Naeem et al. 2020, k=5, real vs generated features.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import atomic_path, write_png
from . import domain
from .metrics import NEAREST_K, cluster_bootstrap, frechet_distance, prdc

log = logging.getLogger("tiue_export")

#: ``sample_fn(prompts, seeds) -> uint8 (N, H, W, 3)``: one image per (prompt, seed) pair.
SampleFn = Callable[[Sequence[str], Sequence[int]], np.ndarray]

SPLITS = ("train", "heldout")

#: The reference (real vs real) set draws from ``real_seed + REFERENCE_SEED_OFFSET + split index``.
REFERENCE_SEED_OFFSET = 1000


def parse_splits(text: str) -> tuple[str, ...]:
    """``train``, ``heldout`` or ``both`` -> the splits to evaluate."""
    if text == "both":
        return SPLITS
    if text in SPLITS:
        return (text,)
    raise InputError(f"unknown split {text!r}: use train, heldout or both")


@dataclass(frozen=True)
class EvalConfig:
    """What ``tiue-export toy eval`` measures; saved in the JSON report."""

    prompts: int | None = 20  # per split; None: every caption of the split (198 train, 26 held-out)
    seeds: int = 4  # images per prompt, seeds 0..seeds-1: enough for k=5 PRDC balls per split
    splits: tuple[str, ...] = SPLITS
    batch_size: int = 8  # images per sample_fn call (CFG doubles the UNet batch)
    prompt_seed: int = 0  # which captions, in which order (domain.eval_prompts)
    real_seed: int = 1234  # the real reference renders; fixed so every model meets the same set
    nearest_k: int = NEAREST_K

    def __post_init__(self):
        if self.prompts is not None and self.prompts < 1:
            raise InputError(f"--prompts must be >= 1, got {self.prompts}")
        if self.seeds < 1:
            raise InputError(f"--seeds must be >= 1, got {self.seeds}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        for s in self.splits:
            parse_splits(s)

    def prompts_for(self, split: str) -> list[str]:
        """The evaluated captions of ``split`` (raises InputError if it has fewer than asked)."""
        n = len(domain.combos(split)) if self.prompts is None else self.prompts
        return domain.eval_prompts(split, n, seed=self.prompt_seed)

    def jobs(self, split: str) -> tuple[list[str], list[int]]:
        """(prompt, seed) of every image, prompt-major: prompt i's seeds are images i*S..i*S+S-1."""
        prompts = self.prompts_for(split)
        return [p for p in prompts for _ in range(self.seeds)], [s for _ in prompts for s in range(self.seeds)]


def real_images(prompts: Sequence[str], seed: int, resolution: int) -> np.ndarray:
    """One real render per entry of ``prompts`` (repeat a prompt for more), from one seeded stream."""
    rng = np.random.default_rng(seed)
    return np.stack([domain.render(domain.parse_caption(p), rng, resolution) for p in prompts])


def generate(sample_fn: SampleFn, prompts: Sequence[str], seeds: Sequence[int], batch_size: int, desc: str = "") -> np.ndarray:
    """Run ``sample_fn`` over (prompt, seed) pairs in batches, with a progress bar on stderr."""
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(prompts), desc=desc, unit="img", leave=False, disable=None) as bar:
        for start in range(0, len(prompts), batch_size):
            images = np.asarray(sample_fn(list(prompts[start : start + batch_size]), list(seeds[start : start + batch_size])))
            n = min(batch_size, len(prompts) - start)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[0] != n or images.shape[-1] != 3:
                raise InputError(f"the sampler returned {images.dtype} {images.shape}; expected uint8 ({n}, H, W, 3)")
            out.append(images)
            bar.update(n)
    return np.concatenate(out)


def _finite(x: float) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


def strict_verdicts(classifier, prompts: Sequence[str], images: np.ndarray, predicted=None) -> list:
    """The strict judge's verdict on each image (``predicted``: the classifier's output on them, if
    already computed), with the classifier's forced-choice shape as its second opinion."""
    from .judge import judge_images

    predicted = predicted if predicted is not None else classifier.predict(images)
    shapes = classifier.config.classes["shape"]
    return judge_images(images, [domain.parse_caption(p) for p in prompts], [shapes[int(i)] for i in predicted.labels["shape"]])


def score_split(classifier, prompts: Sequence[str], fake: np.ndarray, real: np.ndarray, k: int = NEAREST_K) -> dict:
    """Accuracy of ``fake`` against the attributes its prompts state, and FD/PRDC against ``real``."""
    from .classifier import score
    from .judge import DEFECTS

    attrs = [domain.parse_caption(p) for p in prompts]
    targets = classifier.targets(attrs)
    fp, rp = classifier.predict(fake), classifier.predict(real)
    acc = score(fp.labels, targets)
    n = len(prompts)
    if n > k:
        pr = prdc(rp.features, fp.features, k).to_dict()
    else:  # too few points for k-NN balls: reported as null
        pr = dict.fromkeys(("precision", "recall", "density", "coverage"))
    verdicts = strict_verdicts(classifier, prompts, fake, fp)
    strict = np.asarray([v.right for v in verdicts])
    reasons = [v.reason for v in verdicts]
    by_prompt: dict[str, list[bool]] = {}
    for p, r in zip(prompts, strict):
        by_prompt.setdefault(p, []).append(bool(r))
    per_prompt = {p: sum(v) / len(v) for p, v in by_prompt.items()}
    ci = cluster_bootstrap(list(per_prompt.values()))[1:] if n else None
    return {
        "images": n,
        "captions": len(per_prompt),
        # the strict judge (toy/judge.py): one clean object, recognisable, every attribute right
        "strict_accuracy": float(strict.mean()) if n else None,
        # 95% percentile bootstrap interval, captions resampled (a caption's images are not independent)
        "strict_accuracy_ci": list(ci) if ci else None,
        "strict_attribute_accuracy": {
            a: float(np.mean([getattr(v.measured, a) == getattr(t, a) for v, t in zip(verdicts, attrs)])) if n else None
            for a in domain.ATTRIBUTES
        },
        "defect_rates": {d: (sum(d in v.wrong for v in verdicts) / n if n else None) for d in DEFECTS},
        # the forced-choice classifier, as reported before the strict judge (kept for history)
        "prompt_accuracy": acc["all"],
        "attribute_accuracy": acc["per_attribute"],
        "fd": _finite(frechet_distance(rp.features, fp.features)) if n >= 2 else None,
        **pr,
        "per_prompt": per_prompt,
        "_right": strict,  # per-image strict verdicts and why, for the grid; removed from the JSON report
        "_reasons": reasons,
    }


@dataclass
class EvalResult:
    """The JSON-able report plus, per split, the generated images and their prompts (for the grid)."""

    report: dict
    images: dict[str, np.ndarray] = field(default_factory=dict)
    prompts: dict[str, list[str]] = field(default_factory=dict)
    right: dict[str, np.ndarray] = field(default_factory=dict)
    reasons: dict[str, list[str]] = field(default_factory=dict)


def evaluate(sample_fn: SampleFn, config: EvalConfig = EvalConfig(), classifier=None, info: dict | None = None) -> EvalResult:
    """Sample, classify and score every split of ``config``.

    Args:
        sample_fn: ``(prompts, seeds) -> uint8 NHWC`` images; any resolution (resized for the classifier).
        config: counts, splits and seeds.
        classifier: a :class:`~tiue_export.toy.classifier.ToyClassifier` (default: the shipped one).
        info: extra fields for the report (model, backend, sampler, guidance ...).
    """
    from .. import __version__
    from .classifier import load_classifier

    jobs = {split: config.jobs(split) for split in config.splits}  # validates counts before any work
    smallest = min(len(prompts) for prompts, _ in jobs.values())
    if smallest <= config.nearest_k:
        log.warning(
            "precision/recall/density/coverage need more than k=%d images per split, got %d: reported as null",
            config.nearest_k, smallest,
        )
    classifier = classifier or load_classifier()
    result = EvalResult(report={})
    splits, seconds = {}, 0.0
    for split, (prompts, seeds) in jobs.items():
        t0 = time.perf_counter()
        fake = generate(sample_fn, prompts, seeds, config.batch_size, desc=f"{split} prompts")
        seconds += time.perf_counter() - t0
        res = classifier.config.resolution
        real = real_images(prompts, config.real_seed + SPLITS.index(split), res)
        scores = score_split(classifier, prompts, fake, real, config.nearest_k)
        result.right[split], result.reasons[split] = scores.pop("_right"), scores.pop("_reasons")
        # A second, independent set of real renders scored the same way: what a perfect model
        # gets at these counts (FD is biased upwards and PRDC is noisy when sets are small).
        other = real_images(prompts, config.real_seed + REFERENCE_SEED_OFFSET + SPLITS.index(split), res)
        reference = score_split(classifier, prompts, other, real, config.nearest_k)
        scores["reference"] = {k: v for k, v in reference.items() if k not in ("_right", "_reasons", "per_prompt")}
        result.images[split], result.prompts[split] = fake, prompts
        splits[split] = scores
    result.report = {
        **(info or {}),
        "config": {**asdict(config), "splits": list(config.splits)},
        "seeds": list(range(config.seeds)),
        "classifier": {"path": str(classifier.path) if classifier.path else None, "accuracy": classifier.meta.get("accuracy")},
        "splits": splits,
        "sampling_seconds": round(seconds, 2),
        "versions": versions(),
        "software": f"tiue-export {__version__}",
    }
    return result


def versions() -> dict[str, str]:
    """Versions of the packages that decide the numbers."""
    import platform
    from importlib import metadata

    from .. import __version__

    out = {"tiue-export": __version__, "python": platform.python_version()}
    for name in ("torch", "diffusers", "transformers", "numpy", "Pillow"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


# -- backends -------------------------------------------------------------------------------------
def make_sample_fn(
    backend: str,
    model: Path,
    sampler: str | None = None,
    guidance: float | None = None,
    precision: str | None = None,
    vae: str = "full",
    device: str | None = None,
    dtype: str | None = None,
) -> tuple[SampleFn, dict]:
    """Build ``sample_fn`` for ``backend`` (an engine or a registry name, see
    :class:`~tiue_export.generator.GenerateOptions`) and the report fields that describe it."""
    from ..generator import GenerateOptions, open_generator

    options = GenerateOptions(
        str(model), backend, precision, sampler, guidance, vae=vae, device=device, dtype=dtype
    )
    gen = open_generator(options)
    info = gen.describe()
    return (lambda prompts, seeds: gen.sample(prompts, seeds).images), {"model": str(model), "backend": backend, "vae": vae, **info}


# -- output ---------------------------------------------------------------------------------------
def write_report(path: str | Path, report: dict) -> Path:
    """Write the JSON report atomically (NaN written as null)."""

    def clean(x):
        if isinstance(x, float):
            return _finite(x)
        if isinstance(x, dict):
            return {k: clean(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [clean(v) for v in x]
        return x

    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(clean(report), indent=2) + "\n")
    return Path(path)


def image_grid(result: EvalResult, seeds: int, cell: int = 96, label_width: int = 220) -> np.ndarray:
    """One row per prompt (all splits, in order), ``seeds`` images per row, caption at the left.

    Each image has a green frame if the strict judge passes it, else red, with why under it
    (the failed attributes and defects: ``shape``, ``stained``, ``objects``, ``shapeless`` ...).
    """
    from PIL import Image, ImageDraw

    rows = [(split, p) for split in result.images for p in dict.fromkeys(result.prompts[split])]
    pad = 4
    grid = Image.new("RGB", (label_width + seeds * (cell + pad) + pad, len(rows) * (cell + pad) + pad), (255, 255, 255))
    draw = ImageDraw.Draw(grid)
    r = 0
    for split, images in result.images.items():
        for j, im in enumerate(images):
            row, col = r + j // seeds, j % seeds
            x, y = label_width + pad + col * (cell + pad), pad + row * (cell + pad)
            ok = bool(result.right[split][j])
            draw.rectangle([x - 3, y - 3, x + cell + 2, y + cell + 2], fill=(40, 170, 60) if ok else (210, 40, 40))
            grid.paste(Image.fromarray(im).resize((cell, cell), Image.NEAREST), (x, y))
            if not ok and result.reasons.get(split):
                why = result.reasons[split][j]
                draw.rectangle([x, y + cell - 12, x + cell - 1, y + cell - 1], fill=(255, 255, 255))
                draw.text((x + 2, y + cell - 12), why[: cell // 6], fill=(210, 40, 40))
        for i, p in enumerate(dict.fromkeys(result.prompts[split])):
            y = pad + (r + i) * (cell + pad) + cell // 2 - 12
            words = p.split(" on ")
            draw.text((pad, y), f"[{split}] {words[0]}", fill=(0, 0, 0))
            draw.text((pad, y + 14), "on " + " on ".join(words[1:]), fill=(0, 0, 0))
        r += len(dict.fromkeys(result.prompts[split]))
    return np.asarray(grid)


def write_grid(path: str | Path, result: EvalResult, seeds: int, metadata: dict | None = None) -> Path:
    """Write :func:`image_grid` as a PNG, atomically."""
    return write_png(path, image_grid(result, seeds), metadata)


def summary_table(report: dict) -> str:
    """A fixed-width table of the headline numbers, one line per split."""
    attrs = domain.ATTRIBUTES
    head = f"{'split':<8} {'images':>6} {'strict':>7} {'95% CI':>13} {'prompt':>7} " + " ".join(f"{a[:5]:>6}" for a in attrs)
    head += f" {'FD':>8} {'prec':>5} {'rec':>5} {'dens':>5} {'cov':>5}"
    lines = [head]

    def f(v, w, d):
        return f"{'-':>{w}}" if v is None else f"{v:>{w}.{d}f}"

    for split, s in report["splits"].items():
        for name, row in ((split, s), ("  real", s.get("reference"))):
            if row is None:
                continue
            ci = row.get("strict_accuracy_ci")
            ci = f"{ci[0]:.3f}-{ci[1]:.3f}" if ci else "-"
            line = f"{name:<8} {row['images']:>6} {f(row['strict_accuracy'], 7, 3)} {ci:>13} {f(row['prompt_accuracy'], 7, 3)} "
            line += " ".join(f(row["attribute_accuracy"][a], 6, 3) for a in attrs)
            line += f" {f(row['fd'], 8, 3)} " + " ".join(f(row[m], 5, 2) for m in ("precision", "recall", "density", "coverage"))
            lines.append(line)
    for split, s in report["splits"].items():
        rates = ", ".join(f"{d} {r:.0%}" for d, r in s["defect_rates"].items() if r)
        lines.append(f"{split}: defects {rates or 'none'}")
    lines.append("(strict: the judge's one clean, recognisable object with every attribute right, with its 95% interval")
    lines.append(" over captions (caption-clustered bootstrap); prompt and the")
    lines.append(" attribute columns: the forced-choice classifier, as reported before; real: independent real")
    lines.append(" renders of the same prompts, scored the same way: a perfect model's numbers)")
    return "\n".join(lines)


# -- paired comparison ------------------------------------------------------------------------------
def compare_reports(a: dict, b: dict, reps: int = 2000) -> dict:
    """Model B minus model A on the same captions and seeds: per split, the strict accuracy of each
    and the difference with its 95% interval (a paired, caption-clustered bootstrap: each resample
    draws captions and takes both models' images of them).

    Raises:
        InputError: if the reports do not hold the same splits, captions and seeds.
    """
    if a.get("seeds") != b.get("seeds"):
        raise InputError(f"the reports used different seeds ({a.get('seeds')} and {b.get('seeds')}): evaluate both with the same --seeds")
    out = {}
    for split in a.get("splits", {}):
        if split not in b.get("splits", {}):
            raise InputError(f"the second report has no {split} split: evaluate both with the same --split")
        pa, pb = a["splits"][split]["per_prompt"], b["splits"][split]["per_prompt"]
        if set(pa) != set(pb):
            raise InputError(f"the reports scored different {split} captions: evaluate both with the same --prompts")
        keys = sorted(pa)
        diff, low, high = cluster_bootstrap([pb[k] - pa[k] for k in keys], reps=reps)
        out[split] = {
            "captions": len(keys),
            "a": a["splits"][split]["strict_accuracy"],
            "b": b["splits"][split]["strict_accuracy"],
            "a_ci": a["splits"][split].get("strict_accuracy_ci"),
            "b_ci": b["splits"][split].get("strict_accuracy_ci"),
            "difference": diff,
            "difference_ci": [low, high],
            "verdict": "B better" if low > 0 else "A better" if high < 0 else "no clear difference",
        }
    if not out:
        raise InputError("the first report holds no split")
    return out


def comparison_table(comparison: dict, a: str, b: str) -> str:
    """The paired comparison as fixed-width lines."""
    lines = [f"A = {a}", f"B = {b}", f"{'split':<8} {'captions':>8} {'A strict':>9} {'B strict':>9} {'B - A':>7} {'95% CI':>16}  verdict"]
    for split, c in comparison.items():
        lo, hi = c["difference_ci"]
        lines.append(f"{split:<8} {c['captions']:>8} {c['a']:>9.3f} {c['b']:>9.3f} {c['difference']:>+7.3f} {f'{lo:+.3f} {hi:+.3f}':>16}  {c['verdict']}")
    lines.append("(paired over the same captions and seeds; interval: caption-clustered bootstrap, 2000 resamples)")
    return "\n".join(lines)
