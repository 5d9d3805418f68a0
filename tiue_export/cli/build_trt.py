"""``tiue-export build-trt``: TensorRT engines for this GPU, written into a bundle (docs/engines.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..build.tensorrt import ENGINE_PRECISIONS
from .types import POSITIVE


@click.command("build-trt")
@click.argument("bundle", type=click.Path())
@click.option("--precision", type=click.Choice(ENGINE_PRECISIONS), required=True, help="fp16: from an fp16 export; int8: from calibrate's Q/DQ graphs.")
@click.option("--batch", default=None, help="Batch sizes the engines take, N or min:opt:max [default: the bundle's].")
@click.option("--timing-cache", type=click.Path(), default=None, help="TensorRT timing cache to read and update.")
@click.option("--opt-level", type=int, default=3, show_default=True, help="TensorRT builder optimization level, 0..5.")
@click.option("--fused/--no-fused", default=True, show_default=True, help="Decoder with Eq. 11 inside, or the K-batched eps decoder.")
@click.option("--workspace", type=POSITIVE, default=None, help="Builder workspace limit in GiB [default: TensorRT's].")
@click.option("--device", type=click.IntRange(0, None), default=0, show_default=True, help="CUDA device index.")
def build_trt(bundle, precision, batch, timing_cache, opt_level, fused, workspace, device):
    """Build one TensorRT engine per graph of BUNDLE for this GPU (strongly typed networks)."""
    from ..build.tensorrt import BuildConfig, build_engines
    from ..specs import BatchProfile

    cfg = BuildConfig(
        bundle=Path(bundle),
        precision=precision,
        batch=BatchProfile.parse(batch) if batch else None,
        timing_cache=Path(timing_cache) if timing_cache else None,
        opt_level=opt_level,
        fused=fused,
        device=device,
        workspace_gib=workspace,
    )
    report = build_engines(cfg)
    e = report.entry
    size = sum(g["size_bytes"] for g in e["graphs"].values()) / 2**20
    click.echo(
        f"wrote {len(e['graphs'])} {precision} engines ({size:.1f} MiB) into {bundle}/engines/{precision} for "
        f"{e['gpu']['name']} (sm {e['gpu']['compute_capability']}), TensorRT {e['tensorrt']}, batch "
        f"{e['batch_profile']['min']}:{e['batch_profile']['opt']}:{e['batch_profile']['max']} "
        f"({sum(report.seconds.values()):.1f} s)"
    )
