"""The bundle manifest as frozen dataclasses: one per section, read once, written once.

The JSON layout is the contract a C++ or TensorRT runtime reads (``schemas/manifest.schema.json``);
these classes are its Python face. :func:`Manifest.from_dict` takes a dict the schema accepted and
:func:`Manifest.to_dict` gives it back unchanged (sections this version does not model, such as a
calibration report, ride along in ``extra``). Nothing here imports torch or touches files:
:mod:`tiue_export.bundle.directory` loads, validates and saves.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace

from ..specs import BatchProfile, GraphSpec, NamedTensors, TensorSpec, Tolerance

#: Bumped when a reader of the previous version would misread a new manifest.
SCHEMA_VERSION = 2
FORMAT = "tiue-export bundle"

#: The chain's named inputs (``inputs.<name>``) and its virtual Eq. 11 node (``eq11.<tensor>``).
CHAIN_INPUTS = ("input_ids", "noise")
EQ11 = "eq11"
#: What a chain hands back (``outputs.<name>``).
CHAIN_OUTPUTS = ("z0", "images")

#: The z_T generator of every bundle this version writes, stated so that another language can
#: reproduce it bit for bit.
NUMPY_PCG64 = {
    "kind": "numpy-pcg64",
    "bit_generator": "PCG64 (128-bit LCG, XSL-RR output), state from numpy.random.SeedSequence(seed) "
    "(entropy = seed, pool_size 4, spawn_key ()), i.e. numpy.random.default_rng(seed)",
    "distribution": "standard normal float32 via numpy.random.Generator.standard_normal(dtype=float32): "
    "the 256-layer float32 ziggurat of numpy/random/src/distributions (random_standard_normal_f)",
    "shape": "the latent [channels, height, width], filled in C order",
    "seeds": "image j of a call draws from its own generator seeded with seeds[j]; default seeds[j] = seed + j",
    "dtype": "float32",
}


@dataclass(frozen=True)
class Variant:
    """Another file of a graph with the same inputs and outputs (int8 Q/DQ, a tiny VAE ...)."""

    file: str
    precision: str
    sha256: str
    external_data: tuple[str, ...] = ()
    tolerance: Tolerance | None = None
    extra: Mapping = field(default_factory=dict)  # quantized counts, kept-float nodes ...

    @classmethod
    def from_dict(cls, d: Mapping) -> "Variant":
        known = {"file", "precision", "sha256", "external_data", "tolerance"}
        tol = d.get("tolerance")
        return cls(
            d["file"], d["precision"], d["sha256"], tuple(d.get("external_data", ())),
            Tolerance.from_dict(tol) if tol else None, {k: v for k, v in d.items() if k not in known},
        )

    def to_dict(self) -> dict:
        d = {"file": self.file, "precision": self.precision, "external_data": list(self.external_data), "sha256": self.sha256}
        if self.tolerance is not None:
            d["tolerance"] = self.tolerance.to_dict()
        return {**d, **self.extra}


@dataclass(frozen=True)
class Graph(NamedTensors):
    """One ONNX graph of the bundle: its file and hash, its tensors, tolerance and variants."""

    name: str
    file: str
    sha256: str
    precision: str
    opset: int
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    tolerance: Tolerance
    external_data: tuple[str, ...] = ()
    description: str = ""
    variants: Mapping[str, Variant] = field(default_factory=dict)

    @property
    def spec(self) -> GraphSpec:
        return GraphSpec(self.name, self.inputs, self.outputs, self.opset, self.tolerance, self.description, self.precision == "fp16")

    def with_variant(self, variant: str) -> "Graph":
        """This graph with ``variant``'s file, hash, precision (and tolerance) in place of its own."""
        v = self.variants[variant]
        return replace(
            self, file=v.file, sha256=v.sha256, precision=v.precision, external_data=v.external_data,
            tolerance=v.tolerance or self.tolerance,
        )

    @classmethod
    def from_dict(cls, name: str, d: Mapping) -> "Graph":
        return cls(
            name=name,
            file=d["file"],
            sha256=d["sha256"],
            precision=d["precision"],
            opset=int(d["opset"]),
            inputs=tuple(TensorSpec.from_dict(t) for t in d["inputs"]),
            outputs=tuple(TensorSpec.from_dict(t) for t in d["outputs"]),
            tolerance=Tolerance.from_dict(d["tolerance"]),
            external_data=tuple(d.get("external_data", ())),
            description=d.get("description", ""),
            variants={k: Variant.from_dict(v) for k, v in (d.get("variants") or {}).items()},
        )

    @classmethod
    def from_spec(cls, spec: GraphSpec, precision: str, sha256: str = "", external_data=()) -> "Graph":
        """The entry of a freshly exported graph (``sha256`` filled in when the file is final)."""
        return cls(
            spec.name, spec.file, sha256, precision if spec.fp16 else "fp32", spec.opset, spec.inputs, spec.outputs,
            spec.tolerance_for(precision), tuple(external_data), spec.description,
        )

    def to_dict(self) -> dict:
        d = {
            "file": self.file,
            "sha256": self.sha256,
            "description": self.description,
            "opset": self.opset,
            "precision": self.precision,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "tolerance": self.tolerance.to_dict(),
            "external_data": list(self.external_data),
        }
        if self.variants:
            d["variants"] = {k: v.to_dict() for k, v in self.variants.items()}
        return d


@dataclass(frozen=True)
class Chain:
    """One way to run the one-pass sampler: graphs in order and the source of every input.

    ``sources`` maps a destination ``graph.input`` (or ``eq11.latents`` / ``eq11.eps``, or
    ``outputs.z0`` / ``outputs.images``) to the tensor that feeds it: ``graph.output``,
    ``inputs.input_ids`` / ``inputs.noise`` (the chain's inputs), or ``eq11.z0`` (paper Eq. 11
    computed by the runtime from the manifest's S and E).
    """

    graphs: tuple[str, ...]
    sources: Mapping[str, str]

    @property
    def uses_eq11(self) -> bool:
        return any(src.startswith(EQ11 + ".") for src in self.sources.values())

    def source(self, graph: str, tensor: str) -> tuple[str, str]:
        node, _, name = self.sources[f"{graph}.{tensor}"].partition(".")
        return node, name

    def to_dict(self) -> dict:
        return {"graphs": list(self.graphs), "sources": dict(self.sources)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Chain":
        return cls(tuple(d["graphs"]), dict(d["sources"]))


@dataclass(frozen=True)
class Schedule:
    """The DDIM schedule S and E were computed from: enough to recompute them anywhere."""

    num_train_timesteps: int
    alphas_cumprod: tuple[float, ...]  # float64 values of the scheduler's (float32) cumulative alphas
    config: Mapping = field(default_factory=dict)  # the scheduler config, for the record

    def to_dict(self) -> dict:
        return {"num_train_timesteps": self.num_train_timesteps, "alphas_cumprod": list(self.alphas_cumprod), "config": dict(self.config)}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Schedule":
        return cls(int(d["num_train_timesteps"]), tuple(float(a) for a in d["alphas_cumprod"]), dict(d.get("config", {})))


@dataclass(frozen=True)
class Sampler:
    """Paper Eq. 11: ``z0 = S z_T + sum_k E[k] eps_k``, eps timestep-major (rows k*B..(k+1)*B-1)."""

    k: int
    timesteps: tuple[int, ...]
    encoder_timestep: int
    prev_timesteps: tuple[int, ...]
    final_alpha_cumprod: float
    S: float
    E: tuple[float, ...]
    schedule: Schedule
    kind: str = "one-pass"

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "k": self.k,
            "timesteps": list(self.timesteps),
            "encoder_timestep": self.encoder_timestep,
            "prev_timesteps": list(self.prev_timesteps),
            "final_alpha_cumprod": self.final_alpha_cumprod,
            "S": self.S,
            "E": list(self.E),
            "schedule": self.schedule.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "Sampler":
        return cls(
            k=int(d["k"]),
            timesteps=tuple(int(t) for t in d["timesteps"]),
            encoder_timestep=int(d["encoder_timestep"]),
            prev_timesteps=tuple(int(t) for t in d["prev_timesteps"]),
            final_alpha_cumprod=float(d["final_alpha_cumprod"]),
            S=float(d["S"]),
            E=tuple(float(e) for e in d["E"]),
            schedule=Schedule.from_dict(d["schedule"]),
            kind=d.get("kind", "one-pass"),
        )


@dataclass(frozen=True)
class Tokenizer:
    """``tokenizer.json`` and the rules the runtime applies around it (CLIPTokenizer's)."""

    dir: str
    file: str
    model_max_length: int
    pad_id: int
    bos_id: int
    eos_id: int
    pad_token: str = ""

    #: How ids are made from a prompt, for a runtime in another language.
    RULES = {
        "encode": "tokenizer.json's normalizer, pre-tokenizer, BPE model and post-processor (<bos> ids <eos>)",
        "truncation": "to model_max_length tokens, <bos> and <eos> kept (the tokenizers library's enable_truncation); "
        "a runtime warns when a prompt is truncated",
        "padding": "on the right with pad_id up to model_max_length",
        "dtype": "int64",
    }

    def to_dict(self) -> dict:
        return {
            "dir": self.dir,
            "file": self.file,
            "model_max_length": self.model_max_length,
            "pad_id": self.pad_id,
            "pad_token": self.pad_token,
            "bos_id": self.bos_id,
            "eos_id": self.eos_id,
            "rules": dict(self.RULES),
        }

    @classmethod
    def from_dict(cls, d: Mapping) -> "Tokenizer":
        return cls(d["dir"], d["file"], int(d["model_max_length"]), int(d["pad_id"]), int(d["bos_id"]), int(d["eos_id"]), d.get("pad_token", ""))


#: Top-level keys modelled by :class:`Manifest`; any other key is kept verbatim in ``extra``.
_MODELLED = {
    "schema_version", "format", "created", "precision", "opset", "axes", "axis_relations", "graphs", "runtime",
    "sampler", "latent", "image", "vae", "features", "tokenizer", "noise", "batch_profile", "versions", "source",
    "export_config", "engines", "files",
}


@dataclass(frozen=True)
class Manifest:
    """The whole contract. ``graphs`` in run order; ``chains`` ``fused`` and ``unfused``."""

    precision: str
    opset: int
    graphs: Mapping[str, Graph]
    chains: Mapping[str, Chain]
    sampler: Sampler
    latent: tuple[int, int, int]  # (C, h, w)
    image: tuple[int, int]  # (H, W)
    scaling_factor: float
    features: Mapping[str, tuple[int, int, int]]
    tokenizer: Tokenizer
    batch_profile: BatchProfile
    noise: Mapping = field(default_factory=lambda: dict(NUMPY_PCG64))
    versions: Mapping = field(default_factory=dict)
    source: Mapping = field(default_factory=dict)
    export_config: Mapping = field(default_factory=dict)
    engines: Mapping[str, Mapping] = field(default_factory=dict)  # TensorRT engine sets by precision
    files: Mapping[str, str] = field(default_factory=dict)  # relative path -> sha256, manifest excluded
    created: str = ""
    extra: Mapping = field(default_factory=dict)  # calibration reports and other writers' sections
    schema_version: int = SCHEMA_VERSION

    @property
    def k(self) -> int:
        return self.sampler.k

    @property
    def variants(self) -> set[str]:
        """Every variant name some graph has."""
        return {v for g in self.graphs.values() for v in g.variants}

    def with_variant(self, variant: str | None) -> "Manifest":
        """Graphs that have ``variant`` swapped to it (the others as exported); None: as is."""
        if variant is None:
            return self
        graphs = {n: (g.with_variant(variant) if variant in g.variants else g) for n, g in self.graphs.items()}
        return replace(self, graphs=graphs)

    def with_graph(self, graph: Graph) -> "Manifest":
        return replace(self, graphs={**self.graphs, graph.name: graph})

    def replace(self, **changes) -> "Manifest":
        return replace(self, **changes)

    def to_dict(self) -> dict:
        C, h, w = self.latent
        H, W = self.image
        d = {
            "schema_version": self.schema_version,
            "format": FORMAT,
            "created": self.created,
            "precision": self.precision,
            "opset": self.opset,
            "axes": {"B": "batch: images per call", "KB": "K*B: decoder rows, timestep-major"},
            "axis_relations": {"KB": "K*B"},
            "graphs": {n: g.to_dict() for n, g in self.graphs.items()},
            "runtime": {
                # graph lists first: runtimes that predate the edges read only these
                "fused": list(self.chains["fused"].graphs),
                "unfused": list(self.chains["unfused"].graphs),
                "chains": {n: c.to_dict() for n, c in self.chains.items()},
                "images": "uint8 = clip(floor(images * 127.5 + 128), 0, 255), NCHW -> NHWC",
            },
            "sampler": self.sampler.to_dict(),
            "latent": {"channels": C, "height": h, "width": w},
            "image": {"height": H, "width": W, "channels": 3, "range": [-1.0, 1.0]},
            "vae": {"scaling_factor": self.scaling_factor, "scale_in_graph": True},
            "features": {n: list(s) for n, s in self.features.items()},
            "tokenizer": self.tokenizer.to_dict(),
            "noise": dict(self.noise),
            "batch_profile": self.batch_profile.to_dict(),
            "versions": dict(self.versions),
            "source": dict(self.source),
            "export_config": dict(self.export_config),
        }
        d.update(self.extra)
        if self.engines:
            d["engines"] = {k: dict(v) for k, v in self.engines.items()}
        d["files"] = dict(self.files)
        return d

    @classmethod
    def from_dict(cls, d: Mapping) -> "Manifest":
        """A manifest from a dict the JSON Schema accepted (semantics are checked by ``io.validate``)."""
        lat, img = d["latent"], d["image"]
        runtime = d["runtime"]
        return cls(
            schema_version=int(d["schema_version"]),
            created=d.get("created", ""),
            precision=d["precision"],
            opset=int(d["opset"]),
            graphs={n: Graph.from_dict(n, g) for n, g in d["graphs"].items()},
            chains={n: Chain.from_dict(c) for n, c in runtime["chains"].items()},
            sampler=Sampler.from_dict(d["sampler"]),
            latent=(int(lat["channels"]), int(lat["height"]), int(lat["width"])),
            image=(int(img["height"]), int(img["width"])),
            scaling_factor=float(d["vae"]["scaling_factor"]),
            features={n: tuple(int(x) for x in s) for n, s in d["features"].items()},
            tokenizer=Tokenizer.from_dict(d["tokenizer"]),
            noise=dict(d["noise"]),
            batch_profile=BatchProfile(**d["batch_profile"]),
            versions=dict(d.get("versions", {})),
            source=dict(d.get("source", {})),
            export_config=dict(d.get("export_config", {})),
            engines=dict(d.get("engines", {})),
            files=dict(d["files"]),
            extra={k: v for k, v in d.items() if k not in _MODELLED},
        )


def default_chains(features: list[str]) -> dict[str, Chain]:
    """The two chains every bundle ships: Eq. 11 inside ``unet_decoder_fused``, or outside it."""
    text = "text_encoder.text_embeddings"
    common = {
        "text_encoder.input_ids": "inputs.input_ids",
        "unet_encoder.latents": "inputs.noise",
        "unet_encoder.text_embeddings": text,
    }
    fused = dict(common)
    fused.update({f"unet_decoder_fused.{f}": f"unet_encoder.{f}" for f in features})
    fused.update({
        "unet_decoder_fused.text_embeddings": text,
        "unet_decoder_fused.latents": "inputs.noise",
        "vae_decoder.latents": "unet_decoder_fused.z0",
        "outputs.z0": "unet_decoder_fused.z0",
        "outputs.images": "vae_decoder.images",
    })
    unfused = dict(common)
    unfused.update({f"unet_decoder.{f}": f"unet_encoder.{f}" for f in features})
    unfused.update({
        "unet_decoder.text_embeddings": text,
        f"{EQ11}.latents": "inputs.noise",
        f"{EQ11}.eps": "unet_decoder.eps",
        "vae_decoder.latents": f"{EQ11}.z0",
        "outputs.z0": f"{EQ11}.z0",
        "outputs.images": "vae_decoder.images",
    })
    return {
        "fused": Chain(("text_encoder", "unet_encoder", "unet_decoder_fused", "vae_decoder"), fused),
        "unfused": Chain(("text_encoder", "unet_encoder", "unet_decoder", "vae_decoder"), unfused),
    }
