"""The OpenVINO backend: the bundle's ONNX files compiled for the CPU, where OpenVINO runs them on
bf16 (AMX, AVX-512-BF16) and int8 (VNNI, AMX) units. ``OvLoader`` builds nothing until called;
``OvRunner`` owns the compiled model and its infer request.

Graphs go through a cache keyed by the graph's hash (:func:`graph_cache`): the float ONNX graph
converted once to OpenVINO IR with fp16 weights where the compute precision is below fp32 (half
the bytes to map and to hold, and bf16/fp16 compute rounds the weights further anyway), and
OpenVINO's compiled-model cache (``CACHE_DIR``) of the graph, so a fresh process (a ``serve``
replica) neither converts nor compiles an ONNX file. A changed graph has another key and
never meets the old entry; the least recently used entries go when the cache outgrows its cap
(:mod:`.graph_cache`).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ..errors import InputError, TiueError, first_line, require
from ..executor import Runner
from . import graph_cache as disk_cache

log = logging.getLogger("tiue_export")

#: ``--backend`` precision words -> OpenVINO's ``INFERENCE_PRECISION_HINT`` (None: the CPU's
#: default, bf16 where the CPU has bf16 units, else f32).
OV_PRECISION_HINTS = {"fp32": "f32", "bf16": "bf16", "fp16": "f16", None: None}


def _ov():
    return require("openvino", "the OpenVINO backend")


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


def graph_key(path, digests: tuple[str, ...] = ()) -> str:
    """The cache key of one graph file: its recorded sha256s (graph and external data, from the
    manifest) plus each file's size and modification time, so a file rewritten behind the
    manifest's back misses too; with no digests the files' contents are hashed. The OpenVINO
    version is part of it: IR written by one version is not read by another."""
    path = Path(path)
    beside = [path.with_suffix(".bin")] if path.suffix == ".xml" else sorted(path.parent.glob(path.name + ".data*"))
    files = [path, *(f for f in beside if f.is_file())]
    h = hashlib.sha256(f"openvino {_ov().__version__}".encode())
    if not digests:
        from ..bundle import sha256_file

        digests = tuple(sha256_file(f) for f in files)
    for d in digests:
        h.update(d.encode())
    for f in files:
        st = f.stat()
        h.update(f"{f.name} {st.st_size} {st.st_mtime_ns}".encode())
    return h.hexdigest()[:20]


def graph_cache(root: Path, key: str, source: Path, compress: bool) -> tuple[Path, Path, dict]:
    """``(model file, compiled-model cache dir, its properties)`` of one graph in the cache ``root``.

    With ``compress`` the ONNX ``source`` is converted once to IR with fp16 weights in the entry
    ``root/key/`` (written whole before anyone sees it: :func:`graph_cache.entry_dir`), and its
    compiled graph is cached without weights (``CACHE_MODE`` ``OPTIMIZE_SIZE``: they are read from
    the IR beside it), since a compiled copy with weights would double the entry's bytes for no
    faster start: OpenVINO defers the costly work (weight repacking) to the first inference,
    which an imported graph pays as well (docs/benchmarks.md). Otherwise the model file is
    ``source`` itself (an ONNX file, converted at every compile without the cache, or the
    bundle's int8 IR) and the entry holds its compiled graph with weights."""

    def convert(folder: Path) -> None:
        ov = _ov()
        ov.save_model(ov.convert_model(str(source)), str(folder / "model.xml"), compress_to_fp16=True)

    entry = disk_cache.entry_dir(root, key, source, convert if compress else None)
    if compress:
        return entry / "model.xml", entry / "compiled", {"CACHE_MODE": "OPTIMIZE_SIZE"}
    return source, entry / "compiled", {}


class OvLoader:
    """A lazy OpenVINO ``CompiledModel`` factory for one ONNX file, compiled for the CPU.

    Args:
        path: the ONNX file (external data beside it is read too) or OpenVINO IR (``.xml``).
        precision: ``fp32`` (exact), ``bf16``, ``fp16``, or None for the CPU's default.
        threads: inference threads (0: OpenVINO's default, all cores).
        cache_dir: the graph cache (:func:`graph_cache`), capped at ``TIUE_EXPORT_OV_CACHE_MAX``
            (:mod:`.graph_cache`); None: read and compile every time.
        digests: the graph's sha256s from the bundle manifest (its cache key); empty: hash the files.
    """

    def __init__(self, path, precision: str | None = None, threads: int = 0, cache_dir: Path | None = None, digests: tuple[str, ...] = ()):
        if precision not in OV_PRECISION_HINTS:
            raise InputError(f"OpenVINO precision {precision!r}: choose from {', '.join(p for p in OV_PRECISION_HINTS if p)}")
        self.path = Path(path)
        self.precision = precision
        self.threads = threads
        self.cache_dir = cache_dir
        self.digests = tuple(digests)
        self.held: str | None = None  # the cache entry this loader's compiled graph came from

    @property
    def compress(self) -> bool:
        """Whether the float ONNX graph is worth storing with fp16 weights: compute below fp32
        rounds the weights at least as much (bf16 keeps 8 mantissa bits, fp16 11)."""
        word = self.precision or openvino_default_precision()
        return word in ("bf16", "fp16") and self.path.suffix == ".onnx"

    def config(self) -> dict:
        cfg = {"PERFORMANCE_HINT": "LATENCY"}  # one request, all cores on it: the batch-1 case
        if OV_PRECISION_HINTS[self.precision]:
            cfg["INFERENCE_PRECISION_HINT"] = OV_PRECISION_HINTS[self.precision]
        if self.threads:
            cfg["INFERENCE_NUM_THREADS"] = int(self.threads)
        return cfg

    def key(self) -> str:
        """The graph's entry in the cache: its :func:`graph_key`, and whether it is stored as fp16 IR."""
        return graph_key(self.path, self.digests) + ("-ir16" if self.compress else "")

    def cached(self) -> tuple[Path, Path, dict] | None:
        """``(model file, CACHE_DIR, its properties)`` from the graph cache; None without one or when it cannot
        be written (then the graph is compiled from the bundle every time)."""
        if self.cache_dir is None:
            return None
        try:
            key = self.key()
            found = graph_cache(Path(self.cache_dir), key, self.path, self.compress)
            self.held = key
            return found
        except OSError as exc:
            log.warning("OpenVINO graph cache %s not usable (%s): compiling %s without it", self.cache_dir, first_line(exc), self.path.name)
            return None
        except TiueError:
            raise
        except Exception as exc:
            raise TiueError(f"OpenVINO cannot convert {self.path.name}: {first_line(exc)}") from exc

    def __call__(self):
        limit = disk_cache.max_bytes() if self.cache_dir is not None else 0  # a bad cap fails before any work
        for attempt in (1, 2):
            cached = self.cached()
            if cached is None:
                break
            try:
                model, cache_dir, properties = cached
                compiled = self.compile(str(model), CACHE_DIR=str(cache_dir), **properties)
            except TiueError as exc:
                # The entry may have been removed under us (another process's eviction) or be
                # damaged: it is discarded and the second attempt makes it again, fp16 weights and
                # all; if that fails too, the bundle's own file is the truth.
                key = self.held
                self.release_entry()
                if key is not None:
                    disk_cache.discard(Path(self.cache_dir), key)
                if attempt == 2:
                    log.warning("OpenVINO graph cache entry for %s not usable (%s): compiling it without the cache", self.path.name, exc)
            else:
                disk_cache.evict(Path(self.cache_dir), limit)
                return compiled
        return self.compile(str(self.path))

    def release_entry(self) -> None:
        """This loader's graph no longer needs its cache entry (the key kept from loading, not
        recomputed: the files may have changed since)."""
        if self.held is not None:
            disk_cache.release(self.held)
            self.held = None

    def compile(self, source: str, **extra):
        """The compiled model of the file ``source``, with :meth:`config` and ``extra`` properties."""
        try:
            # From the path, not a read model: with CACHE_DIR OpenVINO then imports the compiled
            # graph without reading the model at all.
            return _ov().Core().compile_model(source, "CPU", {**self.config(), **extra})
        except TiueError:
            raise
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
        self.loader.release_entry()

    def release(self) -> None:
        """Frees the compiled graph's activation buffers (reallocated at its next call): graphs
        held together never run at once, so only the running one needs them."""
        if self.handle is not None:
            self.handle.release_memory()

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


def graphs(bundle, precision: str | None = None, threads: int = 0, low_memory: bool = False, cache_dir: Path | None = None):
    """The bundle's graphs compiled by OpenVINO in ``precision`` (None: the CPU's default),
    through the graph cache in ``cache_dir`` (None: :func:`.graph_cache.cache_root`)."""
    from ..executor import GraphSet

    cache = cache_dir if cache_dir is not None else disk_cache.cache_root()

    def make(name):
        graph = bundle.manifest.graphs[name]
        files = bundle.manifest.files
        folder = Path(graph.file).parent
        digests = (graph.sha256, *(files.get((folder / f).as_posix(), "") for f in graph.external_data))
        return OvRunner(OvLoader(bundle.graph_path(name), precision, threads, cache, digests))

    return GraphSet.per_graph(bundle, make, low_memory, provider=f"OpenVINO CPU {precision or 'default'}")
