"""``tiue-export calibrate``: int8 UNet graphs for a bundle, Q/DQ ONNX or OpenVINO IR (docs/engines.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..build.quantize import CALIBRATION_ENGINES, METHODS, MIN_PSNR, OV_RECIPES
from .types import COUNT, SEED, Finite


@click.command("calibrate")
@click.argument("bundle", type=click.Path())
@click.option("--prompts", type=click.Path(), default=None, help="Calibration prompts, one per line [default: tiue_export/calibration/toy_prompts.txt for the built-in toy models and students distilled from the toy teacher, tiue_export/calibration/prompts.txt otherwise].")
@click.option("--num", type=COUNT, default=64, show_default=True, help="Calibration images (prompts repeat with new seeds).")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the prompt order; image i uses seed+i.")
@click.option("--method", type=click.Choice(METHODS), default="percentile", show_default=True, help="Activation range estimator.")
@click.option("--percentile", type=Finite(0.0, 100.0, min_open=True), default=99.999, show_default=True, help="Range percentile of --method percentile.")
@click.option("--batch", type=COUNT, default=4, show_default=True, help="Images per calibration batch.")
@click.option("--keep-float", multiple=True, help="Regular expression of node names to keep in float (repeatable; replaces the default: conv_in, conv_out, proj_in/proj_out, conv_shortcut; --engine openvino: conv_in, conv_out).")
@click.option("--engine", type=click.Choice(CALIBRATION_ENGINES), default="onnxruntime", show_default=True, help="onnxruntime: Q/DQ ONNX graphs (backends onnxruntime-int8, tensorrt-int8, the C++ runtime); openvino: NNCF's OpenVINO IR (backend openvino-int8; --method and --batch do not apply).")
@click.option("--recipe", type=click.Choice(OV_RECIPES), default="int8-matmul", show_default=True, help="--engine openvino: int8-matmul (convolutions and the projection / feed-forward MatMuls int8 x int8; attention's QK^T/PV float) or hybrid (MatMul weight-only int8): 1.1x slower UNet at SD 512, 1.5 dB more on the toy (docs/engines.md).")
@click.option("--eval-prompts", type=click.IntRange(1, None), default=4, show_default=True, help="Held-out prompts for the int8 vs fp32 PSNR.")
@click.option("--min-psnr", type=Finite(), default=None, help=f"The gate: the worst end-to-end int8 vs fp32 image PSNR (dB) on the held-out prompts below which nothing is written [default: {MIN_PSNR['onnxruntime']:g} for --engine onnxruntime, {MIN_PSNR['openvino']:g} for openvino].")
def calibrate(bundle, prompts, num, seed, method, percentile, batch, keep_float, engine, recipe, eval_prompts, min_psnr):
    """Calibrate int8 graphs of the UNet encoder and decoders on the bundle's own pipeline.

    The int8 images are measured against fp32 on held-out prompts before anything is written: under
    the PSNR gate (--min-psnr) calibrate refuses and leaves the bundle as it was."""
    from ..build.calibrate import calibrate_bundle
    from ..build.quantize import CalibrationConfig, quality_line

    cfg = CalibrationConfig(
        bundle=Path(bundle),
        prompts=Path(prompts) if prompts else None,
        num=num,
        seed=seed,
        method=method,
        batch=batch,
        keep_float=tuple(keep_float) if keep_float else None,
        percentile=percentile,
        eval_prompts=eval_prompts,
        engine=engine,
        recipe=recipe,
        min_psnr=min_psnr,
    )
    report = calibrate_bundle(cfg)
    files = ", ".join(e.file for e in report.graphs.values())
    click.echo(f"wrote {files} into {bundle} ({report.seconds.get('total', 0):.1f} s)")
    click.echo(quality_line(report.quality))
