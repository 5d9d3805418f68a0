"""The PyTorch reference as a backend: the student's graphs as torch modules behind the same
runner interface as ONNX Runtime, so the reference runs through the one executor too.

The same modules are what ``export`` traces (``baked=True``: time embeddings precomputed into a
constant table, the VAE scale as a product inside the graph). The reference (``baked=False``)
computes time embeddings as diffusers does and divides by the VAE scale as the authors' code does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import InputError
from ..executor import GraphSet, Runner
from ..schedule import combine_one_pass
from .student import TiUEStudent


class BakedStudent(TiUEStudent):
    """The student with its time embeddings precomputed: the encoder's and the K decoder
    timesteps' embeddings become a constant table, selected with a one-hot product (exact)."""

    def __init__(self, student: TiUEStudent):
        super().__init__(student.unet, student.timesteps.tolist(), student.encoder_timestep)
        ts = torch.tensor(sorted(set(student.timesteps.tolist()) | {student.encoder_timestep}))
        like = torch.zeros((len(ts),), dtype=student.unet.dtype)  # get_time_embed expands to its batch
        with torch.no_grad():
            table = TiUEStudent.time_embedding(self, ts, like)
        self.register_buffer("baked_timesteps", ts, persistent=False)
        self.register_buffer("baked_embeddings", table, persistent=False)

    def time_embedding(self, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        onehot = (timesteps.reshape(-1, 1) == self.baked_timesteps.reshape(1, -1)).to(self.baked_embeddings.dtype)
        return onehot @ self.baked_embeddings


class TextEncoderGraph(nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids)[0]


class UNetEncoderGraph(nn.Module):
    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, latents, text_embeddings):
        return self.student.encode(latents, text_embeddings)


class UNetDecoderGraph(nn.Module):
    def __init__(self, student):
        super().__init__()
        self.student = student

    def forward(self, *inputs):
        *features, text = inputs
        return self.student.decode(features, text)


class UNetDecoderFusedGraph(nn.Module):
    """Decoder plus paper Eq. 11: ``z0 = S z_T + sum_k E_k eps_k`` with S, E as constants."""

    def __init__(self, student, S: float, E):
        super().__init__()
        self.student = student
        self.S, self.E = float(S), [float(e) for e in E]

    def forward(self, *inputs):
        *features, text, latents = inputs
        return combine_one_pass(latents, self.student.decode(features, text), self.S, self.E)


class VaeDecoderGraph(nn.Module):
    """``vae.decode(z0 / scaling_factor)``: the scale is inside the graph (the manifest says so).

    ``baked``: multiply by the reciprocal (what export traces); else divide (the reference).
    """

    def __init__(self, vae, baked: bool = True):
        super().__init__()
        self.vae = vae
        self.baked = baked
        self.factor = float(vae.config.scaling_factor)

    def forward(self, latents):
        z = latents * (1.0 / self.factor) if self.baked else latents / self.factor
        return self.vae.decode(z).sample


def graph_modules(pipe, baked: bool = True, student: TiUEStudent | None = None, vae=None) -> dict[str, nn.Module]:
    """The torch module of each graph of ``pipe`` (a :class:`~tiue_export.reference.pipeline.TorchPipeline`)."""
    student = student or pipe.student
    if baked:
        student = BakedStudent(student)
    s = pipe.schedule
    return {
        "text_encoder": TextEncoderGraph(pipe.text_encoder).eval(),
        "unet_encoder": UNetEncoderGraph(student).eval(),
        "unet_decoder": UNetDecoderGraph(student).eval(),
        "unet_decoder_fused": UNetDecoderFusedGraph(student, s.S, s.E).eval(),
        "vae_decoder": VaeDecoderGraph(vae if vae is not None else pipe.decoder_vae, baked).eval(),
    }


class TorchRunner(Runner):
    """One graph module run on numpy feeds: inputs in spec order, float inputs cast to ``dtype``.
    The module is already in memory: nothing to open.

    On the CPU the outputs come back as float32 numpy arrays by name. On a GPU they stay on the
    device (the next graph takes them as they are; :class:`TorchGraphSet` copies to the host only
    what the executor reads), and every call is timed with CUDA events (:attr:`gpu_seconds`) and
    synchronised, so the executor's per-stage wall times are the GPU's too.
    """

    def __init__(
        self,
        module: nn.Module,
        inputs: Sequence[str],
        outputs: Sequence[str],
        dtype: torch.dtype = torch.float32,
        device=None,
        compile: str = "none",
        resident: bool | None = None,
    ):
        super().__init__()
        self.inputs, self.outputs, self.dtype = list(inputs), list(outputs), dtype
        self.device = torch.device(device or "cpu")
        self.compile = check_compile_mode(compile, self.device)
        self.module = fast_module(module, self.compile)
        self.resident = self.device.type == "cuda" if resident is None else resident
        self.provider = provider_name(self.device, dtype, self.compile)
        self.gpu_seconds: float | None = None  # the last call's, on a GPU (CUDA events)

    def _tensor(self, x) -> torch.Tensor:
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        t = t.to(self.device)
        return t.to(self.dtype) if t.is_floating_point() and t.dtype != self.dtype else t

    @torch.no_grad()
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict:
        args = [self._tensor(feed[n]) for n in self.inputs]
        if self.device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            out = self.module(*args)
            end.record()
            end.synchronize()
            self.gpu_seconds = start.elapsed_time(end) / 1000
        else:
            out = self.module(*args)
        out = out if isinstance(out, (tuple, list)) else (out,)
        if self.resident:
            return dict(zip(self.outputs, out))
        return {n: o.float().cpu().numpy() for n, o in zip(self.outputs, out)}


class TorchGraphSet(GraphSet):
    """The torch graphs as a :class:`GraphSet`: device-resident outputs come to the host as
    float32 numpy only where the executor reads them (Eq. 11's inputs, z0, images, kept values)."""

    def to_host(self, value) -> np.ndarray:
        if isinstance(value, torch.Tensor):
            return value.detach().float().cpu().numpy()
        return np.asarray(value)

    def gpu_seconds(self) -> dict[str, float]:
        """CUDA-event seconds of each graph's last call not yet asked for, by graph."""
        out = {}
        for name, runner in self._open.items():
            if getattr(runner, "gpu_seconds", None) is not None:
                out[name], runner.gpu_seconds = runner.gpu_seconds, None
        return out


#: ``--compile`` modes of the PyTorch graphs: eager, torch.compile (inductor) in one of its modes,
#: or eager kernels replayed from explicitly captured CUDA graphs.
COMPILE_MODES = ("none", "default", "max-autotune-no-cudagraphs", "reduce-overhead", "cuda-graphs")
#: the modes that capture CUDA graphs
CUDA_GRAPH_MODES = ("reduce-overhead", "cuda-graphs")
#: the graphs ``--compile`` applies to: the one-pass UNet, thousands of kernels at batch 1, where
#: launch overhead and unfused elementwise work cost the most. The text encoder (one small call)
#: and the VAE decoder (a few large convolutions) run eager.
FAST_GRAPHS = ("unet_encoder", "unet_decoder", "unet_decoder_fused")


def check_compile_mode(mode: str | None, device) -> str:
    """``mode`` if this device can run it; a one-line :class:`InputError` otherwise."""
    mode = mode or "none"
    if mode not in COMPILE_MODES:
        raise InputError(f"--compile {mode!r}: use {', '.join(COMPILE_MODES)}")
    if mode in CUDA_GRAPH_MODES and torch.device(device).type != "cuda":
        raise InputError(f"--compile {mode} captures CUDA graphs: it needs --device cuda (on the CPU use none or default)")
    return mode


def fast_module(module: nn.Module, mode: str = "none"):
    """``module`` as ``--compile mode`` runs it: itself (``none``), ``torch.compile`` with inductor
    for the fixed shapes of a batch size (``dynamic=False``: a new shape compiles anew), or
    :class:`CudaGraphModule` (``cuda-graphs``)."""
    if mode == "none":
        return module
    if mode == "cuda-graphs":
        return CudaGraphModule(module)
    compiled = torch.compile(module, mode=mode, dynamic=False)
    if mode != "reduce-overhead":
        return compiled

    def run(*args):
        # Inductor's CUDA graphs reuse one memory pool across calls: begin a new step for every
        # call and clone the outputs out of the pool, since the executor holds them across graphs.
        torch.compiler.cudagraph_mark_step_begin()
        out = compiled(*args)
        return tuple(o.clone() for o in out) if isinstance(out, (tuple, list)) else out.clone()

    return run


class CudaGraphModule:
    """``module`` replayed from a CUDA graph captured once per input signature (shapes and dtypes:
    the fixed shapes of one batch size). A call copies its inputs into the graph's static input
    buffers, replays the captured kernels (no per-kernel launch cost) and clones the outputs out
    of the graph's memory pool. The first call of a signature warms the module up on a side
    stream (cuDNN/cuBLAS choose their kernels there), then captures it.
    """

    def __init__(self, module: nn.Module, warmup: int = 2):
        self.module, self.warmup = module, warmup
        self._graphs: dict[tuple, tuple[list[torch.Tensor], tuple[torch.Tensor, ...], torch.cuda.CUDAGraph]] = {}

    def __call__(self, *args: torch.Tensor):
        key = tuple((tuple(a.shape), a.dtype, a.device) for a in args)
        if key not in self._graphs:
            self._graphs[key] = self._capture(args)
        static_in, static_out, graph = self._graphs[key]
        for buffer, a in zip(static_in, args):
            buffer.copy_(a)
        graph.replay()
        return tuple(o.clone() for o in static_out)

    @torch.no_grad()
    def _capture(self, args):
        static_in = [a.clone() for a in args]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self.warmup):
                self.module(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            out = self.module(*static_in)
        out = tuple(out) if isinstance(out, (tuple, list)) else (out,)
        return static_in, out, graph


def provider_name(device, dtype: torch.dtype, compile: str = "none") -> str:
    """``PyTorch CPU float32``, ``PyTorch cuda:0 float16``, ``PyTorch cuda:0 float16 cuda-graphs`` ..."""
    where = "CPU" if torch.device(device).type == "cpu" else str(device)
    mode = "" if compile == "none" else f" {compile}"
    return f"PyTorch {where} {str(dtype).replace('torch.', '')}{mode}"


def graphs(
    pipe,
    manifest,
    baked: bool = False,
    dtype: torch.dtype = torch.float32,
    modules: Mapping[str, nn.Module] | None = None,
    compile: str = "none",
    resident: bool | None = None,
) -> TorchGraphSet:
    """``pipe``'s graphs as a :class:`TorchGraphSet` whose names and tensors follow ``manifest``, on
    ``pipe.device``; the UNet graphs run as ``--compile compile`` says (see :func:`fast_module`).
    ``resident``: keep outputs as torch tensors between graphs (default: on GPUs)."""
    modules = dict(modules) if modules is not None else graph_modules(pipe, baked)
    device = getattr(pipe, "device", torch.device("cpu"))
    compile = check_compile_mode(compile, device)

    def factory(name):
        g = manifest.graphs[name]
        mode = compile if name in FAST_GRAPHS else "none"
        # Each graph takes its inputs in its weights' dtype: an fp16 pipeline keeps its VAE in fp32.
        floats = {p.dtype for p in modules[name].parameters() if p.is_floating_point()}
        own = floats.pop() if len(floats) == 1 else dtype
        return lambda: TorchRunner(modules[name].to(device), g.input_names, g.output_names, own, device, mode, resident)

    return TorchGraphSet({n: factory(n) for n in modules if n in manifest.graphs}, provider=provider_name(device, dtype, compile))
