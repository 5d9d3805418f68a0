"""Is TensorRT here, is there a CUDA GPU, and were a bundle's engines built for them?

Engines (``.plan``) are specific to the TensorRT version that built them and to the GPU's compute
capability; loading one elsewhere fails deep inside TensorRT or, worse, runs slow kernels. These
checks compare the manifest's record with this machine first and say what to do in one line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from ..errors import MissingDependency, ModelError, TiueError, install_hint

#: What to install for engines (the project's extra pins tensorrt and cuda-python).
TENSORRT_INSTALL = install_hint("tensorrt")
#: The oldest TensorRT whose Python API has everything used here (device_memory_size_v2,
#: set_device_memory(ptr, size), strongly typed networks, named I/O tensors).
MIN_TENSORRT = (10, 1)


def import_tensorrt():
    """``tensorrt``, or :class:`MissingDependency` naming what to install."""
    try:
        import tensorrt
    except ImportError as exc:
        raise MissingDependency(f"TensorRT is not installed: {TENSORRT_INSTALL}") from exc
    if version_tuple(tensorrt.__version__) < MIN_TENSORRT:
        raise MissingDependency(
            f"TensorRT {tensorrt.__version__} is too old (need >= {'.'.join(map(str, MIN_TENSORRT))}): pip install -U tensorrt"
        )
    return tensorrt


def import_cudart():
    """cuda-python's runtime module (``cuda.bindings.runtime``; ``cuda.cudart`` before 12.6)."""
    try:
        from cuda.bindings import runtime as cudart
    except ImportError:
        try:
            from cuda import cudart
        except ImportError as exc:
            raise MissingDependency(f"cuda-python is not installed: {TENSORRT_INSTALL}") from exc
    return cudart


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.13.0.35"`` -> ``(10, 13, 0, 35)`` (non-numeric parts end the tuple)."""
    out = []
    for part in str(version).split("."):
        if not part.isdigit():
            break
        out.append(int(part))
    return tuple(out)


def cuda_call(result, what: str = "CUDA call"):
    """Unpack a cuda-python ``(error, *values)`` result; raise :class:`TiueError` on an error."""
    err, *values = result if isinstance(result, tuple) else (result,)
    if int(getattr(err, "value", err)) != 0:
        name = getattr(err, "name", str(err))
        raise TiueError(f"{what} failed: {name}")
    if not values:
        return None
    return values[0] if len(values) == 1 else tuple(values)


@dataclass(frozen=True)
class GpuInfo:
    """The GPU an engine is built for or runs on."""

    name: str
    compute_capability: str  # "8.9": engines do not move between capabilities
    index: int = 0
    memory_bytes: int = 0

    def to_dict(self) -> dict:
        return {"name": self.name, "compute_capability": self.compute_capability, "memory_bytes": self.memory_bytes}


def query_gpu(device: int = 0) -> GpuInfo:
    """Name and compute capability of CUDA device ``device`` (TiueError when there is none)."""
    cudart = import_cudart()
    try:
        count = cuda_call(cudart.cudaGetDeviceCount(), "cudaGetDeviceCount")
    except TiueError as exc:
        raise TiueError(f"no CUDA GPU found ({exc}): TensorRT engines need an NVIDIA GPU and its driver") from exc
    if not count:
        raise TiueError("no CUDA GPU found: TensorRT engines need an NVIDIA GPU and its driver")
    if not 0 <= device < count:
        raise TiueError(f"no CUDA device {device}: this machine has {count}")
    props = cuda_call(cudart.cudaGetDeviceProperties(device), "cudaGetDeviceProperties")
    name = props.name.decode(errors="replace").rstrip("\x00") if isinstance(props.name, bytes) else str(props.name)
    return GpuInfo(name, f"{props.major}.{props.minor}", device, int(props.totalGlobalMem))


def require_tensorrt_gpu(device: int = 0):
    """``(tensorrt, GpuInfo)`` or the one-line reason this machine cannot build/run engines."""
    trt = import_tensorrt()
    import_cudart()
    return trt, query_gpu(device)


def check_engines(entry: Mapping, files: Mapping[str, str], trt_version: str, gpu: GpuInfo, bundle: str, precision: str) -> None:
    """Refuse engines that this machine cannot or should not run.

    Args:
        entry: the manifest's ``engines[precision]`` record.
        files: the manifest's ``files`` (sha256 of the ONNX graphs now in the bundle).
        trt_version, gpu: this machine's TensorRT version and GPU.

    Raises:
        ModelError: another TensorRT version, another compute capability, or engines older than
            the graphs they were built from (re-exported or re-calibrated since).
    """
    rebuild = f"rebuild with tiue-export build-trt {bundle} --precision {precision}"
    built = str(entry.get("tensorrt", "?"))
    if version_tuple(built)[:3] != version_tuple(trt_version)[:3]:
        raise ModelError(f"the {precision} engines were built with TensorRT {built}, this is TensorRT {trt_version}: {rebuild}")
    want = entry.get("gpu", {})
    if str(want.get("compute_capability")) != gpu.compute_capability:
        raise ModelError(
            f"the {precision} engines were built for {want.get('name', '?')} (compute capability "
            f"{want.get('compute_capability', '?')}), this GPU is {gpu.name} ({gpu.compute_capability}): {rebuild}"
        )
    for name, g in entry.get("graphs", {}).items():
        source, digest = g.get("source"), g.get("source_sha256")
        if source and digest and files.get(source) != digest:
            raise ModelError(f"the {precision} {name} engine is older than {source} (changed since it was built): {rebuild}")
