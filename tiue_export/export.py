"""``tiue-export export``: a TiUE student to an ONNX bundle, validated against PyTorch.

Per graph (see :mod:`tiue_export.specs`): TorchScript-based ``torch.onnx.export`` with the spec's
names and symbolic axes -> onnxslim (constant folding, shape inference, dead-code removal) ->
optional fp16 conversion -> ``onnx.checker`` (full check, with shape inference) -> ONNX Runtime vs
PyTorch on the same realistic inputs. The bundle is built in a temporary directory beside
``--out`` and renamed into place only when every graph passed: a failed or interrupted export
leaves nothing behind. docs/bundle.md explains the choices (exporter, optimiser, fp16).
"""

from __future__ import annotations

import gc
import json
import logging
import os
import shutil
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from . import __version__
from .compare import Comparison, compare_arrays, compare_outputs
from .errors import InputError, TiueError, require
from .io import atomic_path
from .runtime.bundle import MANIFEST, SCHEMA_VERSION, VALIDATION, bundle_files
from .sampling import initial_noise
from .schedule import combine_one_pass
from .specs import DEFAULT_OPSET, GRAPHS, PRECISIONS, AXES, BatchProfile, Geometry, GraphSpec, check_opset, graph_specs
from .student import TiUEStudent

log = logging.getLogger("tiue_export")

EXTERNAL_DATA = ("auto", "always", "never")
#: protobuf cannot serialise a message of 2 GiB or more; leave room for the graph itself.
PROTOBUF_LIMIT = 2**31 - 2**27
#: Export order: the text encoder and the VAE first, so that their PyTorch weights can be dropped
#: before the UNet graphs (the SD 2.1 fp32 decoders need every GiB the exporter can get).
EXPORT_ORDER = ("text_encoder", "vae_decoder", "unet_encoder", "unet_decoder", "unet_decoder_fused")
#: ops kept in fp32 in an fp16 bundle: reductions whose fp16 range or rounding breaks SD
#: (softmax over 4096 keys, group/layer/instance norms, the variance's Pow/Sqrt, GELU's Erf).
FP16_KEEP_FP32 = (
    "Softmax",
    "InstanceNormalization",
    "LayerNormalization",
    "GroupNormalization",
    "ReduceMean",
    "ReduceSum",
    "Pow",
    "Sqrt",
    "Erf",
    "Exp",
)


@dataclass(frozen=True)
class ExportConfig:
    """Everything ``export`` needs; written to the manifest as ``export_config``."""

    model: Path
    out: Path
    height: int | None = None  # None: the model's native size
    width: int | None = None
    batch: BatchProfile = BatchProfile()
    precision: str = "fp32"  # fp32 is exact to ~1e-6 against PyTorch; fp16 halves size, GPU only
    opset: int = DEFAULT_OPSET
    external_data: str = "auto"  # auto: only graphs that would pass protobuf's 2 GB limit
    # Two different prompts and seeds: catches graphs that mix rows across the batch, which a
    # batch of one cannot. The full-size script lowers it to 1 to bound CPU time.
    validate_batch: int = 2
    prompts: tuple[str, ...] = ("a photo of a cat", "an oil painting of a lighthouse at night")
    seed: int = 0
    # Images from ORT vs PyTorch, same prompt/seed: fp32 differences are float reorderings, far
    # under one grey level; 40 dB is the project's parity bar.
    min_psnr: float = 40.0

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(model=str(self.model), out=str(self.out), batch=str(self.batch), prompts=list(self.prompts))
        return d


@dataclass
class ExportReport:
    path: Path
    validation: dict
    seconds: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)


# -- the graphs as torch modules ------------------------------------------------------------------
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
    """``vae.decode(z0 / scaling_factor)``: the scale is inside the graph (the manifest says so)."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.scale = 1.0 / float(vae.config.scaling_factor)

    def forward(self, latents):
        return self.vae.decode(latents * self.scale).sample


def graph_modules(pipe) -> dict[str, nn.Module]:
    """The torch module of each graph, in :data:`GRAPHS` order."""
    student = BakedStudent(pipe.student).eval()
    s = pipe.schedule
    return {
        "text_encoder": TextEncoderGraph(pipe.text_encoder).eval(),
        "unet_encoder": UNetEncoderGraph(student).eval(),
        "unet_decoder": UNetDecoderGraph(student).eval(),
        "unet_decoder_fused": UNetDecoderFusedGraph(student, s.S, s.E).eval(),
        "vae_decoder": VaeDecoderGraph(pipe.vae).eval(),
    }


# -- steps --------------------------------------------------------------------------------------
def max_opset() -> int:
    """The highest opset both the TorchScript exporter and the installed onnx can write."""
    import onnx
    from torch.onnx import _constants

    return min(onnx.defs.onnx_opset_version(), _constants.ONNX_TORCHSCRIPT_EXPORTER_MAX_OPSET)


def check_config(cfg: ExportConfig) -> None:
    """Reject bad options before loading anything."""
    if cfg.precision not in PRECISIONS:
        raise InputError(f"unknown precision {cfg.precision!r}: use one of {', '.join(PRECISIONS)}")
    if cfg.external_data not in EXTERNAL_DATA:
        raise InputError(f"unknown --external-data {cfg.external_data!r}: use auto, always or never")
    check_opset(cfg.opset, max_opset())
    if cfg.validate_batch < 1:
        raise InputError("validate_batch must be >= 1")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise InputError(f"--out {out} is a non-empty directory that is not a bundle: refusing to replace it")


def geometry(pipe, height, width) -> Geometry:
    """Sizes of every tensor at this image size, from the model (one encoder pass at batch 1)."""
    latent = pipe.latent_shape(height, width)
    f = pipe.vae_scale_factor
    with torch.no_grad():
        L = int(pipe.tokenizer.model_max_length)
        D = int(pipe.text_encoder.config.hidden_size)
        feats = pipe.student.encode(torch.zeros((1, *latent), dtype=pipe.unet.dtype), torch.zeros((1, L, D), dtype=pipe.unet.dtype))
    names = pipe.student.feature_names()
    return Geometry(
        k=pipe.schedule.k,
        text_length=L,
        text_dim=D,
        vocab_size=int(pipe.text_encoder.config.vocab_size),
        latent=tuple(latent),
        image=(latent[1] * f, latent[2] * f),
        features=tuple((n, tuple(int(d) for d in x.shape[1:])) for n, x in zip(names, feats)),
    )


def reference(pipe, modules, specs, cfg: ExportConfig) -> tuple[dict, dict]:
    """Realistic inputs and PyTorch outputs of every graph: real text embeddings of real prompts,
    Gaussian z_T, the encoder's real features, the fused decoder's real z0."""
    b, k = cfg.validate_batch, pipe.schedule.k
    prompts = [cfg.prompts[i % len(cfg.prompts)] for i in range(b)]
    seeds = [cfg.seed + i for i in range(b)]
    names = specs["unet_encoder"].output_names
    inputs, refs = {}, {}

    def run(name, given):
        spec = specs[name]
        feed = spec.sample_inputs(b, k, seed=cfg.seed, given=given)
        with torch.no_grad():
            out = modules[name](*(torch.from_numpy(feed[n]) for n in spec.input_names))
        out = out if isinstance(out, (tuple, list)) else (out,)
        inputs[name] = feed
        refs[name] = {n: o.float().numpy() for n, o in zip(spec.output_names, out)}
        return refs[name]

    text = run("text_encoder", {"input_ids": pipe.tokenize(prompts)})["text_embeddings"]
    noise = initial_noise(seeds, pipe.latent_shape(cfg.height, cfg.width))
    feats = run("unet_encoder", {"latents": noise, "text_embeddings": text})
    run("unet_decoder", {**feats, "text_embeddings": text})
    z0 = run("unet_decoder_fused", {**{n: feats[n] for n in names}, "text_embeddings": text, "latents": noise})["z0"]
    run("vae_decoder", {"latents": z0})
    return inputs, refs


def export_onnx(module: nn.Module, spec: GraphSpec, feed: dict, scratch: Path):
    """TorchScript-based export with the spec's names and axes, then onnxslim; returns the model."""
    scratch.mkdir(parents=True, exist_ok=True)
    path = scratch / spec.file
    args = tuple(torch.from_numpy(feed[n]) for n in spec.input_names)
    try:
        with warnings.catch_warnings():
            # the tracer warns about every Python branch on a shape; the spec fixes those shapes
            warnings.simplefilter("ignore")
            torch.onnx.export(
                module,
                args,
                str(path),
                input_names=spec.input_names,
                output_names=spec.output_names,
                dynamic_axes=spec.dynamic_axes(),
                opset_version=spec.opset,
                do_constant_folding=True,
                dynamo=False,
            )
    except Exception as exc:
        raise TiueError(f"exporting {spec.name} failed: {_first_line(exc)}") from exc
    model = slim(str(path), spec.name)  # onnxslim loads it, external data (> 2 GB) included
    shutil.rmtree(scratch, ignore_errors=True)
    return model


def slim(model, name: str):
    """onnxslim: constant folding, symbolic shape inference, dead-code removal, topological sort."""
    onnxslim = require("onnxslim", "onnxslim", why="graph folding at export")
    try:
        return onnxslim.slim(model)
    except Exception as exc:
        raise TiueError(f"optimising {name} with onnxslim failed: {_first_line(exc)}") from exc


def to_fp16(model):
    """fp16 weights and compute with fp32 graph inputs/outputs and fp32 fragile ops."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    return convert_float_to_float16(
        model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + list(FP16_KEEP_FP32), disable_shape_infer=True
    )


def tensor_bytes(model) -> int:
    """Bytes of every initializer and constant tensor (what protobuf would have to serialise)."""
    total = sum(len(t.raw_data) or (np.prod(t.dims, dtype=np.int64) * 4) for t in model.graph.initializer)
    for node in model.graph.node:
        for a in node.attribute:
            if a.t is not None and a.t.raw_data:
                total += len(a.t.raw_data)
    return int(total)


def save_onnx(model, path: Path, policy: str) -> list[str]:
    """Save ``model`` at ``path``; external data (one ``<file>.data`` beside it) when ``policy`` is
    ``always``, or ``auto`` and the graph is too big for one protobuf. Returns the data files."""
    import onnx

    size = tensor_bytes(model)
    if policy == "never" and size > PROTOBUF_LIMIT:
        raise InputError(
            f"{path.name} holds {size / 2**30:.2f} GiB of weights, over protobuf's 2 GB limit: use --external-data auto"
        )
    if policy == "always" or (policy == "auto" and size > PROTOBUF_LIMIT):
        data = f"{path.name}.data"
        onnx.save_model(
            model, str(path), save_as_external_data=True, all_tensors_to_one_file=True, location=data, size_threshold=1024
        )
        os.chmod(path.parent / data, 0o644)  # onnx creates it private; a bundle is meant to be shared
        return [data]
    onnx.save_model(model, str(path))
    return []


def check_graph(path: Path, spec: GraphSpec) -> None:
    """onnx.checker (full: with strict shape inference) and the graph's I/O against the spec."""
    import onnx

    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise TiueError(f"{path.name} fails onnx.checker: {_first_line(exc)}") from exc
    graph = onnx.load(str(path), load_external_data=False).graph
    dtypes = {onnx.TensorProto.FLOAT: "float32", onnx.TensorProto.INT64: "int64", onnx.TensorProto.FLOAT16: "float16"}
    for kind, declared, actual in (("input", spec.inputs, graph.input), ("output", spec.outputs, graph.output)):
        got = [
            (v.name, dtypes.get(v.type.tensor_type.elem_type, "?"), tuple(d.dim_param or d.dim_value for d in v.type.tensor_type.shape.dim))
            for v in actual
        ]
        want = [(t.name, t.dtype, tuple(t.shape)) for t in declared]
        if got != want:
            raise TiueError(f"{path.name}: graph {kind}s {got} do not match the spec {want}")


def validate_graph(path: Path, spec: GraphSpec, feed: dict, ref: dict, precision: str, chained: dict | None):
    """ONNX Runtime (CPU) vs PyTorch on ``feed``; also runs ``chained`` (the previous graphs' ORT
    outputs) for the end-to-end check. Returns ``(comparison dict, chained outputs)``."""
    from .runtime.session import OrtRunner, SessionLoader

    try:
        with OrtRunner(SessionLoader(path, ["CPUExecutionProvider"])) as runner:
            out = runner.infer(feed)
            chain_out = runner.infer(chained) if chained is not None else None
    except TiueError as exc:
        if precision == "fp16":  # ORT's CPU provider lacks fp16 kernels for some ops
            return {"name": spec.name, "ok": None, "skipped": f"ONNX Runtime CPU cannot run it: {exc}"}, None
        raise
    data_range = {"images": 2.0} if spec.name == "vae_decoder" else None
    comparison = compare_outputs(spec.name, ref, out, spec.tolerance_for(precision), data_range)
    log.info("  %s", comparison)
    return comparison, chain_out


def chain_feed(name: str, inputs: dict, chain: dict, specs) -> dict | None:
    """The inputs of graph ``name`` in the ORT-only chain (fused path): every tensor that an
    earlier graph produced comes from ONNX Runtime, the rest (ids, z_T) from ``inputs``."""
    if name in ("unet_decoder", "vae_decoder") or (name != "text_encoder" and not chain):
        return None  # the VAE runs on the chain's z0 after the UNet graphs (see export_bundle)
    return {n: chain.get(n, inputs[name][n]) if n != "latents" else inputs[name][n] for n in specs[name].input_names}


def copy_tokenizer(pipe, dest: Path, prompts) -> dict:
    """Save the tokenizer with ``tokenizer.json`` (what the ``tokenizers`` library reads) and check
    that the runtime's tokenization equals the PyTorch pipeline's."""
    from transformers import CLIPTokenizerFast

    tok = pipe.tokenizer
    src = pipe.path / "tokenizer"
    fast = tok if getattr(tok, "is_fast", False) else CLIPTokenizerFast.from_pretrained(str(src))
    fast.save_pretrained(str(dest))
    if not (dest / "tokenizer.json").is_file():
        raise TiueError(f"{src}: cannot write tokenizer.json for the runtime")
    return {
        "dir": dest.name,
        "file": f"{dest.name}/tokenizer.json",
        "model_max_length": int(tok.model_max_length),
        "pad_id": int(tok.pad_token_id),
        "pad_token": str(tok.pad_token),
        "bos_id": int(tok.bos_token_id),
        "eos_id": int(tok.eos_token_id),
    }


def check_tokenizer(pipe, bundle_dir: Path, manifest: dict, prompts) -> dict:
    from .runtime.bundle import Bundle
    from .runtime.pipeline import BundleTokenizer

    long_prompt = " ".join(["a red cube on a blue table"] * 20)  # over any max length: truncation
    texts = list(prompts) + ["", long_prompt]
    level = log.level
    log.setLevel(logging.ERROR)  # the long prompt's truncation warning is expected here
    try:
        ours = BundleTokenizer(Bundle(bundle_dir, manifest))(texts)
        theirs = pipe.tokenize(texts)
    finally:
        log.setLevel(level)
    if ours.shape != theirs.shape or not np.array_equal(ours, theirs):
        bad = [t[:40] for t, a, b in zip(texts, ours, theirs) if not np.array_equal(a, b)]
        raise TiueError(f"the bundle's tokenizer.json tokenizes differently from the model's tokenizer for {bad}")
    return {"name": "tokenizer", "ok": True, "prompts": len(texts)}


def versions() -> dict:
    import diffusers
    import onnx
    import onnxruntime
    import onnxslim
    import transformers

    return {
        "tiue_export": __version__,
        "torch": torch.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": onnxruntime.__version__,
        "onnxslim": onnxslim.__version__,
        "diffusers": diffusers.__version__,
        "transformers": transformers.__version__,
        "exporter": "torch.onnx TorchScript (dynamo=False)",
    }


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# -- the command --------------------------------------------------------------------------------
def export_bundle(cfg: ExportConfig, pipe=None) -> ExportReport:
    """Export, validate and atomically write the bundle at ``cfg.out``.

    Args:
        cfg: the export options.
        pipe: an already loaded :class:`~tiue_export.pipeline.TorchPipeline` (default: load
            ``cfg.model``).

    Raises:
        InputError: bad options or model. TiueError: export or validation failed (the numbers are
            in the message); no bundle is written in either case.
    """
    from .pipeline import load_pipeline

    check_config(cfg)
    require("onnxslim", "onnxslim", why="graph folding at export")
    t_start = time.perf_counter()
    owned = pipe is None  # a pipeline we loaded ourselves may lose modules as soon as they are exported
    if owned:
        pipe = load_pipeline(cfg.model)
    if pipe.is_teacher:
        raise InputError(f"{pipe.path} is a teacher (tiue.json kind=teacher): export needs a TiUE student")
    if pipe.student_config is None:
        log.warning("%s has no tiue.json: exporting it as a K=%d student", pipe.path, pipe.schedule.k)
    geo = geometry(pipe, cfg.height, cfg.width)
    specs = graph_specs(geo, cfg.opset)
    modules = graph_modules(pipe)
    inputs, refs = reference(pipe, modules, specs, cfg)
    seconds = {"load_and_reference": time.perf_counter() - t_start}
    s = pipe.schedule
    vae_info = {"scaling_factor": float(pipe.vae.config.scaling_factor), "scale_in_graph": True}
    report = ExportReport(Path(cfg.out), {}, seconds)

    with atomic_path(cfg.out) as tmp:
        tmp.mkdir()
        graphs, results, failures = {}, {}, []
        chain_values: dict[str, np.ndarray] = {}
        for name in [g for g in EXPORT_ORDER if g in GRAPHS]:
            spec = specs[name]
            log.info("exporting %s", name)
            t0 = time.perf_counter()
            model = export_onnx(modules[name], spec, inputs[name], tmp / ".scratch" / name)
            if cfg.precision == "fp16" and spec.fp16:
                model = slim(to_fp16(model), name)  # the converter appends Casts out of order: re-sort
            path = tmp / spec.file
            data_files = save_onnx(model, path, cfg.external_data)
            del model
            check_graph(path, spec)
            seconds[f"export_{name}"] = time.perf_counter() - t0
            t0 = time.perf_counter()
            feed_chain = chain_feed(name, inputs, chain_values, specs)
            comparison, chain_out = validate_graph(path, spec, inputs[name], refs[name], cfg.precision, feed_chain)
            seconds[f"validate_{name}"] = time.perf_counter() - t0
            if isinstance(comparison, Comparison):
                results[name] = comparison.to_dict()
                if not comparison:
                    failures.append(str(comparison))
            else:
                results[name] = comparison
            chain_values.update(chain_out or {})
            modules.pop(name)
            if owned and name in ("text_encoder", "vae_decoder"):  # done with these weights
                setattr(pipe, "vae" if name == "vae_decoder" else name, None)
            gc.collect()
            entry = spec.to_manifest(cfg.precision)
            entry["external_data"] = data_files
            graphs[name] = entry
            report.sizes[spec.file] = sum((tmp / f).stat().st_size for f in [spec.file] + data_files)

        end_to_end = None
        if "z0" in chain_values and "vae_decoder" in graphs:
            from .runtime.session import OrtRunner, SessionLoader

            with OrtRunner(SessionLoader(tmp / specs["vae_decoder"].file, ["CPUExecutionProvider"])) as runner:
                chain_values.update(runner.infer({"latents": chain_values["z0"]}))
        if "images" in chain_values:
            from .sampling import to_uint8_images

            ref_img = to_uint8_images(refs["vae_decoder"]["images"])
            ort_img = to_uint8_images(chain_values["images"])
            e2e = compare_arrays(
                ref_img, ort_img, None, name="images_uint8", data_range=255.0, min_psnr=cfg.min_psnr if cfg.precision == "fp32" else None
            )
            end_to_end = e2e.to_dict()
            log.info("  end to end: %s", e2e)
            if not e2e:
                failures.append(f"end to end: {e2e}")
        if failures:
            raise TiueError("validation against PyTorch failed, no bundle written: " + " | ".join(failures))

        tokenizer = copy_tokenizer(pipe, tmp / "tokenizer", cfg.prompts)
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "format": "tiue-export bundle",
            "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "precision": cfg.precision,
            "opset": cfg.opset,
            "axes": dict(AXES),
            "axis_relations": {"KB": "K*B"},
            "graphs": {g: graphs[g] for g in GRAPHS if g in graphs},
            "runtime": {
                "fused": ["text_encoder", "unet_encoder", "unet_decoder_fused", "vae_decoder"],
                "unfused": ["text_encoder", "unet_encoder", "unet_decoder", "vae_decoder"],
                "noise": "float32 N(0, I) per image from numpy PCG64(seed) (tiue_export.sampling.initial_noise)",
                "images": "uint8 = clip(floor(images * 127.5 + 128), 0, 255), NCHW -> NHWC",
            },
            "sampler": {
                "kind": "one-pass",
                "k": s.k,
                "timesteps": list(s.timesteps),
                "encoder_timestep": s.encoder_timestep,
                "prev_timesteps": list(s.prev_timesteps),
                "final_alpha_cumprod": s.final_alpha_cumprod,
                "S": s.S,
                "E": list(s.E),
            },
            "latent": dict(zip(("channels", "height", "width"), geo.latent)),
            "image": {"height": geo.image[0], "width": geo.image[1], "channels": 3, "range": [-1.0, 1.0]},
            "vae": vae_info,
            "features": geo.to_dict()["features"],
            "tokenizer": tokenizer,
            "batch_profile": cfg.batch.to_dict(),
            "versions": {**versions(), "opset": cfg.opset},
            "source": {
                "model": str(Path(pipe.path).resolve()),
                "tiue": pipe.student_config.to_dict() if pipe.student_config else None,
            },
            "export_config": cfg.to_dict(),
        }
        results["tokenizer"] = check_tokenizer(pipe, tmp, manifest, cfg.prompts)
        seconds["total"] = time.perf_counter() - t_start
        validation = {
            "ok": True,
            "precision": cfg.precision,
            "batch": cfg.validate_batch,
            "provider": "CPUExecutionProvider",
            "prompts": [cfg.prompts[i % len(cfg.prompts)] for i in range(cfg.validate_batch)],
            "graphs": results,
            "end_to_end": end_to_end,
            "seconds": seconds,
        }
        (tmp / VALIDATION).write_text(json.dumps(validation, indent=2, allow_nan=False))
        shutil.rmtree(tmp / ".scratch", ignore_errors=True)
        manifest["files"] = bundle_files(tmp)
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, allow_nan=False))
        report.validation = validation
    return report
