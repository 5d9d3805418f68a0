"""Graph runners: a lazy loader callable and a runner that owns what it loaded.

``SessionLoader(path, providers)`` builds nothing until called; ``OrtRunner(loader)`` opens the
ONNX Runtime session on ``__enter__`` and releases it on ``__exit__`` (Polygraphy's loader/runner
split). ``OvLoader`` / ``OvRunner`` do the same with OpenVINO, which reads the same ONNX files and
runs them on the CPU's bf16 (AMX, AVX-512-BF16) and int8 (VNNI, AMX) units.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from ..errors import InputError, TiueError, require

log = logging.getLogger("tiue_export")

#: Best first: TensorRT EP, then CUDA EP (both from onnxruntime-gpu), then the CPU.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _ort():
    return require("onnxruntime", "onnxruntime", why="the ONNX runtime backend")


def _first_line(exc: Exception) -> str:
    """A library exception as one line (its first), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def choose_providers(requested: Sequence[str] | None = None) -> list[str]:
    """The execution providers to use, best first, always ending with the CPU as a fallback."""
    available = _ort().get_available_providers()
    if requested:
        unknown = [p for p in requested if p not in available]
        if unknown:
            raise InputError(f"execution provider(s) {unknown} not available here; available: {available}")
        chosen = list(requested)
    else:
        chosen = [p for p in PREFERRED_PROVIDERS if p in available]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def tensorrt_options(profile: Mapping[str, tuple], fp16: bool, cache_dir: Path | None) -> dict:
    """TensorRT EP options: the spec's min/opt/max shapes as an explicit optimisation profile."""

    def fmt(i):
        return ",".join(f"{name}:{'x'.join(str(d) for d in shapes[i])}" for name, shapes in profile.items())

    opts = {
        "trt_profile_min_shapes": fmt(0),
        "trt_profile_opt_shapes": fmt(1),
        "trt_profile_max_shapes": fmt(2),
        "trt_fp16_enable": "True" if fp16 else "False",
    }
    if cache_dir is not None:
        opts.update(trt_engine_cache_enable="True", trt_engine_cache_path=str(cache_dir))
    return opts


class SessionLoader:
    """A lazy ``InferenceSession`` factory for one graph file."""

    def __init__(self, path, providers: Sequence[str], provider_options: Mapping[str, dict] | None = None, threads: int = 0):
        self.path = Path(path)
        self.providers = list(providers)
        self.provider_options = dict(provider_options or {})
        self.threads = threads  # 0: ONNX Runtime's default (all cores)

    def __call__(self):
        ort = _ort()
        so = ort.SessionOptions()
        so.log_severity_level = 3  # errors only: ORT's warnings about unused initializers are noise here
        if self.threads:
            so.intra_op_num_threads = self.threads
        opts = [self.provider_options.get(p, {}) for p in self.providers]
        try:
            return ort.InferenceSession(str(self.path), so, providers=self.providers, provider_options=opts)
        except Exception as exc:
            raise TiueError(f"ONNX Runtime cannot load {self.path.name}: {_first_line(exc)}") from exc


class OrtRunner:
    """Runs one graph: ``with OrtRunner(loader) as r: outputs = r.infer(feed)``."""

    def __init__(self, loader: SessionLoader):
        self.loader = loader
        self.session = None

    def __enter__(self) -> "OrtRunner":
        if self.session is None:
            self.session = self.loader()
        return self

    def __exit__(self, *exc) -> None:
        self.session = None  # drops ORT's buffers and (for GPU providers) device memory

    @property
    def provider(self) -> str:
        """The provider that ONNX Runtime actually selected first for this session."""
        return self.session.get_providers()[0] if self.session is not None else self.loader.providers[0]

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.session is None:
            raise RuntimeError("OrtRunner.infer outside its 'with' block")
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, dict(feed))))


# -- OpenVINO -------------------------------------------------------------------------------------
#: ``--backend`` precision words -> OpenVINO's ``INFERENCE_PRECISION_HINT`` (None: the CPU's
#: default, bf16 where the CPU has bf16 units, else f32).
OV_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", None: None}


def _ov():
    return require("openvino", "openvino", why="the OpenVINO backend")


def openvino_default_precision() -> str:
    """What OpenVINO runs fp32 graphs in on this CPU by default: ``bf16`` or ``fp32``."""
    return _precision_word(_ov().Core().get_property("CPU", "INFERENCE_PRECISION_HINT"))


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
            raise TiueError(f"OpenVINO cannot load {self.path.name}: {_first_line(exc)}") from exc


class OvRunner:
    """Runs one graph on OpenVINO: ``with OvRunner(loader) as r: outputs = r.infer(feed)``."""

    def __init__(self, loader: OvLoader):
        self.loader = loader
        self.compiled = None
        self.request = None
        self.names: list[str] = []

    def __enter__(self) -> "OvRunner":
        if self.compiled is None:
            self.compiled = self.loader()
            self.request = self.compiled.create_infer_request()
            self.names = [o.get_any_name() for o in self.compiled.outputs]
        return self

    def __exit__(self, *exc) -> None:
        self.request = None
        self.compiled = None

    @property
    def provider(self) -> str:
        """``OpenVINO CPU <precision>``: the precision the compiled model actually runs in."""
        if self.compiled is None:
            return f"OpenVINO CPU {self.loader.precision or 'default'}"
        return f"OpenVINO CPU {_precision_word(self.compiled.get_property('INFERENCE_PRECISION_HINT'))}"

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.request is None:
            raise RuntimeError("OvRunner.infer outside its 'with' block")
        # share_outputs=False: the arrays are copies, not views the next call overwrites.
        result = self.request.infer(dict(feed), share_inputs=False, share_outputs=False)
        return {name: np.asarray(result[port]) for name, port in zip(self.names, self.compiled.outputs)}
