"""The one registry of backend names: what runs the one-pass chain, on what, in which precision.

A backend is one module (``onnxruntime.py``, ``openvino.py``, ``torch.py``, ``..trt.runtime``) that
gives a bundle's graphs as a :class:`~tiue_export.executor.GraphSet`, plus one entry here. The
CLI's choices, ``check``'s and ``bench``'s rows and ``toy eval`` all read :data:`REGISTRY`.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from ..errors import InputError, TiueError, install_hint
from ..variants import how_to_make


@dataclass(frozen=True)
class Backend:
    """One backend name.

    Attributes:
        name: what users type (``openvino-int8``).
        engine: ``torch``, ``onnxruntime``, ``openvino`` or ``tensorrt``.
        variant: the bundle graph variant it runs (``int8``: the Q/DQ graphs; ``openvino-int8``:
            NNCF's OpenVINO IR), None: as exported. Its last word is the precision.
        compute: the compute precision it asks for (OpenVINO's hint, TensorRT's engine set, torch's
            dtype); None: the bundle's own / the device's default.
        needs: ``bundle`` (an exported bundle) or ``model`` (the PyTorch source model).
    """

    name: str
    engine: str
    variant: str | None = None
    compute: str | None = None
    needs: str = "bundle"
    description: str = ""

    def precision(self, manifest=None) -> str:
        """The precision its results are judged at: int8, bf16, fp16 or fp32."""
        if self.variant:
            return self.variant.rsplit("-", 1)[-1]
        if self.engine == "openvino" and self.compute is None:
            from .openvino import openvino_default_precision

            return openvino_default_precision()
        if self.compute:
            return self.compute
        return manifest.precision if manifest is not None else "fp32"

    def unavailable(self, manifest) -> str | None:
        """Why this machine or bundle cannot run it (None: it can)."""
        module = {"onnxruntime": "onnxruntime", "openvino": "openvino", "tensorrt": "tensorrt", "torch": "torch"}[self.engine]
        if importlib.util.find_spec(module) is None:
            return f"{module} is not installed: {install_hint(module)}"
        if manifest is None:
            return None
        if self.variant and self.variant not in manifest.variants:
            return f"no {self.variant} graphs in this bundle: {how_to_make(self.variant)} first"
        if self.engine == "tensorrt":
            if self.compute not in manifest.engines:
                return f"no {self.compute} TensorRT engines in this bundle: run tiue-export build-trt BUNDLE --precision {self.compute}"
            from .tensorrt_checks import require_tensorrt_gpu

            try:
                require_tensorrt_gpu()
            except TiueError as exc:
                return str(exc)
        return None

    def graphs(self, bundle, threads: int = 0, low_memory: bool = False, providers=None):
        """Open ``bundle``'s graphs on this backend (a :class:`~tiue_export.executor.GraphSet`)."""
        if self.engine == "onnxruntime":
            from .onnxruntime import graphs

            return graphs(bundle.with_variant(self.variant), providers, threads, low_memory)
        if self.engine == "openvino":
            from .openvino import graphs, warn_without_vnni

            if self.variant == "int8":
                warn_without_vnni(self.name)
            return graphs(bundle.with_variant(self.variant), self.compute, threads, low_memory)
        if self.engine == "tensorrt":
            from .tensorrt import graphs

            return graphs(bundle, self.compute)
        raise InputError(f"backend {self.name} runs a PyTorch model directory, not a bundle")


REGISTRY: dict[str, Backend] = {
    b.name: b
    for b in (
        Backend("torch", "torch", needs="model", description="the PyTorch reference, fp32 eager"),
        Backend("torch-bf16", "torch", compute="bf16", needs="model", description="PyTorch with bf16 weights (bench)"),
        Backend("onnxruntime", "onnxruntime", description="the bundle's graphs as exported, on ONNX Runtime"),
        Backend("onnxruntime-int8", "onnxruntime", variant="int8", description="the Q/DQ int8 UNet graphs of calibrate"),
        Backend("openvino", "openvino", description="OpenVINO CPU in its default precision (bf16 where the CPU has bf16 units)"),
        Backend("openvino-fp32", "openvino", compute="fp32", description="OpenVINO CPU in fp32"),
        Backend("openvino-bf16", "openvino", compute="bf16", description="OpenVINO CPU in bf16"),
        Backend("openvino-fp16", "openvino", compute="fp16", description="OpenVINO CPU in fp16"),
        Backend("openvino-int8", "openvino", variant="openvino-int8", description="NNCF's int8 UNet graphs of calibrate --engine openvino"),
        Backend("openvino-int8-qdq", "openvino", variant="int8", description="the ONNX Runtime Q/DQ int8 UNet graphs on OpenVINO"),
        Backend("tensorrt-fp16", "tensorrt", compute="fp16", description="TensorRT fp16 engines of build-trt"),
        Backend("tensorrt-int8", "tensorrt", compute="int8", description="TensorRT int8 engines of build-trt"),
        Backend("tensorrt-fp32", "tensorrt", compute="fp32", description="TensorRT fp32 engines of build-trt"),
    )
}

#: What runs graphs: every ``--backend`` word is one of these or a registry name.
ENGINES = ("torch", "onnxruntime", "openvino", "tensorrt")
#: The engines that run a bundle's ONNX files themselves (TensorRT builds engines from them first).
ONNX_ENGINES = ("onnxruntime", "openvino")
#: The engines that run a bundle (torch runs a model directory).
BUNDLE_ENGINES = ("onnxruntime", "openvino", "tensorrt")


def engine_of(backend: str) -> str:
    """The engine of a ``--backend`` word: an engine itself, or a registry name's engine."""
    if backend in REGISTRY:
        return REGISTRY[backend].engine
    if backend in ENGINES:
        return backend
    raise InputError(f"unknown backend {backend!r}: use {', '.join(ENGINES)} or a registry name ({', '.join(REGISTRY)})")


def get(name: str) -> Backend:
    """The registry entry of ``name`` (one-line error naming the choices otherwise)."""
    if name not in REGISTRY:
        raise InputError(f"unknown backend {name!r}: choose from {', '.join(REGISTRY)}")
    return REGISTRY[name]


def resolve(backend: str, precision: str | None = None, manifest=None) -> Backend:
    """``--backend ENGINE --precision WORD`` (or a full registry name) -> the registry entry.

    ``tensorrt`` without a precision takes the bundle's only engine set.
    """
    if precision is None and backend in REGISTRY and backend != "tensorrt":
        return REGISTRY[backend]
    if backend not in ENGINES:
        if precision is not None and backend in REGISTRY:
            raise InputError(f"--backend {backend} already names its precision: drop --precision {precision}")
        return get(backend)
    if backend == "tensorrt" and precision is None:
        engines = sorted((manifest.engines if manifest is not None else {}) or {})
        if len(engines) != 1:
            have = f"it has {', '.join(engines)}" if engines else "it has none: run tiue-export build-trt BUNDLE --precision fp16"
            raise InputError(f"--backend tensorrt needs --precision fp16|int8|fp32 ({have})")
        precision = engines[0]
    if precision is None:
        return REGISTRY[backend]
    if backend == "onnxruntime" and precision in ("fp32", "fp16") and manifest is not None and precision == manifest.precision:
        return REGISTRY["onnxruntime"]
    if backend == "torch" and precision == "fp32":
        return REGISTRY["torch"]
    name = f"{backend}-{precision}"
    if name not in REGISTRY:
        choices = [n.split("-", 1)[1] for n in REGISTRY if n.startswith(backend + "-")]
        hint = f"choose from {', '.join(choices)}" if choices else "it takes none"
        if backend == "onnxruntime" and precision == "bf16":
            raise InputError("--precision bf16 is OpenVINO's compute precision: use --backend openvino")
        raise InputError(f"--backend {backend} has no --precision {precision}: {hint}")
    return REGISTRY[name]


def available(manifest) -> list[str]:
    """Registry names this machine and bundle can run, one per distinct result (``openvino`` and
    the precision it defaults to are not both listed)."""
    out = []
    for name in ("torch", "onnxruntime", "onnxruntime-int8", "openvino", "openvino-int8", "openvino-int8-qdq", "tensorrt-fp16", "tensorrt-int8"):
        if REGISTRY[name].unavailable(manifest) is None:
            out.append(name)
    return out
