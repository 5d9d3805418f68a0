"""The ONNX Runtime backend: a lazy session loader and a runner that owns what it loaded.

``SessionLoader(path, providers)`` builds nothing until called; ``OrtRunner(loader)`` opens the
ONNX Runtime session on ``__enter__`` and releases it on ``__exit__`` (Polygraphy's loader/runner
split). :func:`graphs` gives a bundle's graphs as a :class:`~tiue_export.executor.GraphSet`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from ..errors import InputError, TiueError, first_line, require
from ..executor import Runner

log = logging.getLogger("tiue_export")

#: Best first: TensorRT EP, then CUDA EP (both from onnxruntime-gpu), then the CPU.
PREFERRED_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


def _ort():
    return require("onnxruntime", "the ONNX runtime backend")


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
            raise TiueError(f"ONNX Runtime cannot load {self.path.name}: {first_line(exc)}") from exc


class OrtRunner(Runner):
    """Runs one graph: ``with OrtRunner(loader) as r: outputs = r.infer(feed)``."""

    loader: SessionLoader

    @property
    def session(self):
        return self.handle

    @property
    def provider(self) -> str:
        """The provider that ONNX Runtime actually selected first for this session."""
        return self.handle.get_providers()[0] if self.handle is not None else self.loader.providers[0]

    run_options = None

    def opened(self) -> None:
        # The CPU arena gives back what a run grew it by when the run ends: the graphs held together
        # never run at once, and without this each keeps its largest run's activations (GBs at SD
        # size), growing again at later calls.
        self.run_options = _ort().RunOptions()
        self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        session = self.loaded()
        names = [o.name for o in session.get_outputs()]
        # Copies: ONNX Runtime's arrays are views that keep the session's whole memory arena alive
        # (GBs at SD size) after the session is closed, e.g. one graph at a time with low_memory.
        return {name: np.array(value) for name, value in zip(names, session.run(names, dict(feed), self.run_options))}


def graphs(bundle, providers: Sequence[str] | None = None, threads: int = 0, low_memory: bool = False):
    """The bundle's graphs on ONNX Runtime (TensorRT EP profiles from the graph specs)."""
    from ..executor import GraphSet

    chosen = choose_providers(providers)

    def make(name):
        options = {}
        if "TensorrtExecutionProvider" in chosen:
            graph = bundle.manifest.graphs[name]
            profile = graph.spec.shape_profile(bundle.manifest.batch_profile, bundle.k)
            options["TensorrtExecutionProvider"] = tensorrt_options(profile, graph.precision == "fp16", None)
        return OrtRunner(SessionLoader(bundle.graph_path(name), chosen, options, threads))

    return GraphSet.per_graph(bundle, make, low_memory, provider=chosen[0])
