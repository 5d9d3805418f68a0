"""What one serving replica or generation actor does: a runtime pipeline over (prompt, seed) jobs.

No Ray here: ``tiue-export serve`` and ``tiue-export generate`` wrap one :class:`ImageWorker` per
replica / actor. An image must not depend on the batch it was drawn in (a served image equals
``tiue-export infer``'s for its prompt and seed), so a worker checks that at start-up
(:func:`check_batch_invariance`) and falls back to one pipeline call per image when a batched call
changes any pixel.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from ..errors import InputError, TiueError
from ..generator import png_metadata
from ..variants import decoder_choices
from .config import WorkerConfig

log = logging.getLogger("tiue_export")

#: Prompts of the batch check: any text works, distinct ones make the rows differ.
PROBE_PROMPTS = ("a small red triangle on a blue background", "a photo of a cat", "a large green cross", "an empty room")

@dataclass
class BatchCheck:
    """Whether a batched call gives the same images as one call per image; falsy when it does not."""

    size: int
    pixels_max_abs: int = 0  # grey levels
    latents_max_abs: float = 0.0
    seconds: float = 0.0

    def __bool__(self) -> bool:
        return self.pixels_max_abs == 0 and self.latents_max_abs == 0.0

    def __str__(self) -> str:
        verdict = "identical" if self else f"differ (pixels by up to {self.pixels_max_abs}, z0 by {self.latents_max_abs:.3g})"
        return f"batch of {self.size} vs one image a call: {verdict} ({self.seconds:.2f} s)"


def check_batch_invariance(pipe, size: int) -> BatchCheck:
    """Draw ``size`` probe images in one call and its first and last image alone, and compare
    their uint8 pixels and z0 (three pipeline calls; a batch of 1 is trivially invariant)."""
    t0 = time.perf_counter()
    if size <= 1:
        return BatchCheck(size)
    prompts = [PROBE_PROMPTS[i % len(PROBE_PROMPTS)] for i in range(size)]
    seeds = list(range(size))
    batched = pipe(prompts, seeds=seeds)
    pixels, latents = 0, 0.0
    for i in sorted({0, size - 1}):
        alone = pipe([prompts[i]], seeds=[seeds[i]])
        pixels = max(pixels, int(np.abs(batched.images[i].astype(np.int16) - alone.images[0]).max()))
        latents = max(latents, float(np.abs(batched.latents[i] - alone.latents[0]).max()))
    return BatchCheck(size, pixels, latents, time.perf_counter() - t0)


@dataclass
class Drawn:
    """What one :meth:`ImageWorker.sample` call made: images (uint8 HWC) in job order, their PNG
    metadata, per-stage seconds summed over its pipeline calls, and how many calls it took."""

    images: list[np.ndarray]
    metadata: list[dict]
    timings: dict[str, float] = field(default_factory=dict)
    calls: int = 0


class ImageWorker:
    """A bundle's pipeline on one backend, drawing (prompt, seed) jobs in as few calls as the
    batch check allows.

    Args:
        cfg: the bundle, backend, threads and batch mode.
    """

    def __init__(self, cfg: WorkerConfig):
        from ..generator import open_generator
        from ..runtime import Pipeline

        self.cfg = cfg
        self.generator = open_generator(cfg.generate_options()).load()
        self.pipe = self.generator.pipe
        self.check: BatchCheck | None = None
        if cfg.batch_mode == "auto":
            self.check = check_batch_invariance(self.pipe, cfg.max_batch)
            log.info("%s", self.check)
            if not self.check:
                log.warning("batched calls change images on %s: drawing one image a call", self.pipe.provider)
        self.batched = cfg.batch_mode == "batched" or (cfg.batch_mode == "auto" and bool(self.check))
        # A request may pick the bundle's other VAE decoder: the chain runs to z0 on this pipeline
        # and that decoder (opened on first use, nothing else loaded twice) draws the image.
        self.vaes = [cfg.vae, *(v for v in decoder_choices(self.pipe.manifest, self.pipe.backend.engine) if v != cfg.vae)]
        self.decoders: dict[str, Pipeline] = {}

    def metadata(self, provider: str, vae: str) -> dict:
        """The PNG metadata shared by every image this worker draws with decoder ``vae`` (the generator's, infer's keys in infer's order)."""
        return self.generator.metadata(provider, vae)

    def sample(self, jobs: Sequence[tuple]) -> Drawn:
        """Images for ``jobs`` (prompt, seed) or (prompt, seed, vae), in order: one pipeline call
        per ``max_batch`` jobs of a VAE decoder when batching is exact, else one per job."""
        jobs = [(job[0], job[1], job[2] if len(job) > 2 else self.cfg.vae) for job in jobs]
        unknown = {vae for *_, vae in jobs} - set(self.vaes)
        if unknown:
            raise InputError(f"vae {sorted(unknown)[0]!r}: this server draws with {', '.join(self.vaes)}")
        step = self.cfg.max_batch if self.batched else 1
        out = Drawn([None] * len(jobs), [None] * len(jobs))
        for vae in dict.fromkeys(vae for *_, vae in jobs):
            rows = [i for i, job in enumerate(jobs) if job[2] == vae]
            for start in range(0, len(rows), step):
                chunk = rows[start : start + step]
                prompts, seeds = [jobs[i][0] for i in chunk], [jobs[i][1] for i in chunk]
                images, timings = self.draw(prompts, seeds, vae)
                out.calls += 1
                for key, v in timings.items():
                    out.timings[key] = out.timings.get(key, 0.0) + v
                meta = self.metadata(self.pipe.provider, vae)
                for i, image, p, s in zip(chunk, images, prompts, seeds):
                    out.images[i], out.metadata[i] = image, png_metadata(meta, p, s)
        return out

    def draw(self, prompts: list[str], seeds: list[int], vae: str) -> tuple[np.ndarray, dict[str, float]]:
        """One pipeline call: the images (uint8 NHWC) and per-stage seconds."""
        if vae == self.cfg.vae:
            result = self.pipe(prompts, seeds=seeds)
            return result.images, result.timings
        from ..executor import graph_feed, require_finite, run_chain
        from ..runtime import Pipeline

        pipe, chain = self.pipe, self.pipe.manifest.chains["fused"]
        prompts, seeds, noise = pipe.prepare(prompts, seeds)
        pipe.graphs.check_chain("fused", pipe.manifest)
        until = chain.graphs[chain.graphs.index("vae_decoder") - 1]
        drawn = run_chain(pipe.manifest, pipe.graphs, pipe.tokenize(prompts), noise, "fused", until=until)
        z0 = graph_feed(pipe.manifest, drawn.values, "vae_decoder")["latents"]
        require_finite({"outputs.z0": z0})
        if vae not in self.decoders:  # files checked when this worker's pipeline opened the bundle
            self.decoders[vae] = Pipeline.load(self.cfg.bundle, backend=self.cfg.backend, threads=self.cfg.threads, vae=vae, verify=False)
        t0 = time.perf_counter()
        images = self.decoders[vae].decode_latents(z0)
        return images, {**drawn.timings, "vae_decoder": time.perf_counter() - t0}

    def describe(self) -> dict:
        """A summary of the model and how this worker runs it (``GET /v1/model``)."""
        m = self.pipe.manifest
        return {
            "model": self.cfg.bundle,
            "source": str(m.source.get("model", "")),
            "image": {"height": m.image[0], "width": m.image[1]},
            "latent": list(m.latent),
            "k": m.k,
            "timesteps": list(m.sampler.timesteps),
            "sampler": "one-pass",
            "precision": self.pipe.precision,
            "backend": self.pipe.backend.name,
            "provider": self.pipe.provider,
            "graphs": list(m.graphs),
            "vae": self.cfg.vae,
            "vae_variants": self.vaes,
            "max_batch": self.cfg.max_batch,
            "batching": "batched" if self.batched else "per-image",
            "batch_check": None if self.check is None else str(self.check),
            "schema_version": m.schema_version,
        }

    def close(self) -> None:
        self.pipe.close()
        for decoder in self.decoders.values():
            decoder.close()


def project_error(exc: BaseException, text: str = "") -> TiueError | None:
    """The project error (a bundle a node cannot load, a missing engine ...) behind what Ray
    raised for a failed replica or actor: found in its causes, else in the remote traceback Ray
    quotes in its message (or in ``text``, e.g. Serve's deployment status). None if there is none."""
    import re

    from .. import errors

    seen, cur = set(), exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(cur, TiueError):
            return cur
        cur = getattr(cur, "cause", None) or cur.__cause__ or cur.__context__
    found = re.findall(r"tiue_export\.errors\.(\w+): (.+)", f"{exc}\n{text}")
    if not found:
        return None
    name, message = found[-1]
    kind = getattr(errors, name, TiueError)
    return kind(message.strip()) if isinstance(kind, type) and issubclass(kind, TiueError) else TiueError(message.strip())
