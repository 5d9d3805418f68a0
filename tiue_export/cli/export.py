"""``tiue-export export``: a TiUE student to a validated ONNX bundle (see docs/bundle.md)."""

from __future__ import annotations

import click

from ..specs import DEFAULT_OPSET, BatchProfile
from .types import COUNT


@click.command("export")
@click.option("--model", type=click.Path(), help="Student directory [default: the built-in model].")
@click.option("--out", required=True, type=click.Path(), help="Bundle directory to write (replaced atomically).")
@click.option("--height", type=COUNT, default=None, help="Image height [default: the model's].")
@click.option("--width", type=COUNT, default=None, help="Image width [default: the model's].")
@click.option("--batch", default="1:1:4", show_default=True, help="Batch sizes engines must take: N or min:opt:max.")
@click.option("--precision", type=click.Choice(["fp32", "fp16"]), default="fp32", show_default=True)
@click.option("--opset", type=int, default=DEFAULT_OPSET, show_default=True, help="ONNX opset.")
@click.option(
    "--external-data",
    type=click.Choice(["auto", "always", "never"]),
    default="auto",
    show_default=True,
    help="Weights in a .onnx.data file beside each graph: auto = only graphs over protobuf's 2 GB limit.",
)
@click.option("--vae", default="full", show_default=True, help="full, or also a 'tiny' variant of vae_decoder: tiny (the model's distill-vae decoder) or a distill-vae directory.")
@click.option("--vae-only", is_flag=True, help="Add only the --vae decoder, as vae_decoder's tiny variant, to the existing bundle at --out.")
def export(model, out, height, width, batch, precision, opset, external_data, vae, vae_only):
    """Export a student to ONNX graphs + manifest, validated against PyTorch on ONNX Runtime."""
    from . import quiet_libraries

    quiet_libraries()
    from ..build.export import ExportConfig, add_decoder_variant, export_bundle
    from ..reference.builtin import resolve_model
    from ..reference.pipeline import bundle_source, check_model_dir

    source = resolve_model(model)
    made_from = bundle_source(source)
    check_model_dir(source, "export takes the PyTorch model directory a bundle is made from" + (f" ({made_from})" if made_from else ""))
    cfg = ExportConfig(
        model=source,
        out=out,
        height=height,
        width=width,
        batch=BatchProfile.parse(batch),
        precision=precision,
        opset=opset,
        external_data=external_data,
        vae=vae,
    )
    if vae_only:
        report = add_decoder_variant(cfg)
        tiny = report.validation["graphs"]["vae_decoder.tiny"]
        added = ", ".join(f"{f} ({n / 2**20:.1f} MiB)" for f, n in report.sizes.items())
        psnr = tiny["outputs"]["images"]["psnr"]
        click.echo(f"added {added} to {out}: ONNX Runtime vs PyTorch {'identical' if psnr is None else f'{psnr:.1f} dB'} ({report.seconds['total']:.1f} s)")
        return
    report = export_bundle(cfg)
    e2e = report.validation.get("end_to_end") or {}
    psnr = e2e.get("psnr")
    size = sum(report.sizes.values()) / 2**20
    click.echo(
        f"wrote {out}: {len(report.sizes)} graphs, {size:.1f} MiB, {precision}; "
        f"ONNX Runtime vs PyTorch end to end: {'identical' if psnr is None and e2e else f'{psnr:.1f} dB'} "
        f"({report.seconds.get('total', 0):.1f} s)"
    )
