"""``tiue-export calibrate``: int8 Q/DQ graphs of the UNet encoder and decoders, calibrated on the
real inputs those graphs see when the bundle's own pipeline runs calibration prompts.

ONNX Runtime's static quantization writes explicit QuantizeLinear/DequantizeLinear pairs (QDQ
format) with symmetric int8 activations and symmetric per-channel int8 weights: the form TensorRT
needs for explicit quantization, and one that ONNX Runtime's CPU provider also runs. Only Conv,
MatMul and Gemm with constant weights are quantized; norms, softmax, GELU, resampling and Eq. 11's
arithmetic stay float, and so do the fragile layers of :data:`KEEP_FLOAT` (docs/engines.md has the
measurements behind that list). Torch-free: it runs the bundle with the ONNX runtime.

The new graphs go into the bundle as ``<graph>.int8.onnx`` with a ``variants.int8`` entry per
graph and a top-level ``calibration`` entry; files are staged beside the bundle, moved in, and the
manifest is rewritten last (:func:`tiue_export.runtime.bundle.publish`).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .. import __version__
from ..backends import ONNX_ENGINES
from ..bundle import Bundle, Manifest, Variant, sha256_file
from ..compare import compare_arrays
from ..errors import InputError, MissingDependency, TiueError, first_line, require
from ..sampling import initial_noise

log = logging.getLogger("tiue_export")

#: The graphs that get an int8 variant. The text encoder runs once per prompt and is small next to
#: the UNet; the SD VAE decoder is known to lose visible quality in int8 (and is not distilled).
QUANTIZED_GRAPHS = ("unet_encoder", "unet_decoder", "unet_decoder_fused")

METHODS = ("minmax", "entropy", "percentile")
#: ``--engine``: ONNX Runtime Q/DQ graphs (variant ``int8``; TensorRT, ONNX Runtime, the C++ runtime)
#: or OpenVINO IR from NNCF (variant ``openvino-int8``): one quantizer each (build/calibrate.py).
CALIBRATION_ENGINES = ONNX_ENGINES
#: ``--recipe`` of ``--engine openvino`` (ov_quantize.RECIPES says what each quantizes).
OV_RECIPES = ("hybrid", "int8-matmul")

#: Weighted ops worth int8. Everything else stays float: it is either cheap (elementwise) or
#: fragile at 8 bits (normalisations, softmax, GELU's Erf).
OP_TYPES = ("Conv", "MatMul", "Gemm")

#: Node-name patterns kept in float, besides the structural rules of :func:`keep_float_nodes`.
#: conv_in reads raw z_T and conv_out writes eps, whose error Eq. 11 multiplies by |E_k|; the
#: attention blocks' proj_in/proj_out and the resnets' 1x1 conv_shortcut cost few FLOPs; all four
#: lose the most image quality in int8 (docs/engines.md has the measurements).
KEEP_FLOAT = (r"/conv_in/", r"/conv_out/", r"/proj_(in|out)/", r"/conv_shortcut/")
#: ``--engine openvino``'s default: its MatMuls (proj_in/out included) are weight-only int8 there,
#: so only the UNet's first and last convolutions are kept by name (ov_quantize.py).
KEEP_FLOAT_OPENVINO = (r"/conv_in/", r"/conv_out/")

#: The shipped prompt sets (package data).
CALIBRATION_DIR = Path(__file__).resolve().parent.parent / "calibration"

#: The gate of each engine: the worst end-to-end image PSNR (int8 vs fp32, same held-out prompts and
#: seeds) under which calibrate refuses to publish. Each sits a few dB under what the engine's
#: defaults reach on the trained toy student on every CPU tried (docs/engines.md), so a collapsed
#: calibration or CPU path is refused and prompt-to-prompt spread is not.
MIN_PSNR = {"onnxruntime": 30.0, "openvino": 35.0}


@dataclass(frozen=True)
class CalibrationConfig:
    """Everything ``calibrate`` needs; written to the manifest's ``calibration`` entry."""

    bundle: Path
    prompts: Path | None = None  # None: calibration/toy_prompts.txt for the built-in toy models, else prompts.txt
    num: int = 64  # calibration images (rounded up to whole batches): SD-sized UNets' ranges settle by a few dozen
    seed: int = 0  # seed of the prompt order and of image i's z_T (seed + i)
    # |x| at the 99.999th percentile: clips rare outliers that would waste the 8-bit range
    # (docs/engines.md). minmax: max |x|; entropy: TensorRT's KL method.
    method: str = "percentile"
    batch: int = 4  # images per calibration batch (the runtime's default batch profile max)
    # Extra node-name patterns (regular expressions) to keep in float; None: the default KEEP_FLOAT.
    keep_float: tuple[str, ...] | None = None
    percentile: float = 99.999  # for method=percentile: the |activation| percentile that becomes the range
    eval_prompts: int = 4  # held-out prompts for the int8 vs fp32 measurement
    threads: int = 0  # ONNX Runtime intra-op threads (0: its default)
    engine: str = "onnxruntime"  # onnxruntime: Q/DQ ONNX graphs; openvino: NNCF's OpenVINO IR (method/batch unused)
    # --engine openvino: int8-matmul (projection/feed-forward MatMuls int8 x int8 too) is the faster
    # recipe within the quality gates; hybrid (MatMul weight-only int8) keeps more quality (docs/engines.md)
    recipe: str = "int8-matmul"
    # The end-to-end PSNR gate (dB) the int8 images must meet to be published; None: MIN_PSNR[engine].
    min_psnr: float | None = None

    @property
    def gate(self) -> float:
        return MIN_PSNR[self.engine] if self.min_psnr is None else float(self.min_psnr)

    def to_dict(self) -> dict:
        d = asdict(self)
        d.update(bundle=str(self.bundle), prompts=str(self.prompts) if self.prompts else None)
        d["keep_float"] = list(self.keep_patterns)
        d["min_psnr"] = self.gate
        if self.engine != "openvino":
            d.pop("recipe")  # OpenVINO's option: the Q/DQ record would misstate it
        return d

    @property
    def keep_patterns(self) -> tuple[str, ...]:
        if self.keep_float is not None:
            return tuple(self.keep_float)
        return KEEP_FLOAT_OPENVINO if self.engine == "openvino" else KEEP_FLOAT


@dataclass
class CalibrationReport:
    bundle: Path
    graphs: dict[str, dict]
    quality: dict
    seconds: dict[str, float] = field(default_factory=dict)


# -- prompts --------------------------------------------------------------------------------------
def default_prompts_file(manifest) -> Path:
    """The shipped prompt set that suits the bundle: toy captions for the built-in toy models and
    for any student distilled from the built-in toy teacher (its provenance names the teacher's
    UNet hash), which reads only the toy's words; general prompts otherwise."""
    return CALIBRATION_DIR / ("toy_prompts.txt" if _is_toy(manifest.source) else "prompts.txt")


def _is_toy(source: dict) -> bool:
    from ..reference.builtin import BUILTIN

    if Path(str(source.get("model", ""))).name in BUILTIN:
        return True
    provenance = (source.get("tiue") or {}).get("provenance") or {}
    teacher_hash = provenance.get("teacher_unet_sha256")
    return bool(teacher_hash) and teacher_hash == _toy_teacher_unet_sha256()


@functools.cache
def _toy_teacher_unet_sha256() -> str:
    from ..files import sha256_of_weights
    from ..reference.builtin import ASSETS

    return sha256_of_weights(ASSETS / "toy-teacher" / "unet")


def read_prompt_file(path: Path) -> list[str]:
    """Non-empty lines, ``#`` comments skipped."""
    from ..files import read_text
    from ..prompts import check_prompt

    path = Path(path)
    lines = [ln.strip() for ln in read_text(path, "prompts file").splitlines()]
    prompts = [check_prompt(ln, f"{path}:{i}: the prompt") for i, ln in enumerate(lines, 1) if ln and not ln.startswith("#")]
    if not prompts:
        raise InputError(f"{path} holds no prompts")
    return prompts


def split_prompts(prompts: Sequence[str], num: int, n_eval: int, seed: int) -> tuple[list[str], list[str]]:
    """``num`` calibration prompts and ``n_eval`` held-out ones, in a seeded order.

    Prompts repeat (with new seeds, so new z_T) when the file has fewer than ``num``; the held-out
    prompts come from the end of the order and are disjoint from the calibration ones when the
    file is long enough.
    """
    order = [prompts[i] for i in np.random.default_rng(seed).permutation(len(prompts))]
    held = order[-n_eval:] if len(order) > n_eval and n_eval else []
    pool = order[: len(order) - len(held)] or order
    calib = [pool[i % len(pool)] for i in range(num)]
    if n_eval and not held:
        held = [order[i % len(order)] for i in range(n_eval)]
    return calib, held


# -- which nodes stay float -----------------------------------------------------------------------
def _has_const_weight(node, consts: set[str]) -> bool:
    return len(node.input) > 1 and node.input[1] in consts


def keep_float_nodes(model, patterns: Sequence[str]) -> dict[str, str]:
    """``{node name: reason}`` for every Conv/MatMul/Gemm that stays float.

    Structural rules first: a matmul of two activations (attention's QK^T and PV: per-tensor
    scales on softmax outputs and keys cost accuracy for no weight savings); a node whose inputs
    do not depend on the graph inputs' values (the baked time-embedding table and every
    ``time_emb_proj``: constants per timestep, so int8 would only add error). Then ``patterns``
    (regular expressions searched in node names).
    """
    graph = model.graph
    consts = {t.name for t in graph.initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    value_dep = {i.name for i in graph.input}
    reasons: dict[str, str] = {}
    compiled = [re.compile(p) for p in patterns]
    for node in graph.node:  # ONNX graphs are stored in topological order
        depends = node.op_type != "Shape" and any(i in value_dep for i in node.input)
        if depends:
            value_dep.update(node.output)
        if node.op_type not in OP_TYPES:
            continue
        if not _has_const_weight(node, consts):
            reasons[node.name] = "activation x activation"
        elif not depends:
            reasons[node.name] = "constant per timestep (time embedding)"
        else:
            hit = next((p.pattern for p in compiled if p.search(node.name)), None)
            if hit:
                reasons[node.name] = f"matches {hit}"
    return reasons


# -- calibration data -----------------------------------------------------------------------------
def graph_feeds(
    pipe, graph: str, prompts: Sequence[str], seeds: Sequence[int], batch: int, first: int = 0, stop: int | None = None
) -> Iterator[dict]:
    """The real inputs of ``graph`` while the fp32 pipeline runs ``prompts``: batches ``first`` to
    ``stop`` (computed lazily: an SD UNet's features take ~26 MB per image), each the executor's
    chain up to the graph that feeds it."""
    from ..executor import graph_feed, run_chain

    chain = "unfused" if graph == "unet_decoder" else "fused"
    order = pipe.manifest.chains[chain].graphs
    before = order[order.index(graph) - 1]
    starts = list(range(0, len(prompts), batch))[first:stop]
    for start in starts:
        ps, ss = list(prompts[start : start + batch]), list(seeds[start : start + batch])
        noise = initial_noise(ss, pipe.latent_shape)
        result = run_chain(pipe.manifest, pipe.graphs, pipe.tokenize(ps), noise, chain, until=before)
        yield graph_feed(pipe.manifest, result.values, graph, chain)


def data_reader(make: Callable[[int, int], Iterator[dict]], batches: int):
    """An ONNX Runtime ``CalibrationDataReader`` over ``batches`` feeds, ``make(first, stop)``
    yielding a range of them: ``quantize_static`` reads it in strides (``set_range``) and merges
    each stride's ranges, so only one stride's activations are ever held in memory."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.range, self.it = (0, batches), None

        def __len__(self):
            return batches

        def set_range(self, start_index: int, end_index: int):
            self.range, self.it = (start_index, end_index), None

        def get_next(self):
            if self.it is None:
                self.it = make(*self.range)
            return next(self.it, None)

        def rewind(self):
            self.it = None

    return Reader()


def stride_for(batches: int, most: int = 4) -> int:
    """The largest stride <= ``most`` that divides ``batches`` (ONNX Runtime requires one)."""
    return max(d for d in range(1, most + 1) if batches % d == 0)


# -- quantization ---------------------------------------------------------------------------------
#: Entropy (KL) calibration: ONNX Runtime's default of 128 histogram bins for 128 quantized levels
#: leaves its threshold search one candidate, the full range (minmax again). 512 bins give it 192
#: candidates; TensorRT's legacy calibrator used 2048, which ONNX Runtime's pure-Python search
#: makes take tens of minutes per graph even on the tiny models.
ENTROPY_BINS = 512
QUANTIZED_BINS = 128
#: Percentile calibration's histogram (ONNX Runtime's default): cheap, it only reads a CDF.
PERCENTILE_BINS = 2048


def collect_ranges(src: Path, reader, cfg: CalibrationConfig, external: bool, workdir: Path):
    """Activation ranges of every tensor the quantizer needs, with ``cfg.method``: the reader is
    consumed a few batches at a time (``set_range``) and each stride's statistics merged, so only
    one stride's activations are held in memory."""
    from onnxruntime.quantization import CalibrationMethod
    from onnxruntime.quantization.calibrate import create_calibrator

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}
    options: dict = {"symmetric": True}  # TensorRT: int8 zero points are 0
    if cfg.method == "entropy":
        options.update(num_bins=ENTROPY_BINS, num_quantized_bins=QUANTIZED_BINS)
    elif cfg.method == "percentile":
        options.update(num_bins=PERCENTILE_BINS, percentile=cfg.percentile)
    calibrator = create_calibrator(
        Path(src),
        list(OP_TYPES),
        augmented_model_path=str(workdir / "augmented.onnx"),
        calibrate_method=method[cfg.method],
        use_external_data_format=external,
        providers=["CPUExecutionProvider"],
        extra_options=options,
    )
    n = len(reader)
    stride = stride_for(n)
    for first in range(0, n, stride):
        reader.set_range(first, first + stride)
        calibrator.collect_data(reader)
    return calibrator.compute_data()


def quantize_graph(src: Path, dst: Path, reader, keep: dict[str, str], cfg: CalibrationConfig, external: bool) -> None:
    """Calibrate, then ONNX Runtime's static quantizer: QDQ, symmetric int8 activations and
    symmetric per-channel int8 weights, float biases."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    try:  # ranges computed here reach quantize_static through its calibration cache (recent releases)
        from onnxruntime.quantization.calibrate import save_tensors_data
    except ImportError as exc:
        raise MissingDependency(f"onnxruntime {_ort_version()} is too old for calibrate: pip install -U onnxruntime") from exc

    with tempfile.TemporaryDirectory(prefix="tiue-calibrate-") as tmp:
        ranges = collect_ranges(src, reader, cfg, external, Path(tmp))
        cache = Path(tmp) / "ranges.json"  # quantize_static takes precomputed ranges through its cache file
        save_tensors_data(ranges, cache)
        quantize_static(
            str(src),
            str(dst),
            None,
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=list(OP_TYPES),
            per_channel=True,
            reduce_range=False,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=sorted(keep),
            use_external_data_format=external,
            calibrate_method=ranges.calibration_method,
            extra_options={
                "ActivationSymmetric": True,
                "WeightSymmetric": True,
                "MatMulConstBOnly": True,  # attention's activation x activation matmuls stay float
                "QuantizeBias": False,  # TensorRT has no int32 DequantizeLinear: it fuses float biases itself
            },
            calibration_cache_path=cache,
        )


def count_quantized(path: Path) -> dict[str, int]:
    """How many weights and activations a quantized graph holds in int8."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    inits = {t.name for t in model.graph.initializer}
    dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    weights = sum(1 for n in dq if n.input[0] in inits)
    return {"weights": weights, "activations": sum(1 for n in model.graph.node if n.op_type == "QuantizeLinear")}


# -- measurement ----------------------------------------------------------------------------------
def _range_psnr(ref: np.ndarray, out: np.ndarray, name: str) -> dict:
    """Output comparison with PSNR over the reference's peak-to-peak range."""
    span = float(np.ptp(ref)) or 1.0
    return compare_arrays(ref, out, None, name=name, data_range=span).to_dict()


def _image_psnr(ref: np.ndarray, out: np.ndarray, name: str) -> dict:
    return compare_arrays(ref, out, None, name=name, data_range=255.0).to_dict()


def measure(fp32, int8, prompts: Sequence[str], seeds: Sequence[int], min_psnr: float = MIN_PSNR["onnxruntime"]) -> dict:
    """int8 vs fp32 on held-out prompts: each graph's outputs on fp32 inputs, the image with only
    that graph in int8, and the image with every UNet graph in int8 (fused and unfused paths);
    ``ok`` when the worst end-to-end PSNR is at least ``min_psnr``.

    Memory stays one pipeline's at a time (both at once, every graph held, are 18 GiB at SD 2.1
    512x512): the fp32 chains run one graph at a time and keep every tensor (MBs), then the int8
    graphs run on those inputs and are closed, then the fp32 graphs, again one at a time, finish
    each one-graph-int8 image from that graph's int8 outputs."""
    import math

    from ..executor import GraphSet, graph_feed, run_chain
    from ..sampling import to_uint8_images

    m = fp32.manifest
    ids = fp32.tokenize(prompts)
    noise = initial_noise(seeds, fp32.latent_shape)
    chains = {"unet_encoder": "fused", "unet_decoder": "unfused", "unet_decoder_fused": "fused"}

    def run(graphs, chain, keep=False):
        return run_chain(m, graphs, ids, noise, chain, keep=keep)

    def float_graphs(recorded=None):  # fp32 graphs opened for their stage and released after it
        recorded = recorded or {}
        factories = {n: (lambda n=n: _Recorded(recorded[n])) if n in recorded else fp32.graphs.factories[n] for n in m.graphs}
        return GraphSet(factories, low_memory=True)

    fp32.close()  # what calibration left open
    refs = {c: run(float_graphs(), c, keep=True) for c in ("fused", "unfused")}
    outs = {name: int8.runner(name).infer(graph_feed(m, refs[chain].values, name, chain)) for name, chain in chains.items()}
    int8_images = {c: run(int8.graphs, c).images for c in refs}
    int8.close()

    def only_int8(graph, chain):  # the fp32 chain with only ``graph`` in int8, replayed up to it
        order = m.chains[chain].graphs
        kept = refs[chain].values
        recorded = {n: {k[len(n) + 1 :]: v for k, v in kept.items() if k.startswith(f"{n}.")} for n in order[: order.index(graph)]}
        return float_graphs({**recorded, graph: outs[graph]})

    ref = to_uint8_images(refs["fused"].images)
    graphs = {}
    for name, chain in chains.items():
        graphs[name] = {
            "outputs": {n: _range_psnr(refs[chain].values[f"{name}.{n}"], out, n) for n, out in outs[name].items()},
            "image": _image_psnr(ref, to_uint8_images(run(only_int8(name, chain), chain).images), "images"),
        }
    end_to_end = {c: _image_psnr(ref, to_uint8_images(images), "images") for c, images in int8_images.items()}
    worst = min((r["psnr"] if r["psnr"] is not None else math.inf) for r in end_to_end.values())
    return {
        "prompts": list(prompts),
        "seeds": list(seeds),
        "graphs": graphs,
        "end_to_end": end_to_end,
        "min_psnr_db": None if math.isinf(worst) else worst,
        "target_psnr_db": min_psnr,
        "ok": bool(worst >= min_psnr),
    }


class _Recorded:
    """A graph that returns the outputs recorded in an earlier run, whatever it is fed."""

    provider = "recorded"

    def __init__(self, outputs: dict):
        self.outputs = outputs

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def infer(self, feed):
        return self.outputs


def quality_line(quality: dict) -> str:
    """One line: per-graph image PSNR and the end-to-end PSNR."""

    def db(r):
        return "inf" if r["psnr"] is None else f"{r['psnr']:.1f}"

    parts = [f"{g} {db(v['image'])} dB" for g, v in quality["graphs"].items()]
    e2e = quality["end_to_end"]
    return f"int8 vs fp32 image PSNR: {', '.join(parts)}; end to end fused {db(e2e['fused'])} dB, unfused {db(e2e['unfused'])} dB"


# -- the command ----------------------------------------------------------------------------------
def check_config(cfg: CalibrationConfig) -> None:
    if cfg.engine not in CALIBRATION_ENGINES:
        raise InputError(f"unknown --engine {cfg.engine!r}: use one of {', '.join(CALIBRATION_ENGINES)}")
    if cfg.recipe not in OV_RECIPES:
        raise InputError(f"unknown --recipe {cfg.recipe!r}: use one of {', '.join(OV_RECIPES)}")
    if cfg.method not in METHODS:
        raise InputError(f"unknown --method {cfg.method!r}: use one of {', '.join(METHODS)}")
    if cfg.eval_prompts < 1:
        raise InputError(f"--eval-prompts must be at least 1, got {cfg.eval_prompts}: calibrate measures int8 against fp32 before it writes")
    if cfg.min_psnr is not None and not math.isfinite(cfg.min_psnr):
        raise InputError(f"--min-psnr must be a finite number of dB, got {cfg.min_psnr}")
    if cfg.num < 1:
        raise InputError(f"--num must be at least 1, got {cfg.num}")
    if cfg.batch < 1:
        raise InputError(f"--batch must be at least 1, got {cfg.batch}")
    if not 50.0 < cfg.percentile <= 100.0:
        raise InputError(f"--percentile must be in (50, 100], got {cfg.percentile}")
    for p in cfg.keep_patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise InputError(f"bad --keep-float pattern {p!r}: {exc}") from exc


def open_fp32_bundle(path: Path) -> Bundle:
    """The bundle, verified; refuses fp16 bundles (calibration quantizes the fp32 graphs)."""
    bundle = Bundle.open(path, verify=True)
    precision = bundle.manifest.precision
    if precision != "fp32":
        raise InputError(f"{path} is an {precision} bundle: calibrate needs the fp32 graphs (tiue-export export --precision fp32)")
    return bundle


def calibration_sets(cfg: CalibrationConfig, bundle: Bundle, num: int):
    """``(prompts file, calibration prompts, held-out prompts, their seeds, held-out seeds)``."""
    prompts_file = Path(cfg.prompts) if cfg.prompts else default_prompts_file(bundle.manifest)
    calib, held = split_prompts(read_prompt_file(prompts_file), num, cfg.eval_prompts, cfg.seed)
    seeds = [cfg.seed + i for i in range(len(calib))]
    return prompts_file, calib, held, seeds, [cfg.seed + 1_000_000 + i for i in range(len(held))]


def calibration_record(cfg: CalibrationConfig, prompts_file: Path, num: int, quality: dict, seconds: dict, versions: dict, **how) -> dict:
    """The manifest's record of a calibration: ``how`` (tool, format ...), then what every
    engine records (prompts and their hash, count, config, quality, timings, versions)."""
    return {
        **how,
        "prompts_file": str(prompts_file),
        "prompts_sha256": sha256_file(prompts_file),
        "num": num,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "config": cfg.to_dict(),
        "quality": quality,
        "seconds": seconds,
        "versions": {"tiue_export": __version__, **versions},
    }


class OnnxRuntimeQuantizer:
    """ONNX Runtime's static quantization: Q/DQ int8 ONNX graphs (the ``int8`` variant, run by
    ``onnxruntime-int8``, TensorRT and the C++ runtime)."""

    variant = "int8"
    record_key = "calibration"
    name = "int8"
    target = ""

    def __init__(self, cfg: CalibrationConfig):
        require("onnxruntime.quantization", "int8 calibration")
        self.cfg = cfg
        self.method = cfg.method

    @property
    def other_recipe(self) -> str:
        """What else to try when the images miss the gate (calibrate's refusal names it)."""
        return f"another --method ({', '.join(m for m in METHODS if m != self.cfg.method)})"

    def prompt_count(self) -> int:
        """Whole batches only: the histogram calibrators stack a stride's batches into one array."""
        return -(-self.cfg.num // self.cfg.batch) * self.cfg.batch

    def quantize(self, name: str, bundle: Bundle, fp32, calib: list[str], seeds: list[int], staging: Path) -> Variant:
        """Graph ``name`` as ``<name>.int8.onnx`` in ``staging``, calibrated on ``fp32``'s feeds."""
        import onnx

        cfg = self.cfg
        src = bundle.graph_path(name)
        keep = keep_float_nodes(onnx.load(str(src), load_external_data=False), cfg.keep_patterns)
        external = bool(bundle.manifest.graphs[name].external_data)
        out = staging / f"{name}.int8.onnx"
        batches = -(-len(calib) // cfg.batch)
        reader = data_reader(lambda a, b: graph_feeds(fp32, name, calib, seeds, cfg.batch, a, b), batches)
        try:
            with quiet_ort_quantization():
                quantize_graph(src, out, reader, keep, cfg, external)
        except (ValueError, RuntimeError, onnx.checker.ValidationError) as exc:
            raise TiueError(f"quantizing {name} failed: {first_line(exc)}") from exc
        data = sorted(p.name for p in staging.iterdir() if p.name.startswith(out.name) and p != out)
        extra = {"quantized": count_quantized(out), "kept_float": dict(sorted(keep.items()))}
        return Variant(out.name, "int8", sha256_file(out), tuple(data), extra=extra)

    def summary(self, variant: Variant) -> str:
        q = variant.extra["quantized"]
        return f"{q['weights']} weights and {q['activations']} activations in int8, {len(variant.extra['kept_float'])} weighted nodes kept float"

    def open_int8(self, staged: Bundle):
        from ..runtime import Pipeline

        return Pipeline(staged, "onnxruntime-int8", threads=self.cfg.threads, providers=["CPUExecutionProvider"])

    def versions(self) -> dict:
        return {"onnxruntime": _ort_version()}

    def how(self) -> dict:
        return {
            "tool": "onnxruntime.quantization.quantize_static",
            "format": "QDQ",
            "activations": "int8 symmetric per-tensor",
            "weights": "int8 symmetric per-channel",
            "op_types": list(OP_TYPES),
        }


def refuse_below_gate(quality: dict, cfg: CalibrationConfig, what: str, other_recipe: str) -> None:
    """Raise (nothing is published) when the measured images miss ``cfg.gate``, saying how to get past it.

    Raises:
        TiueError: the worst end-to-end PSNR is under the gate.
    """
    if quality["ok"]:
        return
    worst = quality["min_psnr_db"]
    raise TiueError(
        f"{what} images are {worst:.1f} dB from fp32 end to end, under calibrate's {cfg.gate:g} dB gate: nothing was written to "
        f"{cfg.bundle}; calibrate on more images (--num {2 * cfg.num}), keep more layers float (--keep-float REGEX), "
        f"try {other_recipe}, or accept less with --min-psnr {math.floor(worst)}"
    )


def with_variants(manifest: Manifest, entries: dict[str, Variant], prefix: str, variant: str = "int8") -> Manifest:
    """``manifest`` whose graphs carry ``variants.<variant>`` (files under ``prefix``)."""
    for name, v in entries.items():
        if prefix:
            v = replace(v, file=f"{prefix}/{v.file}")
        g = manifest.graphs[name]
        manifest = manifest.with_graph(replace(g, variants={**g.variants, variant: v}))
    if prefix:  # staged files are not in the bundle yet: list them so the view is consistent
        manifest = manifest.replace(files={**manifest.files, **{f"{prefix}/{v.file}": v.sha256 for v in entries.values()}})
    return manifest


@contextlib.contextmanager
def quiet_ort_quantization():
    """ONNX Runtime's quantizer logs advice through the root logger at WARNING; keep it out of
    the one-line CLI output while it runs (our own summary says what matters)."""
    import io

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.ERROR))
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the histogram calibrators print progress
            yield
    finally:
        root.setLevel(level)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__
