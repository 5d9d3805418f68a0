"""``tiue-export generate``: images for a prompt file on Ray Data, one PNG per (prompt, seed), resumable."""

from __future__ import annotations

import click

from ..errors import require
from .serve import backend_options


@click.command("generate")
@click.option("--model", "bundle", required=True, type=click.Path(), help="The bundle (tiue-export export --out BUNDLE).")
@click.option("--prompts-file", required=True, type=click.Path(), help="Prompts: .txt (one a line), .jsonl, .csv or .parquet (a caption, prompt or text column).")
@click.option("--num-images", type=click.IntRange(1, 100000), default=1, show_default=True, help="Images per prompt; image j uses --seed + j.")
@click.option("--seed", type=click.IntRange(0, 2**63 - 1), default=0, show_default=True)
@click.option("--out", required=True, type=click.Path(), help="Output directory (every node must see it): the PNGs, index.parquet, generate.json.")
@click.option("--address", default=None, help="Join this Ray cluster [default: start a local Ray].")
@click.option("--workers", type=click.IntRange(1, 4096), default=1, show_default=True, help="Actors, each holding one pipeline.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=8, show_default=True, help="Images per pipeline call.")
@click.option("--cpus-per-worker", type=click.FloatRange(0), default=1.0, show_default=True)
@click.option("--gpus-per-worker", type=click.FloatRange(0), default=0.0, show_default=True, help="1: an actor per GPU.")
@backend_options
def generate(bundle, prompts_file, out, backend, precision, vae, threads, batch_mode, batch_size, **options):
    """Generate images for every prompt of a file on Ray Data over an actor pool.

    Exactly one PNG per (prompt, seed), with infer's metadata, and an index (OUT/index.parquet).
    Killed and run again with the same arguments, it draws only the images that are missing.
    """
    from ..serve.config import threads_for, worker_config
    from ..serve.generate import GenerateConfig, run

    threads = threads_for(threads, options["cpus_per_worker"])
    worker = worker_config(bundle, backend, precision, threads=threads, batch_mode=batch_mode, max_batch=batch_size, vae=vae)
    cfg = GenerateConfig(worker, prompts_file, out, **options)
    require("ray.data", "tiue-export generate runs on Ray Data")
    summary = run(cfg)
    rate = summary["drawn"] / summary["seconds"] if summary["seconds"] else 0.0
    click.echo(
        f"{summary['jobs']} image(s) in {out} ({summary['done_before']} there before, {summary['drawn']} drawn now "
        f"in {summary['seconds']:.1f} s, {rate:.1f} img/s); index: {out}/index.parquet"
    )
