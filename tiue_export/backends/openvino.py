"""The OpenVINO backend: the bundle's ONNX files compiled for the CPU, where OpenVINO runs them on
bf16 (AMX, AVX-512-BF16) and int8 (VNNI, AMX) units. ``OvLoader`` builds nothing until called;
``OvRunner`` owns the compiled model and its infer request.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError, TiueError, first_line, require
from ..executor import Runner

log = logging.getLogger("tiue_export")

#: ``--backend`` precision words -> OpenVINO's ``INFERENCE_PRECISION_HINT`` (None: the CPU's
#: default, bf16 where the CPU has bf16 units, else f32).
OV_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", None: None}


def _ov():
    return require("openvino", "openvino", why="the OpenVINO backend")


def openvino_default_precision() -> str:
    """What OpenVINO runs fp32 graphs in on this CPU by default: ``bf16`` or ``fp32``."""
    return _precision_word(_ov().Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


def warn_without_vnni(backend: str) -> None:
    """Warn that ``backend``'s int8 graphs (8-bit weights: the Q/DQ ones) lose accuracy on this CPU
    if it has no VNNI: OpenVINO then sums int8 products in 16 bits, which 8-bit weights saturate."""
    from ..cpu import cpu_features

    cpu = cpu_features()
    if not cpu.vnni:
        log.warning(
            "%s on %s, a CPU without VNNI: the Q/DQ graphs' 8-bit weights saturate its 16-bit int8 sums; "
            "openvino-int8 (calibrate --engine openvino: 7-bit weights) or onnxruntime-int8 keep their quality there",
            backend,
            cpu.model,
        )


def _precision_word(hint) -> str:
    """An OpenVINO element type (``bf16``, ``f16``, ``f32``) as this project's word for it."""
    return {"bf16": "bf16", "f16": "fp16"}.get(hint.get_type_name(), "fp32")


class OvLoader:
    """A lazy OpenVINO ``CompiledModel`` factory for one ONNX file, compiled for the CPU.

    Args:
        path: the ONNX file (external data beside it is read too).
        precision: ``fp32`` (exact), ``bf16``, ``fp16``, or None for the CPU's default.
        threads: inference threads (0: OpenVINO's default, all cores).
        cache_dir: OpenVINO's compiled-model cache (skips recompiling on the next load).
    """

    def __init__(self, path, precision: str | None = None, threads: int = 0, cache_dir: Path | None = None):
        if precision not in OV_PRECISION_HINTS:
            raise InputError(f"OpenVINO precision {precision!r}: choose from {', '.join(p for p in OV_PRECISION_HINTS if p)}")
        self.path = Path(path)
        self.precision = precision
        self.threads = threads
        self.cache_dir = cache_dir

    def config(self) -> dict:
        cfg = {"PERFORMANCE_HINT": "LATENCY"}  # one request, all cores on it: the batch-1 case
        if OV_PRECISION_HINTS[self.precision]:
            cfg["INFERENCE_PRECISION_HINT"] = OV_PRECISION_HINTS[self.precision]
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        if self.cache_dir is not None:
            cfg["CACHE_DIR"] = str(self.cache_dir)
        return cfg

    def __call__(self):
        ov = _ov()
        try:
            core = ov.Core()
            return core.compile_model(core.read_model(str(self.path)), "CPU", self.config())
        except Exception as exc:
            raise TiueError(f"OpenVINO cannot load {self.path.name}: {first_line(exc)}") from exc


class OvRunner(Runner):
    """Runs one graph on OpenVINO: ``with OvRunner(loader) as r: outputs = r.infer(feed)``."""

    loader: OvLoader
    request = None

    def opened(self) -> None:
        self.request = self.handle.create_infer_request()
        self.names = [o.get_any_name() for o in self.handle.outputs]

    def __exit__(self, *exc) -> None:
        self.request = None
        super().__exit__(*exc)

    @property
    def provider(self) -> str:
        """``OpenVINO CPU <precision>``: the precision the compiled model actually runs in."""
        if self.handle is None:
            return f"OpenVINO CPU {self.loader.precision or 'default'}"
        return f"OpenVINO CPU {_precision_word(self.handle.get_property('INFERENCE_PRECISION_HINT'))}"

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        compiled = self.loaded()
        # share_outputs=False: the arrays are copies, not views the next call overwrites.
        result = self.request.infer(dict(feed), share_inputs=False, share_outputs=False)
        return {name: np.asarray(result[port]) for name, port in zip(self.names, compiled.outputs)}


def graphs(bundle, precision: str | None = None, threads: int = 0, low_memory: bool = False):
    """The bundle's graphs compiled by OpenVINO in ``precision`` (None: the CPU's default)."""
    from ..executor import GraphSet

    def make(name):
        return OvRunner(OvLoader(bundle.graph_path(name), precision, threads))

    return GraphSet.per_graph(bundle, make, low_memory, provider=f"OpenVINO CPU {precision or 'default'}")
