"""One spec per exported graph: names, dtypes, symbolic shapes, opset, tolerances, sample inputs
and TensorRT shape profiles.

Export, validation, the torch-free runtime, the TensorRT builder and the C++ example all read
these specs, through the bundle manifest (:meth:`GraphSpec.to_manifest` /
:meth:`GraphSpec.from_manifest`). Nothing here imports torch.

Symbolic axes: ``B`` is the batch (images per call); ``KB`` is ``K * B``, the decoder's
timestep-major batch (rows ``k*B .. (k+1)*B-1`` belong to the k-th decoder timestep). Every other
axis is fixed when the bundle is exported (image size, text length, feature sizes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError

#: The graphs of a bundle, in the order a runtime runs them (fused and unfused decoders both ship).
GRAPHS = ("text_encoder", "unet_encoder", "unet_decoder", "unet_decoder_fused", "vae_decoder")

#: What each symbolic axis means; the manifest carries this table so C++ can resolve shapes.
AXES = {"B": "batch: images per call", "KB": "K*B: decoder rows, timestep-major"}

#: Lowest opset we export: 14 has Trilu/native attention ops the exporters need, and every
#: TensorRT 8.6+/10 and ONNX Runtime >= 1.10 reads it.
MIN_OPSET = 14
#: 17 gives a native LayerNormalization (one node instead of seven, fused by TensorRT 8.6+).
DEFAULT_OPSET = 17

PRECISIONS = ("fp32", "fp16")


@dataclass(frozen=True)
class BatchProfile:
    """The batch sizes an engine must accept: ``min <= opt <= max`` (``--batch min:opt:max``)."""

    min: int = 1
    opt: int = 1  # TensorRT tunes its kernels for this one
    max: int = 4  # one-pass students are latency products: small batches

    @classmethod
    def parse(cls, text: str) -> "BatchProfile":
        """``N`` (fixed batch N) or ``min:opt:max``."""
        parts = str(text).split(":")
        try:
            values = [int(p) for p in parts]
        except ValueError:
            values = []
        if len(values) == 1:
            values = values * 3
        if len(values) != 3 or not (1 <= values[0] <= values[1] <= values[2]):
            raise InputError(f"bad --batch {text!r}: use N or min:opt:max with 1 <= min <= opt <= max")
        return cls(*values)

    def to_dict(self) -> dict:
        return {"min": self.min, "opt": self.opt, "max": self.max}

    def __str__(self) -> str:
        return f"{self.min}:{self.opt}:{self.max}"


@dataclass(frozen=True)
class Tolerance:
    """Pass when every element has ``|out - ref| <= atol + rtol * |ref|`` and cosine >= min_cosine."""

    atol: float
    rtol: float
    min_cosine: float

    def to_dict(self) -> dict:
        return {"atol": self.atol, "rtol": self.rtol, "min_cosine": self.min_cosine}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Tolerance":
        return cls(float(d["atol"]), float(d["rtol"]), float(d["min_cosine"]))


@dataclass(frozen=True)
class TensorSpec:
    """One graph input or output: name, dtype and shape (ints, or the symbols ``B`` / ``KB``)."""

    name: str
    dtype: str  # "float32" or "int64": the dtype at the graph's boundary (fp16 bundles keep fp32 I/O)
    shape: tuple
    value_range: tuple[int, int] | None = None  # [low, high) of an integer input (token ids)

    def concrete(self, batch: int, k: int) -> tuple[int, ...]:
        """The shape for a batch of ``batch`` images."""
        sizes = {"B": batch, "KB": k * batch}
        return tuple(sizes[d] if isinstance(d, str) else int(d) for d in self.shape)

    def to_dict(self) -> dict:
        d = {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}
        if self.value_range is not None:
            d["value_range"] = list(self.value_range)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "TensorSpec":
        vr = d.get("value_range")
        return cls(d["name"], d["dtype"], tuple(d["shape"]), tuple(vr) if vr else None)


#: fp32 export reorders float sums only (fused kernels): errors are ~1e-6 relative on the tiny
#: models and ~1e-4 on SD-sized ones; these bounds leave room for the latter, not for a bug.
FP32_TOL = {
    "text_encoder": Tolerance(atol=1e-3, rtol=1e-3, min_cosine=0.99999),
    "unet": Tolerance(atol=1e-3, rtol=1e-3, min_cosine=0.99999),
    "vae_decoder": Tolerance(atol=5e-3, rtol=1e-3, min_cosine=0.99999),
}
#: fp16 keeps softmax and normalisations in fp32, but weights and activations round to 11 bits.
FP16_TOL = {
    "text_encoder": Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999),
    "unet": Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999),
    "vae_decoder": Tolerance(atol=5e-2, rtol=5e-2, min_cosine=0.999),
}


class NamedTensors:
    """Names and lookup over ``inputs`` and ``outputs`` (a graph spec, a manifest graph)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def tensor(self, name: str) -> TensorSpec:
        for t in self.inputs + self.outputs:
            if t.name == name:
                return t
        raise KeyError(f"{self.name} has no tensor {name!r}")


@dataclass(frozen=True)
class GraphSpec(NamedTensors):
    """One exported graph: its tensors, opset, tolerance and how to feed and profile it."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    opset: int
    tolerance: Tolerance  # fp32; see tolerance_for
    description: str = ""
    fp16: bool = True  # False: an fp16 bundle keeps this graph in fp32 (the SD VAE overflows in fp16)
    tolerance_fp16: Tolerance | None = None

    @property
    def file(self) -> str:
        return f"{self.name}.onnx"

    def tolerance_for(self, precision: str) -> Tolerance:
        if precision == "fp16" and self.fp16 and self.tolerance_fp16 is not None:
            return self.tolerance_fp16
        return self.tolerance

    def dynamic_axes(self) -> dict[str, dict[int, str]]:
        """``{tensor: {axis: symbol}}`` for every symbolic axis (the exporter's ``dynamic_axes``)."""
        return {
            t.name: {i: d for i, d in enumerate(t.shape) if isinstance(d, str)}
            for t in self.inputs + self.outputs
            if any(isinstance(d, str) for d in t.shape)
        }

    def sample_inputs(self, batch: int, k: int, seed: int = 0, given: Mapping[str, np.ndarray] | None = None) -> dict:
        """Inputs for ``batch`` images: ``given`` arrays where supplied (realistic text embeddings,
        encoder features), else N(0, 1) floats and uniform token ids, checked against the spec."""
        rng = np.random.default_rng(seed)
        given = dict(given or {})
        feed = {}
        for t in self.inputs:
            shape = t.concrete(batch, k)
            if t.name in given:
                x = np.ascontiguousarray(given[t.name], dtype=np.dtype(t.dtype))
                if x.shape != shape:
                    raise ValueError(f"{self.name}: input {t.name} has shape {x.shape}, the spec says {shape}")
            elif t.dtype == "int64":
                lo, hi = t.value_range or (0, 2)
                x = rng.integers(lo, hi, size=shape, dtype=np.int64)
            else:
                x = rng.standard_normal(shape, dtype=np.float32).astype(t.dtype)
            feed[t.name] = x
        return feed

    def shape_profile(self, batch: BatchProfile, k: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """TensorRT optimisation profile: ``{input: (min_shape, opt_shape, max_shape)}``."""
        return {t.name: tuple(t.concrete(b, k) for b in (batch.min, batch.opt, batch.max)) for t in self.inputs}

    def to_manifest(self, precision: str) -> dict:
        d = {
            "file": self.file,
            "description": self.description,
            "opset": self.opset,
            "precision": precision if self.fp16 else "fp32",
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "tolerance": self.tolerance_for(precision).to_dict(),
        }
        return d

    @classmethod
    def from_manifest(cls, name: str, entry: Mapping) -> "GraphSpec":
        """Rebuild a spec from a bundle manifest's graph entry (its tolerance is the bundle's)."""
        return cls(
            name=name,
            inputs=tuple(TensorSpec.from_dict(t) for t in entry["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in entry["outputs"]),
            opset=int(entry["opset"]),
            tolerance=Tolerance.from_dict(entry["tolerance"]),
            description=entry.get("description", ""),
            fp16=entry.get("precision", "fp32") == "fp16",
        )


@dataclass(frozen=True)
class Geometry:
    """The model facts every spec depends on, fixed at export time."""

    k: int
    text_length: int  # L: the tokenizer's model_max_length
    text_dim: int  # D: the text encoder's hidden size
    vocab_size: int
    latent: tuple[int, int, int]  # (C, h, w)
    image: tuple[int, int]  # (H, W)
    features: tuple[tuple[str, tuple[int, int, int]], ...] = field(default=())  # (name, (c, h, w)): mid, skip_0..

    def to_dict(self) -> dict:
        return {
            "k": self.k,
            "text_length": self.text_length,
            "text_dim": self.text_dim,
            "vocab_size": self.vocab_size,
            "latent": list(self.latent),
            "image": list(self.image),
            "features": {name: list(shape) for name, shape in self.features},
        }


def check_opset(opset: int, max_opset: int) -> int:
    """Refuse opsets the exporter or the installed onnx cannot write."""
    if not MIN_OPSET <= opset <= max_opset:
        raise InputError(f"unsupported opset {opset}: use {MIN_OPSET}..{max_opset} (default {DEFAULT_OPSET})")
    return opset


def graph_specs(geo: Geometry, opset: int = DEFAULT_OPSET) -> dict[str, GraphSpec]:
    """The five graph specs of a bundle, in :data:`GRAPHS` order."""
    L, D = geo.text_length, geo.text_dim
    C, h, w = geo.latent
    H, W = geo.image
    text = TensorSpec("text_embeddings", "float32", ("B", L, D))
    latents = TensorSpec("latents", "float32", ("B", C, h, w))
    features = tuple(TensorSpec(name, "float32", ("B", *shape)) for name, shape in geo.features)

    def spec(name: str, tolerances: str, inputs: tuple, outputs: tuple, description: str, **extra) -> GraphSpec:
        """A graph at this opset, with the fp32 and fp16 tolerances of its ``tolerances`` family."""
        return GraphSpec(
            name, inputs=inputs, outputs=outputs, opset=opset, tolerance=FP32_TOL[tolerances],
            tolerance_fp16=FP16_TOL[tolerances], description=description, **extra,
        )

    specs = [
        spec(
            "text_encoder", "text_encoder", (TensorSpec("input_ids", "int64", ("B", L), (0, geo.vocab_size)),), (text,),
            "token ids (padded to L) -> last hidden state of the text encoder",
        ),
        spec(
            "unet_encoder", "unet", (latents, text), features,
            "z_T + text -> unified-encoder features (mid, skip_0..skip_n) at the encoder timestep",
        ),
        spec(
            "unet_decoder", "unet", features + (text,), (TensorSpec("eps", "float32", ("KB", C, h, w)),),
            "features + text -> K x B noise predictions, timestep-major (K time embeddings baked in)",
        ),
        spec(
            "unet_decoder_fused", "unet", features + (text, latents), (TensorSpec("z0", "float32", ("B", C, h, w)),),
            "features + text + z_T -> z0 = S z_T + sum_k E_k eps_k (paper Eq. 11 inside the graph)",
        ),
        spec(
            "vae_decoder", "vae_decoder", (TensorSpec("latents", "float32", ("B", C, h, w)),), (TensorSpec("images", "float32", ("B", 3, H, W)),),
            "z0 -> images in [-1, 1]; divides by the VAE scaling factor inside the graph", fp16=False,
        ),
    ]
    return {s.name: s for s in specs}


def feature_names(specs: Mapping[str, GraphSpec]) -> list[str]:
    """The encoder's output names (mid, skip_0..): the decoders take them by these names."""
    return specs["unet_encoder"].output_names


def concrete_shapes(tensors: Sequence[TensorSpec], batch: int, k: int) -> dict[str, tuple[int, ...]]:
    return {t.name: t.concrete(batch, k) for t in tensors}
