"""Latency of every backend against the PyTorch reference, side by side, in one run.

For each backend: warm-up, then N timed runs of the whole one-pass pipeline, timing every stage
(text encoder, UNet encoder, K-batched decoder, sum, VAE) and the end to end; peak memory; the
UNet's achieved FLOP rate (FLOPs counted once per shape on the meta device) against this
machine's measured matrix-multiply rate. In the same run it times the references the method is
about: the same student as a K-step loop (full UNet every step) and the teacher's N-step DDIM
with classifier-free guidance.

On a CUDA device (``--device cuda``) the PyTorch rows run there in fp16 (or ``--dtype``): every
stage is timed with CUDA events, the matmul peaks are the GPU's, the peak device memory is
``torch.cuda.max_memory_allocated``, and ``--compile`` adds a row per fast path (torch.compile,
CUDA graphs) beside eager.
"""

from __future__ import annotations

import json
import logging
import platform
import statistics
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from ..cpu import FLAGS
from ..errors import InputError, TiueError, install_hint, require

log = logging.getLogger("tiue_export")

#: Benchmark shapes: name -> (architecture, image size, width divisor); "toy" = the model given.
SHAPES = {
    "toy": None,
    "sd21-512": ("sd21", 512, 1),
    "sd21-256": ("sd21", 256, 1),
    "sd15-512": ("sd15", 512, 1),
    "sd21-tiny": ("sd21", 256, 16),  # SD 2.1's blocks at 1/16 width: a quick smoke shape
}

STAGES = ("text_encoder", "unet_encoder", "unet_decoder", "sum", "vae_decoder")


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


@dataclass
class Timing:
    name: str
    stages: dict[str, list[float]] = field(default_factory=dict)
    total: list[float] = field(default_factory=list)
    peak_rss_mb: float | None = None
    note: str = ""
    extra: dict = field(default_factory=dict)

    def summary(self) -> dict:
        def stat(xs):
            return {"median_ms": 1000 * statistics.median(xs), "p90_ms": 1000 * float(np.percentile(xs, 90)), "n": len(xs)}

        return {
            "name": self.name,
            "stages": {k: stat(v) for k, v in self.stages.items() if v},
            "total": stat(self.total) if self.total else None,
            "peak_rss_mb": self.peak_rss_mb,
            "note": self.note,
            **self.extra,
        }


class PeakRSS:
    """Peak resident memory of this process while the block runs (sampled every 5 ms)."""

    def __enter__(self):
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self):
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, self._proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)

    @property
    def peak_mb(self) -> float:
        return self.peak / 2**20


def matmul_rate(dtype: str = "fp32", n: int = 2048, reps: int = 5, min_seconds: float = 0.05, device="cpu") -> float:
    """Best achieved GFLOP/s of a square torch matmul in ``dtype`` on ``device``.

    The side doubles from 256 up to ``n`` while one product takes under ``min_seconds``: large
    enough to reach the kernel's rate, and bounded where ``dtype`` has no fast kernel (bf16 on a
    CPU without bf16 instructions runs a reference loop: a 2048-side product takes minutes). On a
    GPU every product is synchronised (fp32 there is full fp32: PyTorch's default, no TF32).
    """
    import torch

    dt = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[dtype]
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def once(a, b) -> float:
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        return time.perf_counter() - t0

    size = min(256, n)
    while True:
        a = torch.randn(size, size, device=device).to(dt)
        b = torch.randn(size, size, device=device).to(dt)
        once(a, b)  # warm-up (oneDNN/MKL/cuBLAS kernel selection)
        best = once(a, b)
        if size >= n or best >= min_seconds:
            break
        size = min(2 * size, n)
    for _ in range(reps - 1):
        best = min(best, once(a, b))
    return 2 * size**3 / best / 1e9


def matmul_peaks(device) -> tuple[dict[str, float], list[str]]:
    """The matmul rates a run's FLOP shares are measured against, and the precisions left out
    because this CPU only emulates them: fp32, fp16 and bf16 on a GPU (8192-side products); fp32
    on the CPU, and bf16 where it has bf16 dot products (AVX512-BF16, AMX-BF16): elsewhere a bf16
    matmul converts to fp32 and its rate is no peak. int8 has no torch matmul to measure it by."""
    import torch

    from ..cpu import cpu_features

    if torch.device(device).type == "cuda":
        return {dt: matmul_rate(dt, n=8192, device=device) for dt in ("fp32", "fp16", "bf16")}, []
    native = cpu_features().native
    emulated = [dt for dt in ("bf16",) if not native[dt]]
    return {dt: matmul_rate(dt) for dt in ("fp32", "bf16") if dt not in emulated}, emulated


class DeviceMeter:
    """What a run on ``device`` synchronises and measures: on a GPU, ``sync`` waits for its work
    and ``peak_mb`` is ``torch.cuda.max_memory_allocated`` since :meth:`reset`; on the CPU both
    are no-ops (the CPU rows report peak RSS)."""

    def __init__(self, device):
        import torch

        self.device = torch.device(device)
        self.cuda = self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize(self.device)

    def reset(self) -> None:
        if self.cuda:
            import torch

            self.sync()
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float | None:
        if not self.cuda:
            return None
        import torch

        return torch.cuda.max_memory_allocated(self.device) / 2**20


def unet_flops(unet_config: dict, timesteps, batch: int, latent_hw: tuple[int, int], seq_len: int) -> dict[str, int]:
    """FLOPs of the one-pass UNet (encoder once, K-batched decoder once), counted on the meta device."""
    import torch
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from ..reference.student import TiUEStudent

    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(unet_config)
        student = TiUEStudent(unet, timesteps)
        x = torch.empty(batch, unet.config.in_channels, *latent_hw)
        ehs = torch.empty(batch, seq_len, unet.config.cross_attention_dim)
        with FlopCounterMode(display=False) as fc:
            feats = student.encode(x, ehs)
        enc = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            student.decode(feats, ehs)
        dec = fc.get_total_flops()
        with FlopCounterMode(display=False) as fc:
            unet(x, int(timesteps[0]), encoder_hidden_states=ehs)
        full = fc.get_total_flops()
    return {"unet_encoder": int(enc), "unet_decoder": int(dec), "one_pass_unet": int(enc + dec), "full_unet_step": int(full)}


def decoder_flops(vae, batch: int, latent_hw: tuple[int, int]) -> int:
    """FLOPs of ``vae.decode`` (an ``AutoencoderKL`` or ``AutoencoderTiny``) on one latent batch, counted on the meta device."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        model = type(vae).from_config(vae.config)
        z = torch.empty(batch, model.config.latent_channels, *latent_hw)
        with FlopCounterMode(display=False) as fc:
            model.decode(z)
    return int(fc.get_total_flops())


def tiny_decoder_for_bench(vae, model_path) -> tuple[object, str]:
    """The tiny decoder to set beside the full one: the model's own (``--vae tiny``), else random
    weights of ``distill-vae``'s default architecture (TAESD's width 64 and 3,...,3,1 blocks); speed
    does not depend on the weights."""
    from ..distill.tiny_vae import VaeDistillConfig, build_tiny
    from ..reference import tiny_vae

    try:
        path = tiny_vae.resolve(Path(model_path), "tiny")
    except InputError:
        path = None
    if path is not None:
        return tiny_vae.load(path), f"the model's tiny decoder ({path})"
    tiny = build_tiny(VaeDistillConfig(out="-"), vae.config, seed=0).eval().requires_grad_(False)
    c = tiny.config
    return tiny, f"random weights, width {c.decoder_block_out_channels[0]}, blocks {','.join(map(str, c.num_decoder_blocks))}"


def time_vae_decoders(full, tiny, batch: int, latent_hw: tuple[int, int], runs: int, warmup: int, meter: DeviceMeter | None = None) -> dict:
    """The full and the tiny VAE decoder side by side on one latent batch: FLOPs, parameters and
    torch latency on the full decoder's device and in its dtype (each decodes ``z0`` as its graph
    does: ``decode(z0 / scaling_factor)``)."""
    import torch

    param = next(full.parameters())
    tiny = tiny.to(device=param.device, dtype=param.dtype)
    z0 = torch.randn(batch, full.config.latent_channels, *latent_hw, generator=torch.Generator().manual_seed(0)).to(param.device, param.dtype)
    out = {}
    for name, vae in (("full", full), ("tiny", tiny)):

        @torch.no_grad()
        def decode(_, vae=vae):
            return vae.decode(z0 / vae.config.scaling_factor).sample

        timing = time_stages(name, {"decode": decode}, runs, warmup, meter=meter).summary()
        out[name] = {
            "class": type(vae).__name__,
            "flops": decoder_flops(vae, batch, latent_hw),
            "params": sum(p.numel() for p in vae.decoder.parameters()),
            "median_ms": timing["stages"]["decode"]["median_ms"],
            "p90_ms": timing["stages"]["decode"]["p90_ms"],
            "dtype": str(param.dtype).replace("torch.", ""),
            "device": str(param.device),
        }
    out["speedup"] = out["full"]["median_ms"] / out["tiny"]["median_ms"]
    out["flop_ratio"] = out["full"]["flops"] / out["tiny"]["flops"]
    return out


def time_stages(name: str, stages: dict[str, Callable], runs: int, warmup: int, note: str = "", meter: DeviceMeter | None = None) -> Timing:
    """Run ``stages`` (ordered name -> thunk taking the previous stage's output) warmup + runs times
    (on a GPU, each stage ends when the device has finished its work)."""
    meter = meter or DeviceMeter("cpu")
    timing = Timing(name, {k: [] for k in stages}, note=note)
    meter.reset()
    with PeakRSS() as mem:
        for i in range(warmup + runs):
            value = None
            meter.sync()
            t_start = time.perf_counter()
            durations = {}
            for stage, fn in stages.items():
                t0 = time.perf_counter()
                value = fn(value)
                meter.sync()
                durations[stage] = time.perf_counter() - t0
            total = time.perf_counter() - t_start
            if i >= warmup:
                for stage, d in durations.items():
                    timing.stages[stage].append(d)
                timing.total.append(total)
    timing.peak_rss_mb = mem.peak_mb
    _device_peak(timing, meter)
    return timing


def _device_peak(timing: Timing, meter: DeviceMeter) -> None:
    peak = meter.peak_mb()
    if peak is not None:
        timing.extra["peak_device_mb"] = peak


def time_chain(name: str, call: Callable[[], dict[str, float]], runs: int, warmup: int, note: str = "", meter: DeviceMeter | None = None) -> Timing:
    """Time ``call`` (one run of the executor, returning its per-stage seconds) warmup + runs times."""
    return time_chains({name: call}, runs, warmup, note, meter)[0]


def time_chains(calls: dict[str, Callable[[], dict[str, float]]], runs: int, warmup: int, note: str = "", meter: DeviceMeter | None = None) -> list[Timing]:
    """:func:`time_chain` for several calls in alternating runs (run i of each, then run i + 1):
    their ratios see the same load on a shared machine. The peak memory is the whole block's."""
    meter = meter or DeviceMeter("cpu")
    timings = {name: Timing(name, {}, note=note) for name in calls}
    meter.reset()
    with PeakRSS() as mem:
        for i in range(warmup + runs):
            for name, call in calls.items():
                meter.sync()
                t0 = time.perf_counter()
                stages = call()
                meter.sync()
                total = time.perf_counter() - t0
                if i >= warmup:
                    for stage, d in stages.items():
                        if stage != "load":
                            timings[name].stages.setdefault(stage, []).append(d)
                    timings[name].total.append(total - stages.get("load", 0.0))
    for timing in timings.values():
        timing.peak_rss_mb = mem.peak_mb
        _device_peak(timing, meter)
    return list(timings.values())


def torch_chain(pipe, batch: int, height: int, width: int, precision: str = "fp32", compile: str = "none") -> Callable[[], dict[str, float]]:
    """One-pass on PyTorch through the executor, on the pipeline's device: in its own dtype, or a
    copy of its UNet and VAE cast to ``precision``; the UNet graphs as ``compile`` says. On a GPU
    the stage times are the CUDA events of each graph call (the sum, on the host, by the clock)."""
    import torch

    from ..executor import STAGES, run_chain
    from ..reference.torch_graphs import graph_modules, graphs
    from ..sampling import initial_noise

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    manifest = pipe.manifest(height, width)
    if dtype == pipe.unet.dtype:
        modules = None
    else:
        modules = graph_modules(pipe, baked=False, student=_cast_student(pipe, dtype), vae=_cast(pipe.vae, dtype))
    g = graphs(pipe, manifest, dtype=dtype, modules=modules, compile=compile)
    ids = pipe.tokenize(["a photo of a cat"] * batch)
    noise = initial_noise(range(batch), pipe.latent_shape(height, width))

    def call():
        timings = run_chain(manifest, g, ids, noise, "unfused").timings
        for graph, seconds in g.gpu_seconds().items():  # one call of each graph per run
            timings[STAGES.get(graph, graph)] = seconds
        return timings

    return call


def runtime_chain(pipe, batch: int, vae=None) -> Callable[[], dict[str, float]]:
    """A runtime pipeline's fused one-pass chain through the executor; with ``vae`` (another
    pipeline of the same bundle) its ``vae_decoder`` decodes instead, the UNet graphs shared."""
    from ..executor import GraphSet, run_chain
    from ..sampling import initial_noise

    ids = pipe.tokenize(["a photo of a cat"] * batch)
    noise = initial_noise(range(batch), pipe.latent_shape)
    graphs = pipe.graphs
    if vae is not None:  # each runner stays owned (and closed) by its own pipeline
        graphs = GraphSet({n: (lambda n=n: (vae if n == "vae_decoder" else pipe).runner(n)) for n in pipe.graphs.factories})
    return lambda: run_chain(pipe.manifest, graphs, ids, noise, "fused").timings


def _cast(module, dtype):
    import copy

    return copy.deepcopy(module).to(dtype)


def _cast_student(pipe, dtype):
    from ..reference.student import TiUEStudent

    s = pipe.schedule
    return TiUEStudent(_cast(pipe.unet, dtype), s.timesteps, s.encoder_timestep)


def reference_stages(pipe, kind: str, batch: int, height: int, width: int, steps: int, guidance: float) -> dict[str, Callable]:
    """The references as timed stages: ``loop`` (K full-UNet DDIM steps, the same student) or
    ``ddim`` (the teacher's N-step DDIM with classifier-free guidance)."""
    import torch

    from ..sampling import SamplerChoice, initial_noise, sample_ddim

    prompts = ["a photo of a cat"] * batch
    noise = torch.from_numpy(initial_noise(range(batch), pipe.latent_shape(height, width))).to(pipe.device, pipe.unet.dtype)
    alphas = pipe.scheduler.alphas_cumprod.double().numpy()
    timesteps, prev, final = pipe.ddim_plan(SamplerChoice("loop") if kind == "loop" else SamplerChoice("ddim", steps))
    state = {}

    @torch.no_grad()
    def text(_):
        state["cond"] = pipe.encode_text(prompts)
        if kind != "loop":
            state["uncond"] = pipe.encode_text([""] * batch)
        return state["cond"]

    @torch.no_grad()
    def unet(cond):
        return sample_ddim(noise, pipe.denoiser(cond, state.get("uncond"), guidance), timesteps, prev, alphas, final)

    @torch.no_grad()
    def vae(z0):
        return pipe.decode_latents(z0)

    return {"text_encoder": text, "unet": unet, "vae_decoder": vae}


def run_bench(cfg: BenchConfig, progress: Callable[[str], None] = log.info) -> dict:
    """Measure every requested backend and reference; return the JSON-able report."""
    import torch

    from .. import backends
    from ..reference.builtin import resolve_model
    from ..reference.device import parse_device, parse_dtype
    from ..reference.pipeline import load_pipeline
    from ..reference.torch_graphs import check_compile_mode

    for backend in cfg.backends:
        backends.get(backend)
    require("psutil", "bench's peak memory")
    if not cfg.vae or set(cfg.vae) - {"full", "tiny"}:
        raise InputError(f"--vae {','.join(cfg.vae)}: give full, tiny or full,tiny")
    if cfg.shape not in SHAPES:
        raise InputError(f"unknown shape {cfg.shape!r}: choose from {', '.join(SHAPES)}")
    device = parse_device(cfg.device)
    dtype = parse_dtype(cfg.dtype, device)
    if cfg.compile is None:
        cfg = replace(cfg, compile=("none", "cuda-graphs", "reduce-overhead") if device.type == "cuda" else ("none",))
    for mode in cfg.compile:
        check_compile_mode(mode, device)
    meter = DeviceMeter(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model_path, height, width = _model_for_shape(cfg, resolve_model)
    bundle_path = None
    if (Path(model_path) / "manifest.json").exists():
        bundle_path = Path(model_path)
        from ..bundle import Bundle

        manifest = Bundle.open(bundle_path, verify=False).manifest
        model_path = Path(manifest.source["model"])
        height, width = manifest.image
        if not model_path.exists():
            raise InputError(f"the bundle's source model {model_path} is not here: bench needs it for the PyTorch reference")
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
    flops = unet_flops(dict(pipe.unet.config), pipe.schedule.timesteps, cfg.batch, (h, w), pipe.tokenizer.model_max_length)
    report["flops"] = flops

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
    if cfg.references:
        progress("timing the K-step loop reference")
        timings.append(
            time_stages(f"torch{_where(pipe)} K-step loop", reference_stages(pipe, "loop", cfg.batch, height, width, 0, 1.0), cfg.runs, cfg.warmup, meter=meter)
        )
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
        timings.append(t)
    report["results"] = [t.summary() for t in timings]
    _add_rates(report)
    if cfg.vae_decoders:
        tiny, what = tiny_decoder_for_bench(pipe.vae, model_path)
        progress(f"timing the full VAE decoder against a tiny one ({what})")
        report["vae_decoders"] = {"tiny_decoder": what, **time_vae_decoders(pipe.vae, tiny, cfg.batch, (h, w), cfg.runs, cfg.warmup, meter)}
    return report


def _model_for_shape(cfg: BenchConfig, resolve_model):
    spec = SHAPES[cfg.shape]
    if spec is None:
        return resolve_model(cfg.model), None, None
    if cfg.model:
        raise InputError("give either --model or an sd* --shape (random weights), not both")
    from ..reference.builtin import cache_dir
    from ..reference.random_sd import build_sd_pipeline

    arch, size, div = spec
    path = cache_dir() / f"random-{arch}-w{div}"
    if not (path / "model_index.json").exists():
        log.info("writing a random-weight %s model to %s (once)", arch, path)
        build_sd_pipeline(path, arch, width_div=div)
    return path, size, size


def _cached_bundle(model_path, height: int, width: int, progress) -> Path:
    """An fp32 bundle of ``model_path`` at this size, exported once into the cache directory."""
    import hashlib

    from ..build.export import ExportConfig, export_bundle
    from ..reference.builtin import cache_dir

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
    from .. import backends

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
    """A bundle backend's one-pass row, one per ``cfg.vae`` decoder (``tiny``: the bundle's tiny
    variant, in runs alternating with the full decoder's, on the same loaded UNet graphs)."""
    from .. import backends

    entry = backends.get(backend)
    rt = open_runtime(backend, bundle_path, cfg.threads or 0)
    tiny = open_runtime(backend, bundle_path, cfg.threads or 0, vae="tiny") if "tiny" in cfg.vae else None
    try:
        rt.runner("unet_encoder")  # the provider (and OpenVINO's compute precision) is known once a graph is loaded
        chains = {"full": runtime_chain(rt, cfg.batch)} if "full" in cfg.vae else {}
        if tiny is not None:
            chains["tiny"] = runtime_chain(rt, cfg.batch, vae=tiny)
        label = {"full": "", "tiny": ", tiny VAE"}
        calls = {f"{entry.engine} {rt.precision} one-pass{label[v]} ({rt.provider})": call for v, call in chains.items()}
        rows = time_chains(calls, cfg.runs, cfg.warmup, note="fused decoder: the sum is inside unet_decoder")
        for vae, row in zip(chains, rows):
            row.extra.update(backend=backend, vae=vae)
        return rows
    finally:
        rt.close()
        if tiny is not None:
            tiny.close()


def open_runtime(backend: str, bundle_path, threads: int = 0, low_memory: bool = False, vae: str = "full"):
    """A loaded bundle pipeline for a registry ``backend`` name (``onnxruntime-int8``, ``openvino``, ...)."""
    from ..generator import GenerateOptions, open_generator

    options = GenerateOptions(str(bundle_path), backend, vae=vae, low_memory=low_memory, threads=threads, verify=False)
    return open_generator(options).load().pipe


def runtime_memory(backend: str, bundle_path, threads: int = 0, timeout: float = 3600) -> dict:
    """Peak resident memory and cold start of the torch-free runtime alone: a fresh Python process
    loads the bundle with ``backend`` and makes one image, with every graph held (a service) and
    with ``low_memory`` (one graph at a time).

    ``first_image_s`` is a fresh process's time from launch to its first image. OpenVINO runs
    first with an empty graph cache (``*_empty_cache``: converting and compiling every graph), then
    with the cache that run filled, as a ``serve`` replica after the first finds it; the peak and
    the ratio to the weights are the cached run's. ``weight_mb`` is the bundle's bytes of the
    graphs one image loads; ``held_weight_mb`` the bytes of the files the runtime maps (OpenVINO's
    fp16 IR where it stores the float graphs so)."""
    import tempfile

    from ..backends import get

    engine = get(backend).engine
    out = {}
    with tempfile.TemporaryDirectory(prefix="tiue-bench-cache-") as cache:
        env = {"TIUE_EXPORT_CACHE": cache, "TIUE_EXPORT_OV_CACHE": "1"}
        if engine == "openvino":
            first = _runtime_memory_run(backend, bundle_path, threads, False, timeout, env)
            out.update({f"{k}_empty_cache": v for k, v in first.items()})
        out.update(_runtime_memory_run(backend, bundle_path, threads, False, timeout, env))
        low = _runtime_memory_run(backend, bundle_path, threads, True, timeout, env)
        out.update({f"{k}_low_memory": v for k, v in low.items()})
    weights = _runtime_weight_bytes(bundle_path, get(backend).variant)
    out["weight_mb"] = weights / 2**20
    out["peak_over_weights"] = out["peak_rss_mb"] / out["weight_mb"]
    out["peak_over_held_weights"] = out["peak_rss_mb"] / out["held_weight_mb"]
    out["peak_over_weights_low_memory"] = out["peak_rss_mb_low_memory"] / out["weight_mb"]
    return out


def runtime_memory_child(backend: str, bundle_path: str, threads: int, low_memory: bool, launched: float) -> dict:
    """One image in this (fresh) process, for :func:`runtime_memory`: its peak RSS, the bytes of
    the graph files it loaded, and the seconds since ``launched`` (the parent's clock at launch)."""
    import resource
    import sys

    rt = open_runtime(backend, bundle_path, threads, low_memory)
    r = rt(["a photo of a cat"], seed=0)
    first = time.time() - launched
    held = 0
    for name in rt.manifest.chains["fused"].graphs:
        loader = rt.graphs.factories[name]().loader
        cached = loader.cached() if hasattr(loader, "cached") else None
        path = cached[0] if cached else loader.path
        beside = [path.with_suffix(".bin")] if path.suffix == ".xml" else list(path.parent.glob(path.name + ".data*"))
        held += sum(f.stat().st_size for f in [path, *beside] if f.is_file())
    # VmHWM, not ru_maxrss: Linux carries the forking parent's high-water mark into ru_maxrss
    # across exec, so a child of a big process would report the parent's memory.
    try:
        hwm = next(x for x in open("/proc/self/status") if x.startswith("VmHWM:")).split()[1]
        peak = int(hwm) / 1024
    except (OSError, StopIteration):
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "peak_rss_mb": peak, "torch_loaded": "torch" in sys.modules, "seconds": sum(r.timings.values()),
        "first_image_s": first, "held_weight_mb": held / 2**20,
    }


def _runtime_memory_run(backend: str, bundle_path, threads: int, low_memory: bool, timeout: float, env: dict | None = None) -> dict:
    import os
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        "from tiue_export.verify.bench import runtime_memory_child\n"
        "a = sys.argv\n"
        "print(json.dumps(runtime_memory_child(a[1], a[2], int(a[3]), a[4] == '1', float(a[5]))))\n"
    )
    launched = time.time()
    argv = [sys.executable, "-c", code, backend, str(bundle_path), str(threads), "1" if low_memory else "0", repr(launched)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TiueError(f"the {backend} runtime failed in its own process: {tail}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _runtime_weight_bytes(bundle_path, precision: str | None) -> int:
    """Bytes on disk of the graphs (and their external data) one fused one-pass run loads."""
    from ..bundle import Bundle

    bundle = Bundle.open(bundle_path, verify=False).with_variant(precision)
    total = 0
    for name in bundle.manifest.chains["fused"].graphs:
        path = bundle.graph_path(name)
        total += path.stat().st_size
        total += sum(f.stat().st_size for f in path.parent.glob(path.name + ".data*"))
        total += sum((path.parent / f).stat().st_size for f in bundle.manifest.graphs[name].external_data if path.suffix == ".xml")
    return total


def _add_rates(report: dict) -> None:
    """UNet GFLOP/s of each one-pass result, and its share of its precision's matmul peak where
    one was measured and the share means something (``unet_peak`` says why not, otherwise)."""
    flops = report["flops"]["one_pass_unet"]
    peaks = report["matmul_gflops"]
    for r in report["results"]:
        st = r["stages"]
        if "unet_encoder" in st and "unet_decoder" in st:
            sec = (st["unet_encoder"]["median_ms"] + st["unet_decoder"]["median_ms"]) / 1000
            rate = flops / sec / 1e9
            word = next((w for w in ("int8", "bf16", "fp16") if w in r["name"]), "fp32")
            r["unet_gflops"] = rate
            r["unet_share_of_matmul_peak"] = None
            if word in report.get("matmul_emulated", ()):
                r["unet_peak"] = f"{word} emulated"
            elif word not in peaks:
                r["unet_peak"] = f"no {word} peak"
            elif rate > peaks[word]:  # mixed precisions (int8 and float ops) can outrun one precision's matmul
                r["unet_peak"] = f"above the {word} peak"
            else:
                r["unet_share_of_matmul_peak"] = rate / peaks[word]
                r["unet_peak"] = f"{100 * rate / peaks[word]:.0f}% of the {word} peak"


def machine_info(device="cpu") -> dict:
    import os

    import torch

    from ..cpu import cpu_features

    cpu = cpu_features()
    info = {
        "cpu": cpu.model,
        "vendor": cpu.vendor,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "isa": list(cpu.flags),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }
    if torch.device(device).type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info.update(gpu=props.name, gpu_memory_gb=props.total_memory / 2**30, cuda=torch.version.cuda)
    return info


def to_markdown(report: dict) -> str:
    """A Markdown table of medians (ms) per stage and backend, with FLOP rates and ratios."""
    rows = report["results"]
    cols = ["text_encoder", "unet_encoder", "unet_decoder", "sum", "vae_decoder", "unet"]
    present = [c for c in cols if any(c in r["stages"] for r in rows)]
    gpu = any("peak_device_mb" in r for r in rows)
    head = "| backend | " + " | ".join(present) + " | end to end (p90) | UNet GFLOP/s (of its matmul peak) | peak RSS MB |" + (" peak GPU MB |" if gpu else "")
    lines = [head, "|" + "---|" * (len(present) + 4 + gpu)]
    for r in rows:
        cells = [f"{r['stages'][c]['median_ms']:.1f}" if c in r["stages"] else "" for c in present]
        tot = r["total"]
        rate = f"{r['unet_gflops']:.0f} ({r['unet_peak']})" if "unet_gflops" in r else ""
        note = f" ({r['note']})" if r.get("note") else ""
        device_mb = (f" {r['peak_device_mb']:.0f} |" if "peak_device_mb" in r else " |") if gpu else ""
        lines.append(
            f"| {r['name']}{note} | " + " | ".join(cells) + f" | {tot['median_ms']:.1f} ({tot['p90_ms']:.1f}) | {rate} | {r['peak_rss_mb']:.0f} |" + device_mb
        )
    m = report["machine"]
    f = report["flops"]
    isa = ", ".join(m["isa"]) or "none of " + ", ".join(FLAGS.values())
    peaks = [f"{k} {v:.0f} GFLOP/s" for k, v in report["matmul_gflops"].items()]
    peaks += [f"{k} emulated (no {k} dot-product instructions: not measured)" for k in report.get("matmul_emulated", ())]
    lines += [
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, torch {m['torch']} ({m['torch_threads']} threads), ISA {isa}"
        + (f"; GPU {m['gpu']} ({m['gpu_memory_gb']:.0f} GiB, CUDA {m['cuda']})." if "gpu" in m else "."),
        f"Matmul peak on {report.get('device', 'cpu')}: " + ", ".join(peaks) + "; int8 rows have no int8 peak to compare with.",
        f"One-pass UNet: {f['one_pass_unet'] / 1e9:.4g} GFLOP (encoder {f['unet_encoder'] / 1e9:.4g}, K-batched decoder "
        f"{f['unet_decoder'] / 1e9:.4g}); one full UNet step {f['full_unet_step'] / 1e9:.4g} GFLOP.",
    ]
    lines += ["", *ratio_lines(report)]
    lines += tiny_vae_lines(report)
    lines += vae_decoder_lines(report)
    for r in rows:
        mem = r.get("runtime_memory")
        if mem:
            held = ""
            if abs(mem["held_weight_mb"] - mem["weight_mb"]) > 1:
                held = f" ({mem['peak_over_held_weights']:.2f}x the {mem['held_weight_mb']:.0f} MB it maps)"
            cold = f"first image {mem['first_image_s']:.1f} s after launch"
            if "first_image_s_empty_cache" in mem:
                cold += f" with its graph cache ({mem['first_image_s_empty_cache']:.1f} s with an empty one)"
            lines.append(
                f"- {r['name']}: the torch-free runtime alone (fresh process, load + one image) peaks at "
                f"{mem['peak_rss_mb']:.0f} MB = {mem['peak_over_weights']:.2f}x the {mem['weight_mb']:.0f} MB of weights in the bundle{held} "
                f"with every graph held, {mem['peak_rss_mb_low_memory']:.0f} MB = {mem['peak_over_weights_low_memory']:.2f}x with "
                f"low_memory (one graph at a time; image {mem['seconds_low_memory']:.1f} s vs {mem['seconds']:.1f} s); cold start: {cold}"
            )
    return "\n".join(lines) + "\n"


def vae_decoder_lines(report: dict) -> list[str]:
    """The full and the tiny VAE decoder side by side, if measured."""
    v = report.get("vae_decoders")
    if not v:
        return []
    lines = ["", "| VAE decoder (torch) | GFLOP | decoder params (M) | median ms (p90) |", "|---|---|---|---|"]
    for name in ("full", "tiny"):
        d = v[name]
        label = f"{name}: {d['class']}" + (f" ({v['tiny_decoder']})" if name == "tiny" else "")
        lines.append(f"| {label} | {d['flops'] / 1e9:.4g} | {d['params'] / 1e6:.3g} | {d['median_ms']:.1f} ({d['p90_ms']:.1f}) |")
    flops, speed = times(v["flop_ratio"], "fewer FLOPs", "more FLOPs"), times(v["speedup"], "faster", "slower")
    lines += ["", f"- tiny VAE decoder: {flops}, {speed} than the full decoder (torch {v['full'].get('dtype', 'float32')} on {v['full'].get('device', 'cpu')}, this run)"]
    return lines


def tiny_vae_lines(report: dict) -> list[str]:
    """What the tiny VAE decoder buys on each bundle backend, from this run's rows: its decoder
    against the full one and the end to end against the same backend's full-VAE row (alternating
    runs), and the end to end against the first full-VAE row (the baseline: another backend's row
    ran before or after it, so the text encoder, the same graph in every row, is given as the load's control)."""
    rows = [r for r in report["results"] if r.get("vae") in ("full", "tiny")]
    full = {r["backend"]: r for r in rows if r["vae"] == "full"}
    baseline = next(iter(full.values()), None)

    def against_baseline(r) -> str:
        text = "text_encoder"
        control = ""
        if text in r["stages"]:  # the same graph in both rows: anything but 1.00x is the load
            control = f"; control: text encoder {times(baseline['stages'][text]['median_ms'] / r['stages'][text]['median_ms'], 'faster', 'slower', 2)}"
        speed = times(baseline["total"]["median_ms"] / r["total"]["median_ms"], "faster", "slower", 2)
        return f"end to end {speed} than {baseline['name']} (sequential rows{control})"

    out = []
    for r in rows:
        if r["vae"] != "tiny":
            continue
        same = full.get(r["backend"])
        parts = []
        if same is not None:
            dec = same["stages"]["vae_decoder"]["median_ms"] / r["stages"]["vae_decoder"]["median_ms"]
            e2e = same["total"]["median_ms"] / r["total"]["median_ms"]
            parts.append(f"VAE decoder {times(dec, 'faster', 'slower')} than the full one, end to end {times(e2e, 'faster', 'slower', 2)} (alternating runs)")
        if baseline is not None and baseline is not same:
            parts.append(against_baseline(r))
        out.append(f"- {r['name']}: " + "; ".join(parts))
    for r in rows:
        if r["vae"] == "full" and baseline is not None and r is not baseline:
            out.append(f"- {r['name']}: {against_baseline(r)}")
    return out


def times(ratio: float, bigger: str, smaller: str, digits: int = 1) -> str:
    """A ratio worded so the number is at least 1: ``2.0x faster``, never ``0.5x faster``."""
    return f"{ratio:.{digits}f}x {bigger}" if ratio >= 1 else f"{1 / ratio:.{digits}f}x {smaller}"


def ratio_lines(report: dict) -> list[str]:
    """Speed-ups of each one-pass backend over the references, measured in this run."""
    res = {r["name"]: r for r in report["results"]}
    loop = next((r for n, r in res.items() if "K-step loop" in n), None)
    teacher = next((r for n, r in res.items() if "teacher" in n), None)
    out = []
    for name, r in res.items():
        if "one-pass" not in name:
            continue
        unet_ms = sum(r["stages"][s]["median_ms"] for s in ("unet_encoder", "unet_decoder", "sum") if s in r["stages"])
        if loop:
            out.append(f"- {name}: {times(loop['stages']['unet']['median_ms'] / unet_ms, 'faster', 'slower', 2)} than the K-step loop (UNet part)")
        if teacher:
            out.append(f"- {name}: {times(teacher['stages']['unet']['median_ms'] / unet_ms, 'faster', 'slower')} than the teacher's DDIM with CFG (UNet part)")
    return out


def write_chart(report: dict, path: Path) -> None:
    """A stacked horizontal bar chart of per-stage medians for each backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["results"]
    stages = ["text_encoder", "unet_encoder", "unet_decoder", "sum", "unet", "vae_decoder"]  # in pipeline order
    fig, ax = plt.subplots(figsize=(10, 0.6 * len(rows) + 1.5))
    left = np.zeros(len(rows))
    for stage in stages:
        vals = np.array([r["stages"].get(stage, {}).get("median_ms", 0.0) for r in rows])
        if vals.any():
            ax.barh([r["name"] for r in rows], vals, left=left, label=stage)
            left += vals
    ax.set_xlabel("median latency (ms)")
    # Linear, so stacked segments stay proportional; a bar over 5x the next longest (the teacher's
    # 50 steps) is cut at the axis and labelled with its total.
    order = np.sort(left)
    if len(order) > 1 and order[-1] > 5 * order[-2]:
        xmax = 1.25 * order[-2]
        ax.set_xlim(0, xmax)
        for i, total in enumerate(left):
            if total > xmax:
                ax.text(0.98 * xmax, i, f"total {total / 1000:,.0f} s (cut)", ha="right", va="center", fontsize=8, color="white", weight="bold")
    ax.invert_yaxis()
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    shape = report["config"]["shape"]
    what = shape if shape != "toy" or not report["config"].get("model") else Path(report["model"]).name
    ax.set_title(f"tiue-export bench: {what} {report['image_size'][0]}x{report['image_size'][1]}, batch {report['config']['batch']}")
    fig.tight_layout()
    from ..files import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)


def chart_missing() -> str | None:
    """Why no chart can be drawn here (None: matplotlib is installed): checked before a run starts."""
    import importlib.util

    if importlib.util.find_spec("matplotlib") is None:
        return f"no bench.png: matplotlib is not installed ({install_hint('matplotlib')})"
    return None


def write_report(report: dict, json_path: Path | None, out_dir: Path, chart: bool = True) -> list[Path]:
    """bench.json and bench.md, and with ``chart`` bench.png, under ``out_dir``."""
    from ..files import atomic_path

    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    paths = {"json": json_path or out_dir / "bench.json", "md": out_dir / "bench.md", "png": out_dir / "bench.png"}
    with atomic_path(paths["json"]) as tmp:
        tmp.write_text(json.dumps(report, indent=2))
    written.append(paths["json"])
    with atomic_path(paths["md"]) as tmp:
        tmp.write_text(to_markdown(report))
    written.append(paths["md"])
    if chart:
        write_chart(report, paths["png"])
        written.append(paths["png"])
    return written
