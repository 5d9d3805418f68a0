"""``tiue-export toy eval``: score a model on the toy domain (accuracy, FD, PRDC), JSON + PNG grid."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import InputError
from .types import FINITE, SEED, torch_device_options


class _PromptCount(click.ParamType):
    """A positive count or ``all`` (None)."""

    name = "N|all"

    def convert(self, value, param, ctx):
        if value is None or (isinstance(value, int) and not isinstance(value, bool)):
            return value
        if str(value).strip().lower() == "all":
            return None
        try:
            return int(value)
        except ValueError:
            self.fail(f"{value!r} is neither a count nor 'all'", param, ctx)


PROMPT_COUNT = _PromptCount()


def _check_out(path: str | None, suffix: str, option: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if p.suffix.lower() != suffix:
        raise InputError(f"{option} {path}: the file name must end in {suffix}")
    from ..files import writable_file

    return writable_file(p, option)


@click.command("eval")
@click.option("--model", type=click.Path(), default=None, help="Model directory [default: the built-in model].")
@click.option("--sampler", default=None, help="one-pass | loop | ddim:N  [default: one-pass; ddim:50 for a teacher]")
@click.option("--guidance", type=FINITE, default=None, help="CFG scale of ddim:N [default: the model's, else 7.5].")
@click.option("--backend", default="torch", show_default=True, metavar="torch|onnxruntime|openvino",
              help="Where the model runs: torch (a model directory), onnxruntime or openvino (a bundle from tiue-export export).")
@click.option("--precision", type=click.Choice(["fp32", "bf16", "int8"]), default=None,
              help="int8: the bundle's Q/DQ graphs (tiue-export calibrate); openvino: fp32/bf16 compute "
              "[default: as exported; openvino: the CPU's default].")
@click.option("--prompts", "n_prompts", type=PROMPT_COUNT, default="20", show_default=True, help="Captions per split, or all (198 train, 26 held-out).")
@click.option("--seeds", type=int, default=4, show_default=True, help="Images per prompt (seeds 0..S-1).")
@click.option("--split", default="both", show_default=True, metavar="train|heldout|both", help="Which prompts to score.")
@click.option("--batch-size", type=int, default=8, show_default=True, help="Images per sampler call.")
@click.option("--classifier", type=click.Path(), default=None, help="Classifier directory [default: the shipped one].")
@click.option("--json", "json_out", type=click.Path(), default=None, help="Write the full report to FILE.json.")
@click.option("--grid", type=click.Path(), default=None, help="Write the images to FILE.png, one row per prompt.")
@click.option("--vae", default="full", show_default=True, help="full, tiny (the distilled tiny decoder; a bundle's tiny variant) or a distill-vae directory (torch).")
@torch_device_options
def eval_cmd(model, sampler, guidance, backend, precision, n_prompts, seeds, split, batch_size, classifier, json_out, grid, vae, device, dtype):
    """Score a model on the toy domain: prompt and per-attribute accuracy, FD, precision/recall/density/coverage.

    For each split, samples SEEDS images for each of PROMPTS captions, classifies them with the
    toy attribute classifier, and compares classifier features with as many real renders of the
    same captions.
    """
    from ..generator import GenerateOptions
    from ..toy.evaluate import EvalConfig, parse_splits
    from . import quiet_libraries

    # Everything that can be checked without torch is checked before any model loads.
    config = EvalConfig(prompts=n_prompts, seeds=seeds, splits=parse_splits(split), batch_size=batch_size)
    for s in config.splits:
        config.prompts_for(s)
    GenerateOptions(model, backend, precision, sampler, guidance, vae=vae, device=device, dtype=dtype)
    json_path = _check_out(json_out, ".json", "--json")
    grid_path = _check_out(grid, ".png", "--grid")

    quiet_libraries()
    from ..reference.builtin import resolve_model
    from ..toy.classifier import load_classifier
    from ..toy.evaluate import evaluate, make_sample_fn, summary_table, write_grid, write_report

    clf = load_classifier(classifier)
    model_path = resolve_model(model)
    sample_fn, info = make_sample_fn(backend, model_path, sampler, guidance, precision, vae, device, dtype)
    result = evaluate(sample_fn, config, clf, info)
    what = f"{model_path} [{backend}" + (f" {precision}" if precision else "") + (f", vae {vae}" if vae != "full" else "") + f", {info['sampler']}" + (f", guidance {info['guidance']:g}]" if info.get("guidance") is not None else "]")
    counts = ", ".join(f"{s} {len(config.prompts_for(s))}" for s in config.splits)
    click.echo(f"toy eval of {what}: {counts} captions x {config.seeds} seeds")
    click.echo(summary_table(result.report))
    if json_path:
        write_report(json_path, result.report)
        click.echo(f"wrote {json_path}")
    if grid_path:
        meta = {k: str(v) for k, v in info.items()}
        write_grid(grid_path, result, config.seeds, meta)
        click.echo(f"wrote {grid_path}")


@click.command("train-classifier")
@click.option("--out", required=True, type=click.Path(), help="Directory to write (replaced atomically at the end).")
@click.option("--steps", type=int, default=None, help="Training steps [default: 1500].")
@click.option("--seed", type=SEED, default=None, help="Seed of the renders, initialisation and augmentation [default: 0].")
def train_classifier_cmd(out, steps, seed):
    """Train the toy attribute classifier that ``toy eval`` measures with (a few minutes on 2 CPU cores).

    It sees renders of every attribute combination, held-out ones included, and stores its
    accuracy on fresh renders of each split in config.json.
    """
    from ..toy.classifier import train_classifier

    if steps is not None and steps < 1:
        raise InputError(f"--steps must be >= 1, got {steps}")
    meta = train_classifier(out, steps=steps, seed=seed)
    acc = ", ".join(f"{split} {v['all']:.4f}" for split, v in meta["accuracy"].items())
    click.echo(f"wrote {out}: every-attribute accuracy on fresh renders: {acc}")


@click.command("compare")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
@click.option("--json", "json_out", type=click.Path(), default=None, help="Write the comparison to FILE.json.")
def compare_cmd(a, b, json_out):
    """Model B minus model A: two toy eval --json reports of the same captions and seeds.

    Prints each split's strict accuracy of both and the difference with its 95% interval (a paired,
    caption-clustered bootstrap); the verdict names a winner only when the interval excludes 0.
    """
    import json

    from ..toy.evaluate import compare_reports, comparison_table, write_report

    json_path = _check_out(json_out, ".json", "--json")
    reports = []
    for path in (a, b):
        p = Path(path)
        if not p.is_file():
            raise InputError(f"{path} is not a file: give two toy eval --json reports")
        try:
            report = json.loads(p.read_text())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise InputError(f"{path} is not a toy eval report ({exc})") from exc
        if not isinstance(report, dict) or not isinstance(report.get("splits"), dict) or not all(
            isinstance(s, dict) and "per_prompt" in s for s in report["splits"].values()
        ):
            raise InputError(f"{path} is not a toy eval --json report (no splits with per-caption scores)")
        reports.append(report)
    comparison = compare_reports(*reports)
    click.echo(comparison_table(comparison, a, b))
    if json_path:
        write_report(json_path, {"a": str(a), "b": str(b), "splits": comparison})
        click.echo(f"wrote {json_path}")
