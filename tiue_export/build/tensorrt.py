"""``tiue-export build-trt``: one TensorRT engine per graph of a bundle, for the GPU at hand.

Strongly typed networks only (TensorRT 10's ``STRONGLY_TYPED`` flag; the only kind TensorRT 11
builds): the precision of every layer comes from the ONNX graph, never from builder flags. So fp16
engines come from an fp16 bundle (``export --precision fp16``: fp16 weights, fp32 norms/softmax and
VAE), int8 engines from the Q/DQ graphs of ``tiue-export calibrate`` (explicit quantization, no
implicit calibrator), fp32 engines from an fp32 bundle.

Shape profiles come from the graph specs through the manifest: every input gets ``min/opt/max``
shapes for the ``--batch`` profile, with the decoder's KB axis at K times each batch size. Plans
are built into a staging directory beside the bundle and moved in at the end, manifest last.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from ..backends.tensorrt_checks import GpuInfo, require_tensorrt_gpu
from ..bundle import Bundle, publish, sha256_file
from ..errors import InputError, TiueError
from ..files import staging_dir
from ..specs import BatchProfile, GraphSpec

log = logging.getLogger("tiue_export")

ENGINE_PRECISIONS = ("fp16", "int8", "fp32")
ENGINE_DIR = "engines"


@dataclass(frozen=True)
class BuildConfig:
    """Everything ``build-trt`` needs; its resolved form goes into ``engines[precision].build``."""

    bundle: Path
    precision: str = "fp16"
    batch: BatchProfile | None = None  # None: the batch profile the bundle was exported with
    timing_cache: Path | None = None  # read and updated: rebuilding on the same GPU skips kernel timing
    opt_level: int = 3  # TensorRT's default; 4-5 search longer for a few percent
    fused: bool = True  # decoder with Eq. 11 inside (one graph less to launch) or the K-batched eps decoder
    device: int = 0
    workspace_gib: float | None = None  # None: TensorRT's default (the whole GPU)


@dataclass
class BuildReport:
    bundle: Path
    entry: dict
    seconds: dict[str, float] = field(default_factory=dict)


def pipeline_graphs(fused: bool, manifest=None) -> tuple[str, ...]:
    """The graphs an engine set holds, in run order: the manifest's fused or unfused chain."""
    from ..bundle.manifest import default_chains

    chains = manifest.chains if manifest is not None else default_chains([])
    return tuple(chains["fused" if fused else "unfused"].graphs)


def profile_shapes(spec: GraphSpec, batch: BatchProfile, k: int) -> dict[str, dict[str, list[int]]]:
    """``{input: {"min": shape, "opt": shape, "max": shape}}``; KB inputs take K times the batch."""
    return {
        name: dict(zip(("min", "opt", "max"), ([int(d) for d in s] for s in shapes)))
        for name, shapes in spec.shape_profile(batch, k).items()
    }


def check_config(cfg: BuildConfig) -> None:
    if cfg.precision not in ENGINE_PRECISIONS:
        raise InputError(f"unknown --precision {cfg.precision!r}: use one of {', '.join(ENGINE_PRECISIONS)}")
    if not 0 <= cfg.opt_level <= 5:
        raise InputError(f"--opt-level must be 0..5, got {cfg.opt_level}")
    if cfg.timing_cache is not None and Path(cfg.timing_cache).is_dir():
        raise InputError(f"--timing-cache {cfg.timing_cache} is a directory: give a file path")
    if cfg.workspace_gib is not None and cfg.workspace_gib <= 0:
        raise InputError("--workspace must be positive")


def source_bundle(bundle: Bundle, precision: str) -> Bundle:
    """The bundle view whose graph files an engine of ``precision`` is built from."""
    base = bundle.manifest.precision
    if precision == "int8" and base != "fp32":
        raise InputError(
            f"int8 engines come from the Q/DQ graphs of an fp32 bundle and {bundle.path} is {base}: "
            f"export with --precision fp32, then tiue-export calibrate"
        )
    if precision == "fp32" and base != "fp32":
        raise InputError(f"{bundle.path} is an {base} bundle: fp32 engines need an fp32 export")
    return bundle.with_variant(precision)


def build_plan(trt, logger, onnx_path: Path, profile: dict, cfg: BuildConfig, cache: bytes) -> tuple[bytes, bytes]:
    """Parse ``onnx_path`` into a strongly typed network and build a serialized engine.

    Returns:
        ``(plan, timing cache)``: the cache comes back updated for the next build.
    """
    builder = trt.Builder(logger)
    network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    parser = trt.OnnxParser(network, logger)
    # TensorRT's own InstanceNormalization kernel: the exporter writes GroupNorm as one.
    parser.set_flag(trt.OnnxParserFlag.NATIVE_INSTANCENORM)
    if not parser.parse_from_file(str(onnx_path)):  # also reads external data beside the file
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise TiueError(f"TensorRT cannot parse {onnx_path.name}: {errors[0] if errors else 'unknown parser error'}")
    config = builder.create_builder_config()
    config.builder_optimization_level = cfg.opt_level
    if cfg.workspace_gib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(cfg.workspace_gib * 2**30))
    opt = builder.create_optimization_profile()
    for name, shapes in profile.items():
        opt.set_shape(name, shapes["min"], shapes["opt"], shapes["max"])
    config.add_optimization_profile(opt)
    timing = config.create_timing_cache(cache)
    config.set_timing_cache(timing, ignore_mismatch=False)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise TiueError(f"TensorRT could not build an engine from {onnx_path.name} (its log above says why)")
    return bytes(plan), bytes(config.get_timing_cache().serialize())


def inspect_plan(trt, logger, plan: bytes, spec: GraphSpec) -> dict:
    """Deserialize a fresh plan: check its I/O names against the spec, read its scratch size."""
    engine = trt.Runtime(logger).deserialize_cuda_engine(plan)
    if engine is None:
        raise TiueError(f"the {spec.name} engine TensorRT just built does not deserialize")
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    inputs = [n for n in names if engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
    outputs = [n for n in names if n not in inputs]
    if sorted(inputs) != sorted(spec.input_names) or sorted(outputs) != sorted(spec.output_names):
        raise TiueError(f"the {spec.name} engine has I/O {inputs} -> {outputs}, the spec says {spec.input_names} -> {spec.output_names}")
    return {"device_memory_bytes": int(engine.device_memory_size_v2)}


def engine_entry(trt_version: str, gpu: GpuInfo, cfg: BuildConfig, batch: BatchProfile, graphs: dict, seconds: dict) -> dict:
    """The manifest's ``engines[precision]`` record: what a runtime checks before loading."""
    return {
        "precision": cfg.precision,
        "tensorrt": trt_version,
        "gpu": gpu.to_dict(),
        "batch_profile": batch.to_dict(),
        "fused": cfg.fused,
        "pipeline": list(graphs),
        "build": {
            "network": "strongly typed",
            "builder_optimization_level": cfg.opt_level,
            "onnx_parser_flags": ["NATIVE_INSTANCENORM"],
            "timing_cache": str(cfg.timing_cache) if cfg.timing_cache else None,
            "workspace_gib": cfg.workspace_gib,
        },
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "seconds": seconds,
        "graphs": graphs,
    }


def build_engines(cfg: BuildConfig) -> BuildReport:
    """Build and write the engines of ``cfg.precision`` into the bundle at ``cfg.bundle``.

    Raises:
        MissingDependency: no TensorRT / cuda-python. TiueError: no GPU, or a build failed (the
            bundle is left as it was). InputError / ModelError: bad options or bundle.
    """
    check_config(cfg)
    trt, gpu = require_tensorrt_gpu(cfg.device)
    bundle = Bundle.open(cfg.bundle, verify=True)
    source = source_bundle(bundle, cfg.precision)
    batch = cfg.batch or bundle.manifest.batch_profile
    k = bundle.k
    logger = trt.Logger(trt.Logger.WARNING)
    cache = Path(cfg.timing_cache).read_bytes() if cfg.timing_cache and Path(cfg.timing_cache).is_file() else b""
    log.info("building %s engines for %s (sm %s) with TensorRT %s, batch %s", cfg.precision, gpu.name, gpu.compute_capability, trt.__version__, batch)

    root = bundle.path
    staging = staging_dir(root, "build-trt")
    seconds: dict[str, float] = {}
    graphs: dict[str, dict] = {}
    staged: dict[str, Path] = {}
    try:
        for name in pipeline_graphs(cfg.fused, bundle.manifest):
            t0 = time.perf_counter()
            graphs[name], plan, cache = _build_graph(trt, logger, bundle, source, name, cfg, profile_shapes(source.spec(name), batch, k), cache)
            tmp = staging / f"{name}.plan"
            tmp.write_bytes(plan)
            staged[graphs[name]["file"]] = tmp
            seconds[name] = time.perf_counter() - t0
            log.info("    %.1f MiB, %.1f s", len(plan) / 2**20, seconds[name])
        entry = engine_entry(trt.__version__, gpu, cfg, batch, graphs, seconds)
        _publish_engines(root, staged, bundle.manifest.replace(engines={**bundle.manifest.engines, cfg.precision: entry}), cfg.precision)
        if cfg.timing_cache:
            write_atomic(Path(cfg.timing_cache), cache)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return BuildReport(root, entry, seconds)


def _build_graph(trt, logger, bundle: Bundle, source: Bundle, name: str, cfg: BuildConfig, profile, cache: bytes) -> tuple[dict, bytes, bytes]:
    """Graph ``name``'s engine from ``source``'s ONNX file: its manifest entry, the plan, and the
    timing cache as the build left it."""
    spec = source.spec(name)
    onnx_path = source.graph_path(name)
    src_rel = source.manifest.graphs[name].file
    log.info("  %s <- %s", name, src_rel)
    plan, cache = build_plan(trt, logger, onnx_path, profile, cfg, cache)
    info = inspect_plan(trt, logger, plan, spec)
    entry = {
        "file": f"{ENGINE_DIR}/{cfg.precision}/{name}.plan",
        "source": src_rel,
        "source_sha256": bundle.manifest.files.get(src_rel) or sha256_file(onnx_path),
        "precision": source.manifest.graphs[name].precision,
        "inputs": [t.to_dict() for t in spec.inputs],
        "outputs": [t.to_dict() for t in spec.outputs],
        "profile": profile,
        "size_bytes": len(plan),
        **info,
    }
    return entry, plan, cache


def _publish_engines(root: Path, staged: dict[str, Path], manifest, precision: str) -> None:
    """Move the staged plans into the bundle with ``manifest``; a previous build of this
    precision may hold a decoder this one does not: its plans are dropped."""
    old = root / ENGINE_DIR / precision
    for stale in old.glob("*.plan") if old.is_dir() else []:
        if f"{ENGINE_DIR}/{precision}/{stale.name}" not in staged:
            stale.unlink()
    publish(root, staged, manifest)


def write_atomic(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)

