"""Timed chains: warm-up then timed runs of a pipeline's stages (the executor's chain on PyTorch or a
runtime, the references, the VAE decoders), each stage timed, the peak memory of the block."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ...errors import InputError
from .meters import DeviceMeter, PeakRSS, decoder_flops


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

    from ...executor import STAGES, run_chain
    from ...reference.torch_graphs import graph_modules, graphs
    from ...sampling import initial_noise

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
    from ...executor import GraphSet, run_chain
    from ...sampling import initial_noise

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
    from ...reference.student import TiUEStudent

    s = pipe.schedule
    return TiUEStudent(_cast(pipe.unet, dtype), s.timesteps, s.encoder_timestep)


def reference_stages(pipe, kind: str, batch: int, height: int, width: int, steps: int, guidance: float) -> dict[str, Callable]:
    """The references as timed stages: ``loop`` (K full-UNet DDIM steps, the same student) or
    ``ddim`` (the teacher's N-step DDIM with classifier-free guidance)."""
    import torch

    from ...sampling import SamplerChoice, initial_noise, sample_ddim

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


def tiny_decoder_for_bench(vae, model_path) -> tuple[object, str]:
    """The tiny decoder to set beside the full one: the model's own (``--vae tiny``, the variant
    table's row), else random weights of ``distill-vae``'s default architecture (TAESD's width 64
    and 3,...,3,1 blocks); speed does not depend on the weights."""
    from ...distill.tiny_vae import VaeDistillConfig, build_tiny
    from ...variants import VARIANTS

    row = VARIANTS["tiny"]
    try:
        path = row.resolve(Path(model_path), "tiny")
    except InputError:
        path = None
    if path is not None:
        return row.load(path), f"the model's tiny decoder ({path})"
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


def open_runtime(backend: str, bundle_path, threads: int = 0, low_memory: bool = False, vae: str = "full"):
    """A loaded bundle pipeline for a registry ``backend`` name (``onnxruntime-int8``, ``openvino``, ...)."""
    from ...generator import GenerateOptions, open_generator

    options = GenerateOptions(str(bundle_path), backend, vae=vae, low_memory=low_memory, threads=threads, verify=False)
    return open_generator(options).load().pipe

