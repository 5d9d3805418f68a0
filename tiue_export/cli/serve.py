"""``tiue-export serve``: a bundle behind an HTTP API on Ray Serve, with dynamic batching."""

from __future__ import annotations

import click

from ..backends import BUNDLE_ENGINES, REGISTRY
from ..errors import InputError, require
from ..variants import VAE_CHOICES

#: What --backend takes: the bundle engines and their registry names (no torch: serve runs bundles).
BACKENDS = list(BUNDLE_ENGINES) + [n for n, b in REGISTRY.items() if b.engine in BUNDLE_ENGINES and n not in BUNDLE_ENGINES]


def parse_autoscale(value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    lo, sep, hi = value.partition(":")
    if not sep or not lo.isdigit() or not hi.isdigit():
        raise InputError(f"--autoscale {value}: give MIN:MAX replicas, e.g. 1:4")
    return int(lo), int(hi)


def backend_options(f):
    """--backend, --precision, --vae, --threads and --batch-mode, shared with ``generate``."""
    from ..serve.config import BATCH_MODES

    options = [
        click.option("--backend", type=click.Choice(BACKENDS), default="onnxruntime", show_default=True, help="Engine (or registry name) of every replica."),
        click.option("--precision", type=click.Choice(["fp32", "fp16", "bf16", "int8"]), default=None, help="As infer's --precision: int8 = the Q/DQ graphs; tensorrt: the engine set."),
        click.option("--vae", type=click.Choice(VAE_CHOICES), default="full", show_default=True, help="tiny: the bundle's distilled tiny VAE decoder (export --vae tiny), as infer --vae tiny."),
        click.option("--threads", type=click.IntRange(0, 1024), default=None, help="Intra-op threads per graph and replica or actor; 0: the engine's default (every core of the node) [default: the CPUs it reserves, at least 1: more threads than reserved cores spin against each other]."),
        click.option("--batch-mode", type=click.Choice(BATCH_MODES), default="auto", show_default=True, help="auto: batch if a start-up check finds a batched call gives the same pixels as one call per image, else draw one image a call; batched: trust the backend; per-image: always one image a call."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command("serve")
@click.argument("bundle", type=click.Path())
@backend_options
@click.option("--replicas", type=click.IntRange(1, 1024), default=None, help="Model replicas [default: 1].")
@click.option("--autoscale", default=None, metavar="MIN:MAX", help="Autoscale the model replicas between MIN and MAX instead of --replicas.")
@click.option("--max-batch", type=click.IntRange(1, 1024), default=8, show_default=True, help="Most images in one pipeline call.")
@click.option("--batch-wait-ms", type=click.FloatRange(0, 10000), default=0.0, show_default=True, help="How long an idle replica waits to fill a batch (a busy one draws what queued meanwhile).")
@click.option("--max-queued", type=click.IntRange(1), default=64, show_default=True, help="Most images accepted and not yet answered; beyond it, 503 at once.")
@click.option("--max-images", type=click.IntRange(1), default=16, show_default=True, help="Most images one request may ask for.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on (0.0.0.0: every interface; the API has no authentication).")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--address", default=None, help="Join this Ray cluster (ray start --head prints it) [default: start a local Ray].")
@click.option("--cpus-per-replica", type=click.FloatRange(0), default=1.0, show_default=True)
@click.option("--gpus-per-replica", type=click.FloatRange(0), default=0.0, show_default=True, help="1: a replica per GPU.")
def serve(bundle, backend, precision, vae, threads, batch_mode, replicas, autoscale, max_batch, max_queued, max_images, **options):
    """Serve BUNDLE over HTTP on Ray Serve: POST /v1/images, OpenAI's POST
    /v1/images/generations, GET /healthz, GET /v1/model, and a playground page at GET /.

    Concurrent requests share K-batched pipeline calls; an image equals tiue-export
    infer's for the same prompt and seed, bit for bit. Ctrl-C stops it.
    """
    from ..serve.config import ServeConfig, threads_for, worker_config

    if replicas is not None and autoscale is not None:
        raise InputError("give --replicas or --autoscale, not both")
    scale = parse_autoscale(autoscale)
    threads = threads_for(threads, options["cpus_per_replica"])
    worker = worker_config(bundle, backend, precision, threads=threads, batch_mode=batch_mode, max_batch=max_batch, vae=vae)
    cfg = ServeConfig(worker, replicas=replicas or 1, autoscale=scale, max_queued=max_queued, max_images=max_images, **options)
    require("ray.serve", "tiue-export serve runs on Ray Serve")
    from ..serve.app import run_forever

    run_forever(cfg)
