"""What one bench run measures, in order: the model at its shape, the matmul peaks and FLOPs, each
backend's rows, the references, the VAE decoders."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from ...errors import InputError, require
from ...variants import VAE_CHOICES
from .meters import DeviceMeter, machine_info, matmul_peaks, unet_flops
from .report import add_rates
from .runtime_memory import runtime_memory
from .timing import (
    Timing,
    open_runtime,
    reference_stages,
    runtime_chain,
    time_chain,
    time_chains,
    time_stages,
    time_vae_decoders,
    tiny_decoder_for_bench,
    torch_chain,
)

log = logging.getLogger("tiue_export")


#: Benchmark shapes: name -> (architecture, image size, width divisor); "toy" = the model given.
SHAPES = {
    "toy": None,
    "sd21-512": ("sd21", 512, 1),
    "sd21-256": ("sd21", 256, 1),
    "sd15-512": ("sd15", 512, 1),
    "sd21-tiny": ("sd21", 256, 16),  # SD 2.1's blocks at 1/16 width: a quick smoke shape
}


@dataclass(frozen=True)
class BenchConfig:
    """What ``tiue-export bench`` measures."""

    model: str | None = None  # a model directory or a bundle; None: the built-in (toy) model
    shape: str = "toy"
    backends: tuple[str, ...] = ("torch",)
    batch: int = 1  # the latency case: one image
    runs: int = 5  # timed runs per backend, after warmup
    warmup: int = 1
    references: bool = True  # also time the K-step loop and the teacher's DDIM
    teacher_steps: int = 50  # the teacher's usual step count
    teacher_timed_steps: int | None = None  # time only this many steps and extrapolate (big shapes)
    guidance: float = 7.5
    threads: int | None = None  # torch intra-op threads (None: torch's default)
    runtime_memory: bool = True  # also run each CPU runtime backend alone in a fresh process for its peak memory
    vae_decoders: bool = True  # also time the full VAE decoder against a tiny one (the model's, else random TAESD-sized)
    # bundle backends' VAE decoders: ("full", "tiny") times each chain with both, in alternating
    # runs of one loaded pipeline, so the decoder and end-to-end ratios share the machine's load
    vae: tuple[str, ...] = ("full",)
    device: str | None = None  # the PyTorch rows and references: cpu, cuda[:N], auto (None: auto)
    dtype: str | None = None  # their weights: fp32, fp16, bf16 (None: fp32 on the CPU, fp16 on CUDA)
    compile: tuple[str, ...] | None = None  # a torch one-pass row per mode (None: eager; on CUDA also cuda-graphs, reduce-overhead)


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = log.info) -> dict:
    """Measure every requested backend and reference; return the JSON-able report."""
    from ...reference.pipeline import load_pipeline

    cfg, device, dtype = _checked(cfg)
    meter = DeviceMeter(device)
    if cfg.threads:
        import torch

        torch.set_num_threads(cfg.threads)
    model_path, bundle_path, height, width = _model_and_bundle(cfg)
    pipe = load_pipeline(model_path, device=device, dtype=dtype)
    height = height or pipe.default_size
    width = width or pipe.default_size
    c, h, w = pipe.latent_shape(height, width)

    report: dict = {
        "config": asdict(cfg),
        "model": str(model_path),
        "image_size": [height, width],
        "latent_shape": [cfg.batch, c, h, w],
        "k": pipe.schedule.k,
        "device": str(device),
        "machine": machine_info(device),
        "results": [],
    }
    progress(f"measuring matrix-multiply rates on {device}")
    report["matmul_gflops"], report["matmul_emulated"] = matmul_peaks(device)
    report["flops"] = unet_flops(dict(pipe.unet.config), pipe.schedule.timesteps, cfg.batch, (h, w), pipe.tokenizer.model_max_length)

    timings = _time_backends(cfg, pipe, model_path, bundle_path, height, width, meter, progress)
    if cfg.references:
        timings += _time_references(cfg, pipe, height, width, meter, progress)
    report["results"] = [t.summary() for t in timings]
    add_rates(report)
    if cfg.vae_decoders:
        tiny, what = tiny_decoder_for_bench(pipe.vae, model_path)
        progress(f"timing the full VAE decoder against a tiny one ({what})")
        report["vae_decoders"] = {"tiny_decoder": what, **time_vae_decoders(pipe.vae, tiny, cfg.batch, (h, w), cfg.runs, cfg.warmup, meter)}
    return report


def _checked(cfg: BenchConfig):
    """``cfg`` with its ``--compile`` modes resolved for the device, the device and the dtype;
    refuses what cannot run before anything loads."""
    from ... import backends
    from ...reference.device import parse_device, parse_dtype
    from ...reference.torch_graphs import check_compile_mode

    for backend in cfg.backends:
        backends.get(backend)
    require("psutil", "bench's peak memory")
    if not cfg.vae or set(cfg.vae) - set(VAE_CHOICES):
        raise InputError(f"--vae {','.join(cfg.vae)}: give {', '.join(VAE_CHOICES)} or {','.join(VAE_CHOICES)}")
    if cfg.shape not in SHAPES:
        raise InputError(f"unknown shape {cfg.shape!r}: choose from {', '.join(SHAPES)}")
    device = parse_device(cfg.device)
    dtype = parse_dtype(cfg.dtype, device)
    if cfg.compile is None:
        cfg = replace(cfg, compile=("none", "cuda-graphs", "reduce-overhead") if device.type == "cuda" else ("none",))
    for mode in cfg.compile:
        check_compile_mode(mode, device)
    return cfg, device, dtype


def _model_and_bundle(cfg: BenchConfig):
    """The model directory the PyTorch rows load, the bundle given (None: a model was given),
    and the image size (None: the model's default)."""
    from ...reference.builtin import resolve_model

    model_path, height, width = _model_for_shape(cfg, resolve_model)
    if not (Path(model_path) / "manifest.json").exists():
        return model_path, None, height, width
    from ...bundle import Bundle

    bundle_path = Path(model_path)
    manifest = Bundle.open(bundle_path, verify=False).manifest
    model_path = Path(manifest.source["model"])
    height, width = manifest.image
    if not model_path.exists():
        raise InputError(f"the bundle's source model {model_path} is not here: bench needs it for the PyTorch reference")
    return model_path, bundle_path, height, width


def _time_backends(cfg: BenchConfig, pipe, model_path, bundle_path, height, width, meter: DeviceMeter, progress) -> list[Timing]:
    """The one-pass rows of every ``cfg.backends`` entry, in order (a bundle exported once when a
    bundle backend needs one and a model was given)."""
    from ... import backends

    timings: list[Timing] = []
    for backend in cfg.backends:
        needs_bundle = backends.get(backend).needs == "bundle"
        if needs_bundle and bundle_path is None:
            bundle_path = _cached_bundle(model_path, height, width, progress)
        progress(f"timing backend {backend}")
        if backends.get(backend).engine == "torch":
            timings += _time_torch(backend, cfg, pipe, height, width, meter, progress)
            continue
        rows = _time_backend(backend, cfg, pipe, bundle_path, height, width)
        if cfg.runtime_memory and needs_bundle and not backend.startswith("tensorrt"):
            progress(f"measuring the {backend} runtime's peak memory in a fresh process")
            rows[0].extra["runtime_memory"] = runtime_memory(backend, bundle_path, cfg.threads or 0)
        timings += rows
    return timings


def _time_references(cfg: BenchConfig, pipe, height, width, meter: DeviceMeter, progress) -> list[Timing]:
    """The K-step loop and the teacher's DDIM with CFG (its steps extrapolated from
    ``teacher_timed_steps`` when given)."""
    progress("timing the K-step loop reference")
    loop = time_stages(f"torch{_where(pipe)} K-step loop", reference_stages(pipe, "loop", cfg.batch, height, width, 0, 1.0), cfg.runs, cfg.warmup, meter=meter)
    n_timed = cfg.teacher_timed_steps or cfg.teacher_steps
    progress(f"timing the teacher's {cfg.teacher_steps}-step DDIM with CFG ({n_timed} steps timed)")
    t = time_stages(
        f"torch{_where(pipe)} teacher DDIM-{cfg.teacher_steps} CFG",
        reference_stages(pipe, "ddim", cfg.batch, height, width, n_timed, cfg.guidance),
        max(1, min(cfg.runs, 3)),
        0 if n_timed > 4 else 1,
        meter=meter,
    )
    if n_timed != cfg.teacher_steps:
        factor = cfg.teacher_steps / n_timed
        extra = [x * (factor - 1) for x in t.stages["unet"]]
        t.stages["unet"] = [x * factor for x in t.stages["unet"]]
        t.total = [x + e for x, e in zip(t.total, extra)]
        t.note = f"extrapolated from {n_timed} timed steps x {factor:g}"
    return [loop, t]


def _model_for_shape(cfg: BenchConfig, resolve_model):
    spec = SHAPES[cfg.shape]
    if spec is None:
        return resolve_model(cfg.model), None, None
    if cfg.model:
        raise InputError("give either --model or an sd* --shape (random weights), not both")
    from ...reference.builtin import cache_dir
    from ...reference.random_models import build_sd_pipeline

    arch, size, div = spec
    path = cache_dir() / f"random-{arch}-w{div}"
    if not (path / "model_index.json").exists():
        log.info("writing a random-weight %s model to %s (once)", arch, path)
        build_sd_pipeline(path, arch, width_div=div)
    return path, size, size


def _cached_bundle(model_path, height: int, width: int, progress) -> Path:
    """An fp32 bundle of ``model_path`` at this size, exported once into the cache directory."""
    import hashlib

    from ...build.export import ExportConfig, export_bundle
    from ...reference.builtin import cache_dir

    key = hashlib.sha256(f"{Path(model_path).resolve()}:{height}x{width}".encode()).hexdigest()[:12]
    out = cache_dir() / "bundles" / f"{Path(model_path).name}-{height}x{width}-{key}"
    if not (out / "manifest.json").exists():
        progress(f"exporting {model_path} to {out} (once)")
        export_bundle(ExportConfig(model=Path(model_path), out=out, height=height, width=width, validate_batch=1))
    return out


DTYPE_WORDS = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _where(pipe) -> str:
    """`` cuda:0`` for a pipeline on a GPU, nothing on the CPU (row names stay as they were)."""
    return "" if pipe.device.type == "cpu" else f" {pipe.device}"


def _time_torch(backend: str, cfg: BenchConfig, pipe, height, width, meter: DeviceMeter, progress) -> list[Timing]:
    """A torch backend's one-pass rows: one per ``--compile`` mode, eager first, in the pipeline's
    dtype (``torch``) or the backend's (``torch-bf16``). A compiled row's warm-up runs compile."""
    from ... import backends

    word = backends.get(backend).compute or DTYPE_WORDS[str(pipe.unet.dtype).replace("torch.", "")]
    rows = []
    for mode in cfg.compile:
        if mode != "none":
            progress(f"timing backend {backend} with --compile {mode} (its warm-up compiles)")
        name = f"torch{_where(pipe)} {word} one-pass" + ("" if mode == "none" else f" ({mode})")
        call = torch_chain(pipe, cfg.batch, height, width, word, mode)
        rows.append(time_chain(name, call, cfg.runs, max(cfg.warmup, 1 if mode == "none" else 3), meter=meter))
    return rows


def _time_backend(backend: str, cfg: BenchConfig, pipe, bundle_path, height, width) -> list[Timing]:
    """A bundle backend's one-pass row, one per ``cfg.vae`` decoder (a decoder row of the variant
    table, ``tiny``: the bundle's variant, in runs alternating with the full decoder's, on the same
    loaded UNet graphs)."""
    from ... import backends

    entry = backends.get(backend)
    rt = open_runtime(backend, bundle_path, cfg.threads or 0)
    decoders = {v: open_runtime(backend, bundle_path, cfg.threads or 0, vae=v) for v in cfg.vae if v != "full"}
    try:
        rt.runner("unet_encoder")  # the provider (and OpenVINO's compute precision) is known once a graph is loaded
        chains = {"full": runtime_chain(rt, cfg.batch)} if "full" in cfg.vae else {}
        chains.update({v: runtime_chain(rt, cfg.batch, vae=other) for v, other in decoders.items()})
        label = {v: "" if v == "full" else f", {v} VAE" for v in chains}
        calls = {f"{entry.engine} {rt.precision} one-pass{label[v]} ({rt.provider})": call for v, call in chains.items()}
        rows = time_chains(calls, cfg.runs, cfg.warmup, note="fused decoder: the sum is inside unet_decoder")
        for vae, row in zip(chains, rows):
            row.extra.update(backend=backend, vae=vae)
        return rows
    finally:
        rt.close()
        for other in decoders.values():
            other.close()
