"""``tiue-export bench``: latency of every backend and of the references, in one run."""

from __future__ import annotations

from pathlib import Path

import click


@click.command("bench")
@click.option("--model", type=click.Path(), help="Model directory or bundle [default: the built-in model].")
@click.option("--shape", default="toy", show_default=True, help="toy | sd21-512 | sd21-256 | sd15-512 | sd21-tiny (random weights).")
@click.option("--backends", default="torch,torch-bf16,onnxruntime", show_default=True, help="Comma-separated: torch, torch-bf16, onnxruntime, onnxruntime-int8, openvino (bf16 on CPUs with bf16 units), openvino-fp32, openvino-int8, tensorrt-fp16, tensorrt-int8.")
@click.option("--batch", type=click.IntRange(1, 256), default=1, show_default=True)
@click.option("--runs", type=click.IntRange(1, 1000), default=5, show_default=True)
@click.option("--warmup", type=click.IntRange(0, 100), default=1, show_default=True)
@click.option("--no-references", is_flag=True, help="Skip the K-step loop and teacher DDIM references.")
@click.option("--teacher-steps", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--teacher-timed-steps", type=click.IntRange(1, 1000), default=None, help="Time only this many teacher steps and extrapolate.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None, help="torch intra-op threads.")
@click.option("--no-runtime-memory", is_flag=True, help="Skip the fresh-process peak-memory run of each CPU runtime backend.")
@click.option("--no-vae-decoders", is_flag=True, help="Skip timing the full VAE decoder against a tiny one (the model's, else random TAESD-sized weights).")
@click.option(
    "--vae", default="full", show_default=True, metavar="full|tiny|full,tiny",
    help="The bundle backends' VAE decoder: tiny = the bundle's tiny variant (export --vae tiny); full,tiny = a row for each, in "
    "alternating runs, with the decoder and end-to-end ratios.",
)
@click.option("--device", default=None, metavar="cpu|cuda[:N]|auto", help="Where the PyTorch rows and references run [default: auto, CUDA when PyTorch sees a GPU].")
@click.option("--dtype", type=click.Choice(["fp32", "fp16", "bf16"]), default=None, help="Their weights' dtype [default: fp32 on the CPU, fp16 on CUDA].")
@click.option(
    "--compile", "compile_modes", default=None, metavar="MODES",
    help="Comma-separated torch one-pass rows: none (eager), default / max-autotune-no-cudagraphs / reduce-overhead (torch.compile), "
    "cuda-graphs (captured CUDA graphs) [default: none; on CUDA none,cuda-graphs,reduce-overhead].",
)
@click.option("--json", "json_path", type=click.Path(), default=None, help="Report JSON [default: OUT/bench.json].")
@click.option("--out", default="bench-results", show_default=True, help="Directory for bench.json, bench.md, bench.png.")
def bench(
    model, shape, backends, batch, runs, warmup, no_references, teacher_steps, teacher_timed_steps, threads, no_runtime_memory, no_vae_decoders,
    vae, device, dtype, compile_modes, json_path, out,
):
    """Time every backend per stage against the PyTorch reference and the references."""
    from . import quiet_libraries

    quiet_libraries()
    from ..files import writable_dir, writable_file
    from ..verify.bench import BenchConfig, chart_missing, run_bench, to_markdown, write_report

    writable_dir(out)  # before minutes of timing, not after
    if json_path:
        writable_file(json_path, "--json")
    no_chart = chart_missing()
    if no_chart:  # said before minutes of timing, not after
        click.echo(no_chart, err=True)

    cfg = BenchConfig(
        model=model,
        shape=shape,
        backends=tuple(b.strip() for b in backends.split(",") if b.strip()),
        batch=batch,
        runs=runs,
        warmup=warmup,
        references=not no_references,
        teacher_steps=teacher_steps,
        teacher_timed_steps=teacher_timed_steps,
        threads=threads,
        runtime_memory=not no_runtime_memory,
        vae_decoders=not no_vae_decoders,
        vae=tuple(v.strip() for v in vae.split(",") if v.strip()),
        device=device,
        dtype=dtype,
        compile=tuple(m.strip() for m in compile_modes.split(",") if m.strip()) if compile_modes else None,
    )
    report = run_bench(cfg, progress=lambda msg: click.echo(msg, err=True))
    click.echo(to_markdown(report))
    for path in write_report(report, Path(json_path) if json_path else None, Path(out), chart=not no_chart):
        click.echo(f"wrote {path}")
