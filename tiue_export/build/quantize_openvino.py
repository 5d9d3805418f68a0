"""``tiue-export calibrate --engine openvino``: OpenVINO int8 UNet graphs from NNCF's post-training
quantization, calibrated on the real inputs the bundle's own fp32 pipeline feeds each graph.

The default recipe (``int8-matmul``): convolutions and the projection and feed-forward MatMuls
fully quantized (int8 weights and activations, int8 x int8 GEMMs); attention's activation x
activation MatMuls (QK^T, PV) and softmax stay float, so no attention score or probability is ever
rounded to 8 bits; model type transformer, SmoothQuant off. ``--recipe hybrid``, the one used for
diffusion UNets elsewhere, keeps every MatMul's activations float (MatMul weight-only int8): 1.5 dB
more on the toy student, 1.10x slower at SD 2.1 512x512. Kept float in both: the time embedding
(constant per timestep), conv_in, conv_out and everything downstream of conv_out (the fused
decoder's Eq. 11 tail), norms and softmax.

Why attention's MatMuls stay float (measured, docs/engines.md): NNCF's full transformer recipe puts
FakeQuantize on both inputs of the cross-attention's activation x activation matmuls; OpenVINO's
CPU plugin, in its default bf16 mode, runs those as a fused int8 attention subgraph that loses the
decoder's output (z0 cosine 0.917 where the same graph in f32 keeps 0.994). NNCF streams its
statistics one sample at a time, so memory stays one sample's activations at any model size.

Portable int8 (NNCF's overflow fix on every quantized Convolution and MatMul): each weight keeps a
7-bit range (|w| <= 64 in its int8 tensor), so an int8 x int8 dot product cannot saturate the
16-bit intermediate sums of AVX2's ``vpmaddubsw`` on CPUs without VNNI (2 x 255 x 64 < 2^15). NNCF's default fixes the
first layer only; the rest then saturates on AVX2 (the toy student's images fall to 28 dB there).
The 7-bit weights cost VNNI and AMX CPUs, which sum in 32 bits, almost nothing, so one bundle keeps
its quality on every x86 CPU; the manifest records the assumption (``openvino_calibration.int8``).

The graphs go into the bundle as ``<graph>.openvino-int8.xml`` + ``.bin`` (OpenVINO IR: NNCF's
output cannot be written as ONNX) under ``variants.openvino-int8``, with a top-level
``openvino_calibration`` entry; staged beside the bundle and moved in, manifest last.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Sequence
from pathlib import Path

from ..bundle import Bundle, Variant, sha256_file
from ..cpu import cpu_features
from ..errors import TiueError, first_line, require
from .quantize import KEEP_FLOAT_OPENVINO, CalibrationConfig, graph_feeds

log = logging.getLogger("tiue_export")

#: The bundle variant (and the backend registry name that runs it).
VARIANT = "openvino-int8"

#: What each ``--recipe`` quantizes (recorded in the manifest's ``openvino_calibration.recipe``).
RECIPES = {
    "hybrid": "Convolution int8 weights (symmetric per-channel) and activations; MatMul weight-only int8 (symmetric per-channel); "
    "model type transformer; SmoothQuant off",
    "int8-matmul": "Convolution and the projection / feed-forward MatMuls int8 weights (symmetric per-channel) and activations; "
    "attention's QK^T and PV MatMuls and softmax float; model type transformer; SmoothQuant off",
}

#: What the int8 graphs assume of the CPU that runs them (the manifest's ``openvino_calibration.int8``).
INT8_ASSUMES = {
    "overflow_fix": "enable",  # nncf.OverflowFix.ENABLE: every quantized Convolution and MatMul
    "weight_bits": 7,  # the weights' range: int8 tensors with |w| <= 64
    "activation_bits": 8,
    "runs_on": "x86 CPUs with or without VNNI: no 16-bit intermediate sum of AVX2's int8 dot products saturates",
}

#: Ops never quantized, whatever feeds them (NNCF leaves most of them alone already; listed so the
#: recipe does not depend on its defaults).
FLOAT_TYPES = ("MVN", "GroupNormalization", "NormalizeL2", "Softmax")


class _Feeds:
    """A re-iterable calibration set for ``nncf.Dataset``: one image's real inputs per item, made
    lazily from the fp32 pipeline (NNCF may iterate more than once; nothing is held)."""

    def __init__(self, pipe, graph: str, prompts: Sequence[str], seeds: Sequence[int]):
        self.pipe, self.graph, self.prompts, self.seeds = pipe, graph, list(prompts), list(seeds)

    def __len__(self) -> int:
        return len(self.prompts)

    def __iter__(self):
        return graph_feeds(self.pipe, self.graph, self.prompts, self.seeds, batch=1)


def _depends_on_inputs(model) -> set[str]:
    """Friendly names of the ops whose values depend on the graph's inputs (ShapeOf cuts)."""
    dep: set[str] = set()
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind == "Parameter" or (
            kind != "ShapeOf" and any(i.get_source_output().get_node().get_friendly_name() in dep for i in op.inputs())
        ):
            dep.add(op.get_friendly_name())
    return dep


def _downstream(model, roots: set[str]) -> set[str]:
    """Friendly names of every op fed (directly or not) by an op named in ``roots``."""
    out: set[str] = set()
    for op in model.get_ordered_ops():
        if any(i.get_source_output().get_node().get_friendly_name() in roots | out for i in op.inputs()):
            out.add(op.get_friendly_name())
    return out


def float_scope(model, patterns: Sequence[str] = KEEP_FLOAT_OPENVINO) -> tuple[dict[str, str], set[str]]:
    """What stays float in ``model`` (an ``openvino.Model`` read from a bundle's UNet graph).

    Returns:
        ``({weighted op: reason}, every op name NNCF must leave alone)``: the first is what the
        manifest records (Convolution/MatMul kept float), the second the ignored scope.
    """
    dep = _depends_on_inputs(model)
    compiled = [re.compile(p) for p in patterns]
    ops = {op.get_friendly_name(): op for op in model.get_ordered_ops()}
    named = {n for n, op in ops.items() if op.get_type_name() == "Convolution" and any(p.search(n) for p in compiled)}
    tail = _downstream(model, {n for n in named if "conv_out" in n})
    reasons: dict[str, str] = {}
    ignored: set[str] = set()
    for name, op in ops.items():
        kind = op.get_type_name()
        if kind in ("Parameter", "Result", "Constant"):
            continue
        why = None
        if name not in dep:
            why = "constant per timestep (time embedding)"
        elif name in named:
            why = next(f"matches {p.pattern}" for p in compiled if p.search(name))
        elif name in tail:
            why = "downstream of conv_out (eps and Eq. 11)"
        elif kind in FLOAT_TYPES:
            why = kind
        if why:
            ignored.add(name)
            if kind in ("Convolution", "MatMul"):
                reasons[name] = why
    return reasons, ignored


def activation_matmuls(model) -> set[str]:
    """MatMuls whose two operands both depend on the graph inputs: attention's QK^T and PV."""
    dep = _depends_on_inputs(model)
    return {
        op.get_friendly_name()
        for op in model.get_ordered_ops()
        if op.get_type_name() == "MatMul" and all(i.get_source_output().get_node().get_friendly_name() in dep for i in op.inputs())
    }


def quantize_model(model, dataset, n: int, ignored: set[str], recipe: str = "int8-matmul"):
    """One ``openvino.Model`` in int8 by NNCF post-training quantization on ``dataset`` (``n`` samples).

    ``hybrid``: MatMul weights to int8 (weight-only), then the convolutions quantized (weights and
    activations). ``int8-matmul``: the projection and feed-forward MatMuls quantized like the
    convolutions (int8 x int8); attention's QK^T and PV MatMuls (and softmax) stay float, so
    OpenVINO never forms the fused int8 attention that lost z0.
    """
    nncf = require("nncf", "calibrate --engine openvino")
    matmuls = {op.get_friendly_name() for op in model.get_ordered_ops() if op.get_type_name() == "MatMul"}
    if recipe == "hybrid":
        # Weight-only int8 for the MatMuls (symmetric per output channel); convolutions and the kept
        # ops are left to the second step or stay float.
        model = nncf.compress_weights(
            model,
            mode=nncf.CompressWeightsMode.INT8_SYM,
            ignored_scope=nncf.IgnoredScope(names=sorted(ignored & matmuls), types=["Convolution"], validate=False),
        )
        skip = ignored | matmuls
    else:
        skip = ignored | activation_matmuls(model)
    return nncf.quantize(
        model,
        nncf.Dataset(dataset),
        subset_size=n,
        model_type=nncf.ModelType.TRANSFORMER,
        ignored_scope=nncf.IgnoredScope(names=sorted(skip), types=list(FLOAT_TYPES), validate=False),
        advanced_parameters=nncf.AdvancedQuantizationParameters(
            smooth_quant_alphas=nncf.AdvancedSmoothQuantParameters(matmul=-1, convolution=-1),
            overflow_fix=nncf.OverflowFix.ENABLE,  # 7-bit weights everywhere: right on AVX2 as on VNNI (INT8_ASSUMES)
        ),
    )


def count_int8(model) -> dict[str, int]:
    """FakeQuantize nodes (quantized activations and conv weights) and int8 weight constants."""
    fq = sum(1 for op in model.get_ordered_ops() if op.get_type_name() == "FakeQuantize")
    weights = sum(
        1 for op in model.get_ordered_ops() if op.get_type_name() == "Constant" and op.get_element_type().get_type_name() in ("i8", "u8")
    )
    return {"fake_quantize": fq, "int8_weights": weights}


class OpenVinoQuantizer:
    """NNCF for OpenVINO: int8 IR graphs (the ``openvino-int8`` variant and backend)."""

    variant = VARIANT
    record_key = "openvino_calibration"
    name = "OpenVINO int8"

    def __init__(self, cfg: CalibrationConfig):
        self.ov = require("openvino", "calibrate --engine openvino")
        self.nncf = require("nncf", "calibrate --engine openvino")
        self.cfg = cfg
        self.core = self.ov.Core()
        self.target = f" for OpenVINO ({cfg.recipe})"
        self.method = f"NNCF {self.nncf.__version__}"

    def prompt_count(self) -> int:
        return self.cfg.num

    def quantize(self, name: str, bundle: Bundle, fp32, calib: list[str], seeds: list[int], staging: Path) -> Variant:
        """Graph ``name`` as ``<name>.openvino-int8.xml`` + ``.bin`` in ``staging``."""
        model = self.core.read_model(str(bundle.graph_path(name)))
        kept, ignored = float_scope(model, self.cfg.keep_patterns)
        out = staging / f"{name}.{VARIANT}.xml"
        try:
            q = quantize_model(model, _Feeds(fp32, name, calib, seeds), len(calib), ignored, self.cfg.recipe)
            self.ov.save_model(q, str(out), compress_to_fp16=False)  # float weights stay fp32, as exported
        except (RuntimeError, ValueError, self.nncf.ValidationError) as exc:
            raise TiueError(f"quantizing {name} for OpenVINO failed: {first_line(exc)}") from exc
        extra = {"quantized": count_int8(q), "kept_float": dict(sorted(kept.items()))}
        return Variant(out.name, "int8", sha256_file(out), (out.with_suffix(".bin").name,), extra=extra)

    @property
    def other_recipe(self) -> str:
        """What else to try when the images miss the gate (calibrate's refusal names it)."""
        return "--recipe int8-matmul" if self.cfg.recipe == "hybrid" else "--recipe hybrid"

    def summary(self, variant: Variant) -> str:
        c = variant.extra["quantized"]
        return f"{c['fake_quantize']} FakeQuantize, {c['int8_weights']} int8 weight tensors, {len(variant.extra['kept_float'])} weighted ops kept float"

    def open_int8(self, staged: Bundle):
        from ..runtime import Pipeline

        return Pipeline(staged, VARIANT, threads=self.cfg.threads)

    def versions(self) -> dict:
        return {"nncf": self.nncf.__version__, "openvino": self.ov.get_version()}

    def how(self) -> dict:
        return {
            "tool": "nncf.compress_weights + nncf.quantize",
            "format": "OpenVINO IR", "recipe": f"{self.cfg.recipe}: {RECIPES[self.cfg.recipe]}",
            "int8": INT8_ASSUMES,
            "measured_on": cpu_features().to_dict(),
        }
