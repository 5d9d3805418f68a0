"""The TensorRT backend: a bundle's engines run as the same one-pass pipeline as ONNX Runtime.

    from tiue_export.runtime import Pipeline
    with Pipeline.load("bundle/", backend="tensorrt-fp16") as pipe:
        images = pipe(["a photo of a cat"], seed=0).images

:class:`TrtGraphs` is the executor's graph set of a bundle's engines, so the runtime
:class:`~tiue_export.runtime.Pipeline` and every stage method (``encode_text``, ``encode``,
``decode``, ``decode_fused``, ``decode_latents``) run on it unchanged for ``check`` and ``bench``;
the chain keeps the intermediate tensors on the GPU (z_T, text embeddings and the encoder features are uploaded or
produced once, consumed in place).

Memory and streams come from cuda-python (``cuda.bindings.runtime``) rather than torch: the runtime
is torch-free by design (a deployment image needs no 2 GB CUDA torch wheel), and cuda-python is what
TensorRT's own samples use. Per engine: one execution context with user-managed scratch memory
(all engines share one buffer of the largest ``device_memory_size_v2``: they run one after another
on one stream), one device buffer per I/O tensor sized for the profile's largest batch (tensors
passed between engines share one buffer), ``set_input_shape`` + ``set_tensor_address`` +
``execute_async_v3``, and a CUDA graph captured after the first run at each shape and replayed
after that (addresses never change, so the captured graph stays valid).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from ..bundle import Bundle
from ..errors import InputError, ModelError, TiueError
from ..executor import GraphSet
from ..specs import GraphSpec, TensorSpec
from .tensorrt_checks import check_engines, cuda_call, import_cudart, import_tensorrt, query_gpu

log = logging.getLogger("tiue_export")

def links(chain, manifest) -> dict[tuple[str, str], tuple[str, str]]:
    """``{(graph, input): (graph, tensor)}`` from the manifest chain's sources: the inputs that
    another engine produces or shares (z_T feeds two graphs); each pair gets one device buffer,
    so chaining engines copies nothing."""
    out: dict[tuple[str, str], tuple[str, str]] = {}
    first_reader: dict[str, tuple[str, str]] = {}
    for g in chain.graphs:
        for name in manifest.graphs[g].input_names:
            node, _, tensor = chain.sources[f"{g}.{name}"].partition(".")
            if node in chain.graphs:
                out[(g, name)] = (node, tensor)
            elif node == "inputs":
                key = f"inputs.{tensor}"
                if key in first_reader:
                    out[(g, name)] = first_reader[key]
                else:
                    first_reader[key] = (g, name)
    return out


@dataclass
class DeviceArray:
    """An output left on the GPU in its engine's buffer; ``np.asarray`` downloads it (and syncs)."""

    runner: "TrtRunner"
    name: str
    shape: tuple[int, ...]

    @property
    def buffer(self) -> "Buffer":
        return self.runner.buffers[self.name]

    def __array__(self, dtype=None, copy=None):
        host = self.runner.download(self.name, self.shape)
        self.runner.session.sync()
        host = host.copy()
        return host if dtype is None else host.astype(dtype)


class Cuda:
    """The CUDA runtime calls this backend makes (cuda-python), each checked."""

    def __init__(self, device: int = 0):
        self.rt = import_cudart()
        cuda_call(self.rt.cudaSetDevice(device), "cudaSetDevice")

    def __getattr__(self, name):
        fn = getattr(self.rt, name)
        return lambda *args: cuda_call(fn(*args), name)

    def copy(self, dst: int, src: int, nbytes: int, kind: str, stream) -> None:
        kinds = self.rt.cudaMemcpyKind
        k = {"h2d": kinds.cudaMemcpyHostToDevice, "d2h": kinds.cudaMemcpyDeviceToHost, "d2d": kinds.cudaMemcpyDeviceToDevice}[kind]
        self.cudaMemcpyAsync(dst, src, nbytes, k, stream)


@dataclass
class Buffer:
    """One device tensor of at most ``capacity`` bytes, with a pinned host mirror for copies."""

    dtype: np.dtype
    capacity: int
    device: int
    host_ptr: int
    host: np.ndarray  # uint8 view of the pinned memory
    holds: object = None  # the host array last uploaded (the same z_T feeds two engines: upload once)


def _pinned_view(ptr: int, nbytes: int) -> np.ndarray:
    return np.frombuffer((ctypes.c_uint8 * nbytes).from_address(ptr), dtype=np.uint8)


class TrtRunner:
    """One engine: its context, tensor addresses and CUDA graphs. ``infer(feed)`` takes and returns
    numpy arrays (the ONNX runner's interface); :meth:`execute` runs on what is already on the GPU."""

    def __init__(self, session: "TrtSession", name: str, engine, spec: GraphSpec, buffers: Mapping[str, Buffer]):
        trt = session.trt
        self.session, self.name, self.engine, self.spec = session, name, engine, spec
        self.context = engine.create_execution_context(trt.ExecutionContextAllocationStrategy.USER_MANAGED)
        if self.context is None:
            raise TiueError(f"TensorRT could not create an execution context for {name}")
        self.context.set_device_memory(session.scratch, session.scratch_bytes)
        self.buffers = dict(buffers)
        for tensor, buf in self.buffers.items():
            self.context.set_tensor_address(tensor, buf.device)
        self.graphs: dict[tuple, object] = {}  # input shapes -> instantiated CUDA graph
        self.shapes: tuple | None = None
        self.use_graphs = session.cuda_graphs

    @property
    def provider(self) -> str:
        return f"TensorRT {self.session.trt.__version__}"

    def release(self) -> None:
        """Nothing to free between stages: the session binds its device buffers once for every graph."""

    def shapes_for(self, batch: int) -> tuple[tuple[str, tuple[int, ...]], ...]:
        return tuple((t.name, t.concrete(batch, self.session.k)) for t in self.spec.inputs)

    def execute(self, shapes: tuple) -> None:
        """Enqueue the engine for these input shapes on the session's stream: replay its CUDA
        graph when one was captured at these shapes, else run it (and capture one)."""
        cuda, stream = self.session.cuda, self.session.stream
        graph = self.graphs.get(shapes)
        if graph is not None:
            cuda.cudaGraphLaunch(graph, stream)
            return
        if shapes != self.shapes:
            for name, shape in shapes:
                if not self.context.set_input_shape(name, shape):
                    raise InputError(f"{self.name}: input {name} of shape {list(shape)} is outside the engine's profile")
            self.shapes = shapes
        if not self.context.execute_async_v3(int(stream)):
            raise TiueError(f"TensorRT failed to run {self.name}")
        if self.use_graphs:
            self.graphs[shapes] = self._capture(shapes)

    def _capture(self, shapes):
        """Record one enqueue as a CUDA graph (the run just before settled TensorRT's lazy state);
        None, and no more tries for this engine, when the engine cannot be captured."""
        cuda, stream, rt = self.session.cuda, self.session.stream, self.session.cuda.rt
        cuda.cudaStreamBeginCapture(stream, rt.cudaStreamCaptureMode.cudaStreamCaptureModeThreadLocal)
        ok = self.context.execute_async_v3(int(stream))
        err, graph = rt.cudaStreamEndCapture(stream)
        if not ok or int(getattr(err, "value", err)) != 0:
            rt.cudaGetLastError()  # clear the capture error
            log.debug("%s: CUDA graph capture failed; running without graphs", self.name)
            self.use_graphs = False
            return None
        exe = cuda.cudaGraphInstantiate(graph, 0)
        cuda.cudaGraphDestroy(graph)
        return exe

    def output_shape(self, name: str, batch: int) -> tuple[int, ...]:
        spec = next(t for t in self.spec.outputs if t.name == name)
        return spec.concrete(batch, self.session.k)

    def upload(self, name: str, array: np.ndarray) -> None:
        buf = self.buffers[name]
        array = np.ascontiguousarray(array, dtype=buf.dtype)
        if array.nbytes > buf.capacity:
            raise InputError(f"{self.name}: input {name} of shape {list(array.shape)} is larger than the engine's profile allows")
        buf.host[: array.nbytes] = array.reshape(-1).view(np.uint8)
        self.session.cuda.copy(buf.device, buf.host_ptr, array.nbytes, "h2d", self.session.stream)

    def download(self, name: str, shape: Sequence[int]) -> np.ndarray:
        """Enqueue the copy of output ``name`` to its pinned mirror; read it after a sync."""
        buf = self.buffers[name]
        nbytes = int(np.prod(shape)) * buf.dtype.itemsize
        self.session.cuda.copy(buf.host_ptr, buf.device, nbytes, "d2h", self.session.stream)
        return buf.host[:nbytes].view(buf.dtype).reshape(shape)

    def infer(self, feed: Mapping[str, object]) -> dict[str, DeviceArray]:
        """Run on ``feed``: host arrays are uploaded, outputs of linked engines are read in place
        (a :class:`DeviceArray` in this engine's own buffer), others copied on the device. The
        outputs stay on the GPU as :class:`DeviceArray` (``np.asarray`` downloads one)."""
        missing = [n for n in self.spec.input_names if n not in feed]
        if missing:
            raise InputError(f"{self.name}: missing input(s) {missing}")
        batch = _batch_of(self.spec.inputs, feed, self.session.k)
        shapes = self.shapes_for(batch)
        for name, shape in shapes:
            value = feed[name]
            if tuple(np.shape(value) if not isinstance(value, DeviceArray) else value.shape) != shape:
                raise InputError(f"{self.name}: input {name} has shape {list(np.shape(value))}, expected {list(shape)}")
            buf = self.buffers[name]
            if isinstance(value, DeviceArray):
                if value.buffer is not buf:
                    nbytes = int(np.prod(shape)) * buf.dtype.itemsize
                    self.session.cuda.copy(buf.device, value.buffer.device, nbytes, "d2d", self.session.stream)
                buf.holds = None
            elif buf.holds is not value:
                self.upload(name, value)
                buf.holds = value
        self.execute(shapes)
        for t in self.spec.outputs:
            self.buffers[t.name].holds = None
        self.session.sync()  # stage times are what the GPU took, not what enqueueing took
        return {t.name: DeviceArray(self, t.name, t.concrete(batch, self.session.k)) for t in self.spec.outputs}

    def close(self) -> None:
        for graph in self.graphs.values():
            if graph is not None:
                self.session.cuda.cudaGraphExecDestroy(graph)
        self.graphs.clear()
        self.context = None


def _batch_of(inputs: Sequence[TensorSpec], feed: Mapping[str, np.ndarray], k: int) -> int:
    """The batch B of a feed, from its first input with a B (or KB) axis."""
    for t in inputs:
        value = feed[t.name]
        shape = value.shape if isinstance(value, DeviceArray) else np.shape(value)
        for axis, d in enumerate(t.shape):
            if d == "B":
                return int(shape[axis])
            if d == "KB":
                return int(shape[axis]) // k
    return 1


@dataclass
class TrtSession:
    """The engines of one pipeline on one GPU: contexts, shared scratch memory, I/O buffers, one stream."""

    bundle: Bundle
    entry: dict
    cuda_graphs: bool = True
    device: int = 0
    runners: dict[str, TrtRunner] = field(default_factory=dict)

    def __post_init__(self):
        self.trt = import_tensorrt()
        self.cuda = Cuda(self.device)
        self.k = self.bundle.k
        self.batch_max = int(self.entry["batch_profile"]["max"])
        self.logger = self.trt.Logger(self.trt.Logger.WARNING)
        self.runtime = self.trt.Runtime(self.logger)  # must outlive the engines it deserializes
        self.stream = self.cuda.cudaStreamCreate()
        self._device_ptrs: list[int] = []
        self._host_ptrs: list[int] = []
        try:
            self._open()
        except BaseException:
            self.close()
            raise

    def _open(self) -> None:
        graphs = list(self.entry["pipeline"])
        m = self.bundle.manifest
        specs = {g: m.graphs[g].spec for g in graphs}
        engines = {g: self._deserialize(g) for g in graphs}
        self.scratch_bytes = max(int(e.device_memory_size_v2) for e in engines.values())
        self.scratch = self._malloc(self.scratch_bytes)
        chain = next(c for c in m.chains.values() if list(c.graphs) == graphs)
        shared = links(chain, m)
        owned: dict[tuple[str, str], Buffer] = {}
        for g in graphs:  # producers come before consumers in pipeline order
            buffers = {}
            for t in specs[g].inputs + specs[g].outputs:
                key = shared.get((g, t.name), (g, t.name))
                if key not in owned:
                    owned[key] = self._buffer(engines[g], t)
                buffers[t.name] = owned[key]
            self.runners[g] = TrtRunner(self, g, engines[g], specs[g], buffers)

    def _deserialize(self, name: str):
        path = self.bundle.path / self.entry["graphs"][name]["file"]
        if not path.is_file():
            raise ModelError(f"bundle {self.bundle.path}: engine {path.name} is missing: rebuild with tiue-export build-trt")
        engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ModelError(f"TensorRT cannot load {path.name} (another TensorRT or GPU?): rebuild with tiue-export build-trt")
        return engine

    def _malloc(self, nbytes: int) -> int:
        ptr = self.cuda.cudaMalloc(max(int(nbytes), 256))
        self._device_ptrs.append(ptr)
        return ptr

    def _buffer(self, engine, t: TensorSpec) -> Buffer:
        dtype = np.dtype(self.trt.nptype(engine.get_tensor_dtype(t.name)))
        if dtype != np.dtype(t.dtype):
            raise ModelError(f"engine tensor {t.name} is {dtype}, the manifest says {t.dtype}: rebuild with tiue-export build-trt")
        nbytes = int(np.prod(t.concrete(self.batch_max, self.k))) * dtype.itemsize
        host_ptr = self.cuda.cudaMallocHost(nbytes)
        self._host_ptrs.append(host_ptr)
        return Buffer(dtype, nbytes, self._malloc(nbytes), host_ptr, _pinned_view(host_ptr, nbytes))

    def sync(self) -> None:
        self.cuda.cudaStreamSynchronize(self.stream)

    def close(self) -> None:
        """Free every graph, context, buffer and the stream (safe to call twice)."""
        if not hasattr(self, "cuda"):
            return
        try:
            self.sync()
        finally:
            for r in self.runners.values():
                r.close()
            self.runners.clear()
            for ptr in self._device_ptrs:
                self.cuda.cudaFree(ptr)
            for ptr in self._host_ptrs:
                self.cuda.cudaFreeHost(ptr)
            self._device_ptrs, self._host_ptrs = [], []
            if self.stream is not None:
                self.cuda.cudaStreamDestroy(self.stream)
                self.stream = None


def engine_set(bundle: Bundle, precision: str | None) -> tuple[str, dict]:
    """``(precision, manifest entry)`` of the engines to run: ``precision``, or the only set built."""
    engines = bundle.manifest.engines
    if not engines:
        raise ModelError(f"bundle {bundle.path} has no TensorRT engines: run tiue-export build-trt {bundle.path} --precision fp16")
    if precision is None:
        if len(engines) > 1:
            raise InputError(f"bundle {bundle.path} has {', '.join(sorted(engines))} engines: choose one with --precision")
        precision = next(iter(engines))
    if precision not in engines:
        raise ModelError(
            f"bundle {bundle.path} has no {precision} engines (it has {', '.join(sorted(engines))}): "
            f"run tiue-export build-trt {bundle.path} --precision {precision}"
        )
    return precision, dict(engines[precision])


class TrtGraphs(GraphSet):
    """A bundle's engines of one precision as the executor's graph set: every engine opens at once
    (they share scratch memory and linked buffers) and outputs stay on the GPU."""

    def __init__(self, bundle: Bundle, precision: str | None = None, cuda_graphs: bool = True, device: int = 0):
        self.precision, self.entry = engine_set(bundle, precision)
        trt = import_tensorrt()
        check_engines(self.entry, bundle.manifest.files, trt.__version__, query_gpu(device), str(bundle.path), self.precision)
        self.session = TrtSession(bundle, self.entry, cuda_graphs, device)
        super().__init__({n: (lambda n=n: self.session.runners[n]) for n in self.session.runners}, provider=f"TensorRT {trt.__version__} ({self.precision})")
        self._open = dict(self.session.runners)

    def runner(self, name: str) -> TrtRunner:
        if name not in self._open:
            other = "--no-fused" if name == "unet_decoder" else "--fused"
            raise InputError(f"the {self.precision} engines have no {name}: rebuild with tiue-export build-trt {other}")
        return self._open[name]

    def check_chain(self, chain: str, manifest=None) -> None:
        built = "fused" if self.entry.get("fused", True) else "unfused"
        if chain != built:
            raise InputError(f"the engines were built {'with' if built == 'fused' else 'without'} the fused decoder: rebuild with build-trt {'--fused' if chain == 'fused' else '--no-fused'}")

    @property
    def preferred_chain(self) -> str:
        """The chain the engines were built for (one decoder each)."""
        return "fused" if self.entry.get("fused", True) else "unfused"

    def check_batch(self, n: int) -> None:
        profile = self.entry["batch_profile"]
        if not profile["min"] <= n <= profile["max"]:
            raise InputError(f"{n} images per call is outside the engines' batch profile {profile['min']}..{profile['max']}: rebuild with --batch")

    @property
    def provider(self) -> str:
        return self._provider

    def close(self) -> None:
        self.session.close()
        self._open.clear()


def graphs(bundle: Bundle, precision: str | None = None, cuda_graphs: bool = True, device: int = 0) -> TrtGraphs:
    """The registry's entry point: ``bundle``'s ``precision`` engines on CUDA ``device``."""
    return TrtGraphs(bundle, precision, cuda_graphs, device)


__all__ = ["DeviceArray", "TrtGraphs", "TrtRunner", "TrtSession", "engine_set", "graphs", "links"]
