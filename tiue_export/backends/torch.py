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

from ..executor import GraphSet, Runner
from ..schedule import combine_one_pass
from ..student import TiUEStudent


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
    """The torch module of each graph of ``pipe`` (a :class:`~tiue_export.pipeline.TorchPipeline`)."""
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
    """One graph module run on numpy feeds: inputs in spec order, float inputs cast to ``dtype``,
    outputs back as float32 numpy arrays by name. The module is already in memory: nothing to open."""

    def __init__(self, module: nn.Module, inputs: Sequence[str], outputs: Sequence[str], dtype: torch.dtype = torch.float32, device=None):
        super().__init__()
        self.module, self.inputs, self.outputs, self.dtype = module, list(inputs), list(outputs), dtype
        self.device = torch.device(device or "cpu")
        self.provider = provider_name(self.device, dtype)

    def _tensor(self, x) -> torch.Tensor:
        t = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(x))
        t = t.to(self.device)
        return t.to(self.dtype) if t.is_floating_point() and t.dtype != self.dtype else t

    @torch.no_grad()
    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = self.module(*(self._tensor(feed[n]) for n in self.inputs))
        out = out if isinstance(out, (tuple, list)) else (out,)
        return {n: o.float().cpu().numpy() for n, o in zip(self.outputs, out)}


def provider_name(device, dtype: torch.dtype) -> str:
    """``PyTorch CPU float32``, ``PyTorch cuda:0 float16`` ..."""
    where = "CPU" if torch.device(device).type == "cpu" else str(device)
    return f"PyTorch {where} {str(dtype).replace('torch.', '')}"


def graphs(pipe, manifest, baked: bool = False, dtype: torch.dtype = torch.float32, modules: Mapping[str, nn.Module] | None = None) -> GraphSet:
    """``pipe``'s graphs as a :class:`GraphSet` whose names and tensors follow ``manifest``, on
    ``pipe.device``."""
    modules = dict(modules) if modules is not None else graph_modules(pipe, baked)
    device = getattr(pipe, "device", torch.device("cpu"))

    def factory(name):
        g = manifest.graphs[name]
        return lambda: TorchRunner(modules[name].to(device), g.input_names, g.output_names, dtype, device)

    return GraphSet({n: factory(n) for n in modules if n in manifest.graphs}, provider=provider_name(device, dtype))
