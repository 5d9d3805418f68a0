"""``tiue-export check``: parity of every backend with the PyTorch reference."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..variants import VAE_CHOICES
from .types import SEED


@click.command("check")
@click.argument("bundle", type=click.Path())
@click.option("--backends", default=None, help="Comma-separated: torch, onnxruntime[-int8], openvino[-fp32|-bf16|-int8], tensorrt-fp16, tensorrt-int8 [default: all available].")
@click.option("--prompt", "prompts", multiple=True, help="Prompt (repeatable) [default: two built-in prompts].")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--model", type=click.Path(), default=None, help="The PyTorch source model [default: the one the manifest names].")
@click.option("--reference", type=click.Choice(["auto", "torch", "bundle"]), default="auto", show_default=True, help="What backends are compared with: PyTorch on the source model, or the reference export stored in the bundle (auto: PyTorch where torch and the model are here).")
@click.option("--json", "json_path", type=click.Path(), default=None, help="Write the results as JSON.")
@click.option("--image", "image_path", type=click.Path(), default=None, help="PNG of reference vs backend images and their differences [default: beside --json, as FILE.png; none without --json].")
@click.option("--device", default=None, metavar="cpu|cuda[:N]|auto", help="Where the PyTorch reference runs, in fp32 [default: auto].")
@click.option("--vae", type=click.Choice(["auto", *VAE_CHOICES]), default="auto", show_default=True, help="tiny: the chain through the bundle's tiny VAE decoder (what infer --vae tiny runs); auto: the full chain, and the tiny decoder's graph where the bundle has one; full: the full decoder only.")
def check(bundle, backends, prompts, seed, model, reference, json_path, image_path, device, vae):
    """Compare every backend with the PyTorch reference, per graph and end to end.

    Exits 0 only if every backend checked is within tolerance.
    """
    from . import quiet_libraries

    quiet_libraries()  # no-op without torch
    from ..files import writable_file
    from ..prompts import check_prompt
    from ..verify.check import DEFAULT_PROMPTS, CheckConfig, run_check, table, write_image_grid, write_json

    cfg = CheckConfig(
        bundle=bundle,
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()) if backends else None,
        prompts=tuple(check_prompt(p, "--prompt") for p in prompts) or DEFAULT_PROMPTS,
        seed=seed,
        model=model,
        reference=reference,
        device=device,
        vae=vae,
    )
    image = Path(image_path) if image_path else (Path(json_path).with_suffix(".png") if json_path else None)
    for path, what in ((json_path, "--json"), (image, "--image")):
        if path is not None:  # before the check runs, not after
            writable_file(path, what)
    reports, ref = run_check(cfg)
    click.echo(table(reports))
    if json_path:
        write_json(reports, cfg, Path(json_path), ref.get("coefficients"))
        click.echo(f"wrote {json_path}")
    if image is not None:
        write_image_grid(reports, ref, ref["prompts"], image)
        click.echo(f"wrote {image}")
    checked = [r for r in reports if r.available]
    failed = [r.backend for r in checked if not r.ok]
    if failed or not checked:
        click.echo(f"check FAILED: {', '.join(failed) or 'no backend could be checked'}", err=True)
        sys.exit(1)
    click.echo(f"check passed: {', '.join(r.backend for r in checked)}")
