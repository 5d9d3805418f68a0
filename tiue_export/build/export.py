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
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..bundle import MANIFEST, REFERENCE, VALIDATION, Manifest, Tokenizer, save_manifest, sha256_file
from ..compare import Comparison, compare_arrays, compare_outputs
from ..errors import InputError, TiueError, first_line, require
from ..files import atomic_path, writable_dir
from ..sampling import initial_noise
from ..specs import DEFAULT_OPSET, PRECISIONS, BatchProfile, GraphSpec, check_opset
from ..variants import reference_key

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
    # full: the model's VAE only; a decoder row of the variant table (tiny, or a distill-vae
    # directory for it): also that variant of vae_decoder, chosen at run time with --vae tiny
    vae: str = "full"

    @property
    def decoder_variant(self):
        """The variant table's row ``vae`` adds (None for ``full``); a directory is the tiny row's."""
        from ..variants import VARIANTS

        return None if self.vae == "full" else VARIANTS[self.vae if self.vae in VARIANTS else "tiny"]

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
    if cfg.decoder_variant is not None:
        cfg.decoder_variant.resolve(Path(cfg.model), cfg.vae)  # an unknown word or a decoder of another VAE: refused now
    if cfg.validate_batch < 1:
        raise InputError("validate_batch must be >= 1")
    out = Path(cfg.out)
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / MANIFEST).exists():
        raise InputError(f"--out {out} is a non-empty directory that is not a bundle: refusing to replace it")
    writable_dir(out.absolute().parent, "--out's parent")


def validation_inputs(pipe, manifest, cfg: ExportConfig) -> tuple[dict, dict, dict, dict]:
    """Realistic inputs and PyTorch outputs of every graph: real text embeddings of real prompts,
    Gaussian z_T, the encoder's real features, the fused decoder's real z0 (the traced modules,
    run by the executor)."""
    from ..executor import graph_feed, run_chain
    from ..reference.torch_graphs import graph_modules, graphs

    b = cfg.validate_batch
    prompts = [cfg.prompts[i % len(cfg.prompts)] for i in range(b)]
    noise = initial_noise([cfg.seed + i for i in range(b)], manifest.latent)
    modules = graph_modules(pipe, baked=True)
    torch_graphs = graphs(pipe, manifest, modules=modules)
    result = run_chain(manifest, torch_graphs, pipe.tokenize(prompts, warn=False), noise, "fused", keep=True)
    inputs = {n: graph_feed(manifest, result.values, n, "fused") for n in manifest.chains["fused"].graphs}
    inputs["unet_decoder"] = graph_feed(manifest, result.values, "unet_decoder", "unfused")
    refs = {n: {t: result.values[f"{n}.{t}"] for t in manifest.graphs[n].output_names} for n in inputs if n != "unet_decoder"}
    refs["unet_decoder"] = torch_graphs.runner("unet_decoder").infer(inputs["unet_decoder"])
    stored = dict(result.values)
    stored["unet_decoder.eps"] = refs["unet_decoder"]["eps"]
    stored["prompts"] = np.asarray(prompts)
    return inputs, refs, modules, stored


def export_onnx(module, spec: GraphSpec, feed: dict, scratch: Path):
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
        raise TiueError(f"exporting {spec.name} failed: {first_line(exc)}") from exc
    model = slim(str(path), spec.name)  # onnxslim loads it, external data (> 2 GB) included
    shutil.rmtree(scratch, ignore_errors=True)
    return model


def slim(model, name: str):
    """onnxslim: constant folding, symbolic shape inference, dead-code removal, topological sort."""
    onnxslim = require("onnxslim", "graph folding at export")
    try:
        model = onnxslim.slim(model)
    except Exception as exc:
        raise TiueError(f"optimising {name} with onnxslim failed: {first_line(exc)}") from exc
    return model


def canonical_shapes(model):
    """Drop the intermediate tensors' shape annotations (``graph.value_info``).

    onnxslim's symbolic shape inference writes them through sympy, whose results depend on
    Python's hash seed: ``floor(4.0*B)`` in one process, ``floor(1.0*floor(4.0*B))`` or an unknown
    size where another found 2. Two exports of one model then differed in bytes, and ONNX Runtime's
    quantizer, which starts its own inference from them, calibrated them differently. They are
    hints that every engine (and the quantizer) infers again, so the graph goes without them.
    """
    del model.graph.value_info[:]
    return model


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
        raise TiueError(f"{path.name} fails onnx.checker: {first_line(exc)}") from exc
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


def record_comparison(results: dict, failures: list, key: str, comparison) -> None:
    """Put :func:`validate_graph`'s answer in the report under ``key``; a failed comparison's line
    also goes to ``failures``."""
    if isinstance(comparison, Comparison):
        results[key] = comparison.to_dict()
        if not comparison:
            failures.append(str(comparison))
    else:
        results[key] = comparison


def validate_graph(path: Path, spec: GraphSpec, feed: dict, ref: dict, precision: str):
    """ONNX Runtime (CPU) vs PyTorch on ``feed``: a :class:`Comparison`, or a dict saying why it
    was skipped (fp16 graphs that ONNX Runtime's CPU provider cannot run)."""
    from ..backends.onnxruntime import OrtRunner, SessionLoader

    try:
        with OrtRunner(SessionLoader(path, ["CPUExecutionProvider"])) as runner:
            out = runner.infer(feed)
    except TiueError as exc:
        if precision == "fp16":  # ORT's CPU provider lacks fp16 kernels for some ops
            return {"name": spec.name, "ok": None, "skipped": f"ONNX Runtime CPU cannot run it: {exc}"}
        raise
    data_range = {"images": 2.0} if spec.name == "vae_decoder" else None
    comparison = compare_outputs(spec.name, ref, out, spec.tolerance_for(precision), data_range)
    log.info("  %s", comparison)
    return comparison


def copy_tokenizer(pipe, dest: Path) -> Tokenizer:
    """Save the tokenizer with ``tokenizer.json`` (what the ``tokenizers`` library reads) and check
    that the runtime's tokenization equals the PyTorch pipeline's."""
    from transformers import CLIPTokenizerFast

    tok = pipe.tokenizer
    src = pipe.path / "tokenizer"
    fast = tok if getattr(tok, "is_fast", False) else CLIPTokenizerFast.from_pretrained(str(src))
    fast.save_pretrained(str(dest))
    if not (dest / "tokenizer.json").is_file():
        raise TiueError(f"{src}: cannot write tokenizer.json for the runtime")
    return Tokenizer(
        dest.name, f"{dest.name}/tokenizer.json", int(tok.model_max_length), int(tok.pad_token_id),
        int(tok.bos_token_id), int(tok.eos_token_id), str(tok.pad_token),
    )


def check_tokenizer(pipe, bundle_dir: Path, manifest: Manifest, prompts) -> dict:
    from ..bundle import Bundle
    from ..runtime.pipeline import BundleTokenizer

    long_prompt = " ".join(["a red cube on a blue table"] * 20)  # over any max length: truncation
    texts = list(prompts) + ["", long_prompt]
    ours = BundleTokenizer(Bundle(bundle_dir, manifest))(texts, warn=False)  # truncation is the point here
    theirs = pipe.tokenize(texts, warn=False)
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


# -- the command --------------------------------------------------------------------------------
def load_student(cfg: ExportConfig, pipe=None):
    """The student to export: ``pipe``, or ``cfg.model`` loaded (a teacher is refused)."""
    from ..reference.pipeline import load_pipeline

    pipe = pipe if pipe is not None else load_pipeline(cfg.model)
    if pipe.is_teacher:
        raise InputError(f"{pipe.path} is a teacher (tiue.json kind=teacher): export needs a TiUE student")
    if pipe.student_config is None:
        log.warning("%s has no tiue.json: exporting it as a K=%d student", pipe.path, pipe.schedule.k)
    return pipe


def export_graph(root: Path, name: str, spec: GraphSpec, module, feed: dict, ref: dict, cfg: ExportConfig, seconds: dict) -> tuple[list[str], Comparison]:
    """One graph traced to ONNX under ``root``, checked against its spec and validated against
    PyTorch on ``feed``; returns its external data files and the comparison."""
    log.info("exporting %s", name)
    t0 = time.perf_counter()
    model = export_onnx(module, spec, feed, root / ".scratch" / name)
    if cfg.precision == "fp16" and spec.fp16:
        model = slim(to_fp16(model), name)  # the converter appends Casts out of order: re-sort
    model = canonical_shapes(model)  # after fp16: the converter reads the tensor types from them
    path = root / spec.file
    data_files = save_onnx(model, path, cfg.external_data)
    del model
    check_graph(path, spec)
    seconds[f"export_{name}"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    comparison = validate_graph(path, spec, feed, ref, cfg.precision)
    seconds[f"validate_{name}"] = time.perf_counter() - t0
    return data_files, comparison


def finish_manifest(manifest: Manifest, pipe, root: Path, cfg: ExportConfig) -> Manifest:
    """The validated manifest with its tokenizer (copied into ``root``), provenance and config."""
    return manifest.replace(
        tokenizer=copy_tokenizer(pipe, root / "tokenizer"),
        created=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        versions={**versions(), "opset": cfg.opset},
        source={"model": str(Path(pipe.path).resolve()), "tiue": pipe.student_config.to_dict() if pipe.student_config else None},
        export_config=cfg.to_dict(),
    )


def validation_record(cfg: ExportConfig, results: dict, end_to_end: dict | None, seconds: dict) -> dict:
    """What ``validation.json`` holds: every graph's comparison, the chain's, and the timings."""
    return {
        "ok": True,
        "precision": cfg.precision,
        "batch": cfg.validate_batch,
        "provider": "CPUExecutionProvider",
        "prompts": [cfg.prompts[i % len(cfg.prompts)] for i in range(cfg.validate_batch)],
        "graphs": results,
        "end_to_end": end_to_end and end_to_end["comparison"],
        "seconds": seconds,
    }


def export_bundle(cfg: ExportConfig, pipe=None) -> ExportReport:
    """Export, validate and atomically write the bundle at ``cfg.out``.

    Args:
        cfg: the export options.
        pipe: an already loaded :class:`~tiue_export.reference.pipeline.TorchPipeline` (default: load
            ``cfg.model``).

    Raises:
        InputError: bad options or model. TiueError: export or validation failed (the numbers are
            in the message); no bundle is written in either case.
    """
    check_config(cfg)
    require("onnxslim", "graph folding at export")
    t_start = time.perf_counter()
    owned = pipe is None  # a pipeline we loaded ourselves may lose modules as soon as they are exported
    pipe = load_student(cfg, pipe)
    manifest = pipe.manifest(cfg.height, cfg.width, cfg.precision, cfg.opset, cfg.batch)
    inputs, refs, modules, stored = validation_inputs(pipe, manifest, cfg)
    seconds = {"load_and_reference": time.perf_counter() - t_start}
    report = ExportReport(Path(cfg.out), {}, seconds)

    with atomic_path(cfg.out) as tmp:
        tmp.mkdir()
        results, failures = {}, []
        for name in EXPORT_ORDER:
            graph = manifest.graphs[name]
            spec = graph.spec
            data_files, comparison = export_graph(tmp, name, spec, modules.pop(name), inputs[name], refs[name], cfg, seconds)
            record_comparison(results, failures, name, comparison)
            if owned and name in ("text_encoder", "vae_decoder"):  # done with these weights
                setattr(pipe, "vae" if name == "vae_decoder" else name, None)
            gc.collect()
            manifest = manifest.with_graph(replace(graph, sha256=sha256_file(tmp / spec.file), external_data=tuple(data_files)))
            report.sizes[spec.file] = sum((tmp / f).stat().st_size for f in [spec.file] + data_files)
        if cfg.decoder_variant is not None:
            manifest, images = export_decoder_variant(tmp, manifest, cfg, inputs["vae_decoder"], refs["vae_decoder"], results, failures, report)
            stored[reference_key(cfg.decoder_variant.name)] = images  # check --reference bundle compares the graph with it
        end_to_end = validate_chain(tmp, manifest, inputs, refs, cfg)
        if end_to_end is not None and not end_to_end["ok"]:
            failures.append(f"end to end: {end_to_end['summary']}")
        if failures:
            raise TiueError("validation against PyTorch failed, no bundle written: " + " | ".join(failures))
        manifest = finish_manifest(manifest, pipe, tmp, cfg)
        results["tokenizer"] = check_tokenizer(pipe, tmp, manifest, cfg.prompts)
        seconds["total"] = time.perf_counter() - t_start
        report.validation = validation_record(cfg, results, end_to_end, seconds)
        (tmp / VALIDATION).write_text(json.dumps(report.validation, indent=2, allow_nan=False))
        np.savez(tmp / REFERENCE, **stored)  # check's reference where torch is not installed
        shutil.rmtree(tmp / ".scratch", ignore_errors=True)
        save_manifest(tmp, manifest)
    return report


def export_decoder_variant(
    root: Path, manifest: Manifest, cfg: ExportConfig, feed: dict, full_ref: dict, results: dict, failures: list, report
) -> tuple[Manifest, np.ndarray]:
    """The decoder of ``cfg.vae`` as its variant of ``vae_decoder``: the same spec (z0 in, images
    in [-1, 1] out), exported, checked and validated against its PyTorch module like every graph;
    the variant records where it came from (its directory, for check's PyTorch reference), its
    provenance and its PSNR against the full decoder on the reference z0. Returns the manifest and
    the PyTorch decoder's images of the reference z0."""
    from ..bundle.manifest import Variant
    from ..compare import psnr
    from ..reference.torch_graphs import VaeDecoderGraph

    row = cfg.decoder_variant
    source = row.resolve(Path(cfg.model), cfg.vae)
    graph = manifest.graphs["vae_decoder"]
    spec = replace(graph.spec, name="vae_decoder")
    file = f"vae_decoder.{row.name}.onnx"
    log.info("exporting vae_decoder (%s variant from %s)", row.name, source)
    module = VaeDecoderGraph(row.load(source), baked=True).eval()
    with torch.no_grad():
        ref = {"images": module(torch.from_numpy(feed["latents"])).numpy()}
    model = export_onnx(module, spec, feed, root / ".scratch" / f"vae_{row.name}")
    if cfg.precision == "fp16" and spec.fp16:
        model = slim(to_fp16(model), f"vae_decoder {row.name}")
    model = canonical_shapes(model)
    path = root / file
    data_files = save_onnx(model, path, cfg.external_data)
    check_graph(path, spec)
    comparison = validate_graph(path, spec, feed, ref, cfg.precision)
    record_comparison(results, failures, f"vae_decoder.{row.name}", comparison)
    variant = Variant(
        file, graph.precision, sha256_file(path), tuple(data_files),
        extra={
            "source": str(source.resolve()),
            **row.provenance(source),
            "psnr_vs_full_db": psnr(np.clip(full_ref["images"], -1, 1), np.clip(ref["images"], -1, 1), 2.0),
        },
    )
    report.sizes[file] = sum((root / f).stat().st_size for f in [file] + data_files)
    return manifest.with_graph(replace(graph, variants={**graph.variants, row.name: variant})), ref["images"]


def validate_chain(root: Path, manifest: Manifest, inputs: dict, refs: dict, cfg: ExportConfig) -> dict | None:
    """The exported graphs' own chain on ONNX Runtime (one graph held at a time) from the
    reference's token ids and z_T, its uint8 images against PyTorch's; None when a graph of the
    chain was not exported or ONNX Runtime's CPU provider cannot run the graphs (fp16)."""
    from ..backends.onnxruntime import graphs
    from ..bundle import Bundle
    from ..executor import run_chain
    from ..sampling import to_uint8_images

    if not all((root / manifest.graphs[g].file).is_file() for g in manifest.chains["fused"].graphs):
        return None  # a partial export (tests, or a graph that failed): nothing to chain
    ids = inputs["text_encoder"]["input_ids"]
    noise = inputs["unet_encoder"]["latents"]
    try:
        with graphs(Bundle(root, manifest), ["CPUExecutionProvider"], low_memory=True) as ort:
            result = run_chain(manifest, ort, ids, noise, "fused")
    except TiueError:
        if cfg.precision == "fp16":
            return None
        raise
    e2e = compare_arrays(
        to_uint8_images(refs["vae_decoder"]["images"]), to_uint8_images(result.images), None, name="images_uint8",
        data_range=255.0, min_psnr=cfg.min_psnr if cfg.precision == "fp32" else None,
    )
    log.info("  end to end: %s", e2e)
    return {"ok": bool(e2e), "comparison": e2e.to_dict(), "summary": str(e2e)}


def add_decoder_variant(cfg: ExportConfig) -> ExportReport:
    """``export --vae-only``: the decoder of ``cfg.vae`` as its variant of ``vae_decoder`` in the
    existing bundle at ``cfg.out``, nothing else re-exported. It is validated against its
    PyTorch module on the z0 of the bundle's stored reference, whose decoder images join
    ``reference.npz``; the new and changed files (graph, reference, validation) are staged beside
    the bundle and published with the manifest last.

    Raises:
        InputError: no bundle at ``cfg.out``, a bundle of another model, ``--vae full``.
        TiueError: the new graph disagrees with PyTorch (the bundle is left as it was).
    """
    from ..bundle import Bundle, publish
    from ..files import staging_dir

    if cfg.vae == "full":
        raise InputError("--vae-only adds a tiny VAE decoder: give --vae tiny or a distill-vae directory")
    bundle = Bundle.open(cfg.out, verify=False)
    m = bundle.manifest
    source = m.source.get("model")
    if not source or Path(source).resolve() != Path(cfg.model).resolve():
        raise InputError(f"{cfg.out} was exported from {source}, not {cfg.model}: give its model with --model")
    row = cfg.decoder_variant
    row.resolve(Path(cfg.model), cfg.vae)  # a decoder of another VAE: refused before anything is written
    if not (bundle.path / REFERENCE).is_file():
        raise InputError(f"{cfg.out} has no {REFERENCE} (the z0 the new decoder is validated on): re-export the bundle")
    with np.load(bundle.path / REFERENCE, allow_pickle=False) as data:
        stored = {k: data[k] for k in data.files}
    feed, full_ref = {"latents": stored["unet_decoder_fused.z0"]}, {"images": stored["vae_decoder.images"]}
    t0 = time.perf_counter()
    staging = staging_dir(bundle.path, "vae")
    try:
        report = ExportReport(bundle.path, {})
        results, failures = {}, []
        graph_cfg = replace(cfg, precision=m.precision, external_data="auto")
        manifest, stored[reference_key(row.name)] = export_decoder_variant(staging, m, graph_cfg, feed, full_ref, results, failures, report)
        if failures:
            raise TiueError("validation against PyTorch failed, the bundle is unchanged: " + " | ".join(failures))
        np.savez(staging / REFERENCE, **stored)
        validation = json.loads((bundle.path / VALIDATION).read_text()) if (bundle.path / VALIDATION).is_file() else {"graphs": {}}
        validation["graphs"].update(results)
        (staging / VALIDATION).write_text(json.dumps(validation, indent=2, allow_nan=False))
        variant = manifest.graphs["vae_decoder"].variants[row.name]
        files = [variant.file, *variant.external_data, REFERENCE, VALIDATION]
        manifest = manifest.replace(export_config={**m.export_config, "vae": cfg.vae})
        publish(bundle.path, {f: staging / f for f in files}, manifest)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.validation = validation
    report.seconds["total"] = time.perf_counter() - t0
    return report
