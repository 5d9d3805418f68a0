"""The one executor of the one-pass chain: tokens -> text encoder -> UNet encoder -> K-batched
decoder -> Eq. 11 -> VAE decoder, driven by the manifest's chains (which tensor feeds which input).

Every command that runs the chain (infer on every backend, check, bench, calibrate, export's
validation, toy eval) calls :func:`run_chain` with a :class:`GraphSet` (the backend's runners by
graph name) and asks it for what it needs: timings, intermediate values, the chain up to a graph.
A backend never composes the chain itself.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import numpy as np

from .bundle.manifest import EQ11, Chain, Manifest
from .errors import InputError, NonFiniteError
from .schedule import combine_one_pass

#: The stage a graph's time is reported under (both decoders are "the decoder call").
STAGES = {"unet_decoder_fused": "unet_decoder", EQ11: "sum"}


class Runner:
    """One graph on one backend: ``with runner: outputs = runner.infer(feed)``.

    ``loader()`` opens the graph (an ONNX Runtime session, an OpenVINO compiled model ...) on
    entering the first ``with``; leaving it releases the graph. A subclass gives :meth:`infer`, and
    :meth:`opened` for whatever it derives from the loaded graph.
    """

    provider: str = ""

    def __init__(self, loader: Callable[[], object] | None = None):
        self.loader = loader
        self.handle = None

    def opened(self) -> None:
        """Called once the graph is loaded (``self.handle`` is set)."""

    def __enter__(self):
        if self.handle is None and self.loader is not None:
            self.handle = self.loader()
            self.opened()
        return self

    def __exit__(self, *exc) -> None:
        self.handle = None  # drops the engine's buffers (and device memory, for GPU providers)

    def loaded(self):
        """The loaded graph; a clear error outside a ``with`` block."""
        if self.handle is None:
            raise RuntimeError(f"{type(self).__name__}.infer outside its 'with' block")
        return self.handle

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict:
        raise NotImplementedError

    def release(self) -> None:
        """Frees what the graph only needs while it runs (activation buffers), keeping it loaded."""


class GraphSet:
    """A backend's runners by graph name, each opened on first use and closed by :meth:`close`.

    Args:
        factories: graph name -> a callable that makes its (unopened) :class:`Runner`.
        low_memory: release each graph as soon as its stage is done (one graph held at a time).
        provider: what the graphs run on, before any is opened.
    """

    def __init__(self, factories: Mapping[str, Callable[[], Runner]], low_memory: bool = False, provider: str = ""):
        self.factories = dict(factories)
        self.low_memory = low_memory
        self._provider = provider
        self._open: dict[str, Runner] = {}

    @classmethod
    def per_graph(cls, bundle, make: Callable, low_memory: bool = False, provider: str = "") -> "GraphSet":
        """One runner per graph of ``bundle``, ``make(graph_name) -> Runner`` called on first use."""
        return cls({n: (lambda n=n: make(n)) for n in bundle.manifest.graphs}, low_memory, provider)

    def check_chain(self, chain: str, manifest: Manifest) -> None:
        """Refuse a chain that needs a graph this set does not have (an engine set built for one decoder)."""
        missing = [g for g in manifest.chains[chain].graphs if g not in self.factories]
        if missing:
            raise InputError(f"this backend has no {missing[0]} graph: the {chain} chain cannot run on it")

    @property
    def preferred_chain(self) -> str:
        """The chain a pipeline runs on this set unless told otherwise."""
        return "fused"

    def check_batch(self, n: int) -> None:
        """Refuse a call of ``n`` images the set cannot take (an engine's batch profile); any here."""

    def is_open(self, name: str) -> bool:
        return name in self._open

    def runner(self, name: str) -> Runner:
        if name not in self._open:
            if name not in self.factories:
                raise KeyError(f"this backend has no graph {name!r}")
            self._open[name] = self.factories[name]().__enter__()
        return self._open[name]

    def done(self, name: str) -> None:
        """Called after each stage: a low-memory set releases the graph it just ran; otherwise the
        graph frees its activation buffers, as the stages of one chain never run at once."""
        if name not in self._open:
            return
        if self.low_memory:
            self._open.pop(name).__exit__(None, None, None)
        else:
            self._open[name].release()

    def to_host(self, value) -> np.ndarray:
        """A runner's output as a numpy array (device-resident backends override this)."""
        return np.asarray(value)

    @property
    def provider(self) -> str:
        runner = next(iter(self._open.values()), None)
        return runner.provider if runner is not None else self._provider

    def close(self) -> None:
        for runner in self._open.values():
            runner.__exit__(None, None, None)
        self._open.clear()

    def __enter__(self) -> "GraphSet":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@dataclass
class ChainResult:
    """What one run of the chain produced.

    ``images`` are the VAE's float output (NCHW, in [-1, 1]); ``values`` holds every tensor by
    ``graph.tensor`` (``inputs.noise``, ``unet_decoder.eps``, ``eq11.z0`` ...) when asked to keep them.
    """

    z0: np.ndarray | None
    images: np.ndarray | None
    timings: dict[str, float] = field(default_factory=dict)
    values: dict[str, np.ndarray] = field(default_factory=dict)


def run_chain(
    manifest: Manifest,
    graphs: GraphSet,
    input_ids: np.ndarray,
    noise: np.ndarray,
    chain: str = "fused",
    *,
    keep: bool = False,
    until: str | None = None,
    sum_dtype=np.float32,
    hook: Callable[[str, float], None] | None = None,
    finite: bool = True,
) -> ChainResult:
    """Run the manifest's ``chain`` on ``graphs`` for token ids and z_T.

    Args:
        manifest: the bundle's manifest (its chains, S and E).
        graphs: the backend's runners.
        input_ids, noise: the chain's inputs (B prompts' ids, their z_T).
        chain: ``fused`` (Eq. 11 inside ``unet_decoder_fused``) or ``unfused`` (Eq. 11 here).
        keep: keep every intermediate tensor in ``ChainResult.values``.
        until: stop after this graph (its outputs are in ``values``; z0/images may be None).
        sum_dtype: the dtype Eq. 11 is computed in when it runs here (the result is float32).
        hook: called with ``(stage, seconds)`` after every stage (``load`` for opening a graph).
        finite: raise :class:`NonFiniteError` naming the first stage whose output holds NaN or
            infinity when z0 or the images do (costs one scan of z0 and the images; the other
            tensors are brought to the host and scanned only then, to name the first).

    Returns:
        A :class:`ChainResult` with per-stage seconds.
    """
    run = _ChainRun(manifest, manifest.chains[chain], graphs, sum_dtype, hook)
    run.values.update({"inputs.input_ids": input_ids, "inputs.noise": noise})
    for name in run.chain.graphs:
        run.graph(name)
        if name == until:
            break
    done = until is None or until not in run.chain.graphs
    z0 = graphs.to_host(run.resolve("outputs.z0")) if done else None
    images = graphs.to_host(run.resolve("outputs.images")) if done else None
    if finite and done and not (_all_finite(z0) and _all_finite(images)):
        require_finite({**run.values, "outputs.z0": z0, "outputs.images": images}, graphs.to_host)
    kept = {k: graphs.to_host(v) for k, v in run.values.items()} if keep or not done else {}
    return ChainResult(z0, images, run.timings, kept)


@dataclass
class _ChainRun:
    """One run of a chain in progress: every tensor so far by ``graph.tensor``, seconds per stage."""

    manifest: Manifest
    chain: Chain
    graphs: GraphSet
    sum_dtype: type
    hook: Callable[[str, float], None] | None
    values: dict[str, object] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)

    def record(self, stage: str, seconds: float) -> None:
        self.timings[stage] = self.timings.get(stage, 0.0) + seconds
        if self.hook is not None:
            self.hook(stage, seconds)

    def resolve(self, dest: str):
        """The value the chain wires into ``dest``; Eq. 11's z0 is computed here on first use."""
        src = self.chain.sources[dest]
        if src == f"{EQ11}.z0" and src not in self.values:
            latents = self.graphs.to_host(self.resolve(f"{EQ11}.latents"))
            eps = self.graphs.to_host(self.resolve(f"{EQ11}.eps"))
            t0 = time.perf_counter()
            if np.dtype(self.sum_dtype) != np.float32:
                latents, eps = latents.astype(self.sum_dtype), eps.astype(self.sum_dtype)
            s = self.manifest.sampler
            self.values[src] = np.ascontiguousarray(combine_one_pass(latents, eps, s.S, s.E), dtype=np.float32)
            self.record(STAGES[EQ11], time.perf_counter() - t0)
        return self.values[src]

    def graph(self, name: str) -> None:
        """Run graph ``name`` on its wired inputs (opening it first, timed as ``load``)."""
        feed = {t: self.resolve(f"{name}.{t}") for t in self.manifest.graphs[name].input_names}
        if not self.graphs.is_open(name):
            t0 = time.perf_counter()
            self.graphs.runner(name)
            self.record("load", time.perf_counter() - t0)
        t0 = time.perf_counter()
        out = self.graphs.runner(name).infer(feed)
        self.record(STAGES.get(name, name), time.perf_counter() - t0)
        self.graphs.done(name)
        self.values.update({f"{name}.{k}": v for k, v in out.items()})


def _all_finite(x: np.ndarray | None) -> bool:
    return x is None or x.dtype.kind != "f" or bool(np.isfinite(x).all())


def require_finite(values: Mapping[str, object], to_host: Callable = np.asarray) -> None:
    """Raise :class:`NonFiniteError` naming the first of ``values`` (in chain order) that holds NaN
    or infinity; the inputs are named as such. Nothing is raised when every value is finite."""
    for key, value in values.items():
        if value is None:
            continue
        x = np.asarray(to_host(value))
        if x.dtype.kind != "f" or np.isfinite(x).all():
            continue
        bad = int(x.size - np.isfinite(x).sum())
        where = "the input" if key.startswith("inputs.") else "the output"
        raise NonFiniteError(
            f"{where} {key} is not finite ({bad} of {x.size} values NaN or infinite): the model's weights or "
            "the inputs are broken; nothing was written"
        )


def graph_feed(manifest: Manifest, values: Mapping[str, np.ndarray], graph: str, chain: str = "fused") -> dict[str, np.ndarray]:
    """The inputs ``graph`` got in a kept run of ``chain`` (``ChainResult.values``), by input name:
    what a per-graph comparison feeds a backend so that each graph's error is its own."""
    ch = manifest.chains[chain]
    return {t: values[ch.sources[f"{graph}.{t}"]] for t in manifest.graphs[graph].input_names}
