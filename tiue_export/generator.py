"""One generator behind every command that draws images: ``infer``, ``toy eval``, ``serve``,
``generate`` and ``bench`` open a model the same way.

:class:`GenerateOptions` holds what the user asked for and checks it (which backend takes which
options, in one place, with one wording); :func:`open_generator` resolves the backend once and
gives a :class:`Generator` with ``sample(prompts, seeds)`` and ``metadata(provider)``. Output file
names (:func:`output_paths`, :func:`slug`, :func:`recipe_digest`) and the PNG text of an image
(:func:`png_metadata`) are written here too, so that every command's PNGs agree key for key.

Nothing here imports torch: the PyTorch reference is imported when a torch generator loads.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .backends import ONNX_ENGINES, Backend, engine_of, resolve
from .errors import InputError
from .prompts import check_prompt
from .sampling import SEED_MAX, SamplerChoice

#: Image suffixes infer does not write (it writes PNG): ``--out x.jpg`` is refused, not made a directory.
NOT_PNG = (".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".npy")


def check_seed_range(seed: int, count: int) -> None:
    """Refuse ``count`` images from ``seed`` when the last seed passes :data:`SEED_MAX`."""
    if seed + count - 1 > SEED_MAX:
        raise InputError(f"--seed {seed} with --num-images {count} passes the largest seed, {SEED_MAX}")


# -- names and metadata of the files ---------------------------------------------------------------
def slug(text: str, n: int = 40) -> str:
    """The prompt part of an image's file name."""
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "image"


def recipe_digest(recipe: dict, prompt: str, seed: int) -> str:
    """8 hex digits of sha256 over what made one image (model, sampler, backend, precision, size,
    noise, prompt, seed): two images share a file name only if they are the same image."""
    text = json.dumps({**recipe, "prompt": prompt, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def output_paths(out: str, jobs: list[tuple[str, int]], recipe: dict | None = None, overwrite: bool = False) -> list[Path]:
    """One PNG per (prompt, seed): ``out`` itself if it ends in .png and there is one image (an
    existing file is replaced only with ``overwrite``), else files named
    ``NNN-prompt-slug-sSEED-DIGEST.png`` inside the directory ``out``, DIGEST from
    :func:`recipe_digest` (a file of that name holds the same image, so it is replaced)."""
    from .files import writable_dir

    path = Path(out)
    if path.suffix.lower() == ".png":
        if len(jobs) != 1:
            raise InputError(f"--out {out} names one file but {len(jobs)} images were asked for: give a directory")
        if path.is_dir():
            raise InputError(f"--out {out} is a directory: give a new FILE.png or the directory without .png")
        if path.exists() and not overwrite:
            raise InputError(f"--out {out} exists: pass --overwrite to replace it, or give a directory")
        writable_dir(path.parent)
        return [path]
    if path.suffix.lower() in NOT_PNG:
        raise InputError(f"--out {out}: infer writes PNG files; give FILE.png or a directory")
    if path.exists() and not path.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    writable_dir(path)
    recipe = recipe or {}
    return [path / f"{i:03d}-{slug(p)}-s{s}-{recipe_digest(recipe, p, s)}.png" for i, (p, s) in enumerate(jobs)]


def png_metadata(meta: dict, prompt: str, seed: int) -> dict:
    """One image's PNG text: its prompt and seed, the generator's ``meta``, the software."""
    from . import __version__

    return {"prompt": prompt, "seed": seed, **meta, "software": f"tiue-export {__version__}"}


def bundle_identity(bundle) -> str:
    """A bundle's path and the sha256 of its manifest (which holds every graph's sha256)."""
    digest = hashlib.sha256((Path(bundle.path) / "manifest.json").read_bytes()).hexdigest()[:16]
    return f"{Path(bundle.path).resolve()}@{digest}"


# -- the options --------------------------------------------------------------------------------
@dataclass(frozen=True)
class GenerateOptions:
    """How to draw images: the model, its backend and that backend's options; checked on creation.

    ``model`` is kept as the user wrote it: it is the ``model`` text of every PNG.
    """

    model: str | None = None
    backend: str = "torch"  # an engine (with ``precision``) or a registry name
    precision: str | None = None
    sampler: str | None = None  # one-pass | loop | ddim:N; default: the model's
    guidance: float | None = None  # ddim:N's CFG scale; default: the model's
    k: int | None = None
    height: int | None = None
    width: int | None = None
    noise: str = "numpy"
    vae: str = "full"  # a row of the variant table (tiny), or a distill-vae directory (torch)
    device: str | None = None  # torch: cpu, cuda[:N], auto
    dtype: str | None = None  # torch: fp32, fp16, bf16
    compile_mode: str = "none"  # torch: eager, a torch.compile mode, or cuda-graphs
    low_memory: bool = False  # onnxruntime / openvino: hold one graph at a time
    threads: int = 0  # bundle engines' intra-op threads; 0: the engine's default
    verify: bool = True  # check a bundle's files against its manifest's sha256

    def __post_init__(self):
        engine = self.engine
        if self.low_memory and engine not in ONNX_ENGINES:
            raise InputError(f"--low-memory is for the onnxruntime and openvino backends, not {self.backend}")
        if engine == "torch":
            if self.precision not in (None, "fp32"):
                raise InputError(f"--precision {self.precision} runs a bundle: use --backend onnxruntime, openvino or tensorrt")
            if self.sampler is not None:
                SamplerChoice.parse(self.sampler)
            return
        if not self.model:
            raise InputError(f"--backend {self.backend} needs --model BUNDLE (make one with tiue-export export)")
        if self.device is not None or self.dtype is not None:
            raise InputError(f"--device and --dtype are for --backend torch; a bundle's device comes with its backend ({self.backend})")
        if self.compile_mode != "none":
            raise InputError(f"--compile is for --backend torch; {self.backend} compiles the bundle's graphs itself")
        if self.sampler not in (None, "one-pass"):
            raise InputError(f"--sampler {self.sampler}: a bundle runs the one-pass sampler only")
        if self.k is not None:
            raise InputError("--k cannot change a bundle: K is fixed when it is exported")
        if self.noise != "numpy":
            raise InputError("--noise torch needs --backend torch (the runtime draws z_T with numpy)")
        if self.guidance is not None:
            raise InputError("--guidance is for ddim:N on the torch backend; a bundle's one-pass sampler has no guidance")

    @property
    def engine(self) -> str:
        return engine_of(self.backend)

    @property
    def vae_metadata(self) -> dict:
        """The PNG text of the VAE choice: none for the full decoder (PNGs stay as every runtime writes them)."""
        return {"vae": self.vae} if self.vae != "full" else {}

    def recipe(self, model: str) -> dict:
        """What makes an image besides its prompt and seed (for :func:`recipe_digest`)."""
        return {
            "model": model, "backend": self.backend, "precision": self.precision, "sampler": self.sampler,
            "guidance": self.guidance, "k": self.k, "height": self.height, "width": self.width, "noise": self.noise,
            **self.vae_metadata,  # full-VAE names stay as they were
            **{k: v for k, v in (("device", self.device), ("dtype", self.dtype)) if v is not None},
            **({"compile": self.compile_mode} if self.compile_mode != "none" else {}),
        }


# -- the generators -----------------------------------------------------------------------------
class Generator:
    """A model on one backend, resolved but not loaded until :meth:`load` (or the first sample).

    Attributes:
        options: what was asked for.
        model: the model's name in every PNG (as the user wrote it; the resolved default model's path).
        identity: what names the model in file-name digests (a path, a bundle's manifest sha256).
        max_batch: the largest call the backend takes (a TensorRT engine set's profile), None: any.
    """

    options: GenerateOptions
    model: str
    identity: str
    max_batch: int | None = None

    def load(self) -> "Generator":
        raise NotImplementedError

    def sample(self, prompts: Sequence[str], seeds: Sequence[int]):
        """One image per (prompt, seed): a result with ``images`` (uint8 NHWC) and ``timings``."""
        raise NotImplementedError

    def metadata(self, provider: str | None = None, vae: str | None = None) -> dict:
        """The PNG text shared by every image this generator draws (``provider``: a result's;
        ``vae``: the decoder that drew them, when not the options' own)."""
        raise NotImplementedError

    def describe(self) -> dict:
        """Sampler, guidance, K, precision and provider (a report's fields); loads the model."""
        raise NotImplementedError

    @property
    def provider(self) -> str:
        raise NotImplementedError

    def recipe(self) -> dict:
        return self.options.recipe(self.identity)

    def batch_size(self, asked: int) -> int:
        """``asked``, capped at :attr:`max_batch`."""
        return asked if self.max_batch is None else min(asked, self.max_batch)

    def close(self) -> None:
        pass

    def __enter__(self) -> "Generator":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class TorchGenerator(Generator):
    """The PyTorch reference on a model directory (``--backend torch``)."""

    def __init__(self, options: GenerateOptions):
        from .reference.builtin import resolve_model

        self.options = options
        path = resolve_model(options.model)
        self.path, self.model, self.identity = path, str(path), str(Path(path).resolve())
        self._check_compile(SamplerChoice.parse(options.sampler or "one-pass"), f"--sampler {options.sampler or 'one-pass'} runs eager")
        self.pipe = None

    def _check_compile(self, sampler: SamplerChoice, why: str) -> None:
        if self.options.compile_mode != "none" and sampler.kind != "one-pass":
            raise InputError(f"--compile speeds up the one-pass sampler's UNet graphs; {why}")

    def load(self) -> "TorchGenerator":
        if self.pipe is not None:
            return self
        from .reference.device import parse_device, parse_dtype
        from .reference.pipeline import load_pipeline

        o = self.options
        device = parse_device(o.device)
        pipe = load_pipeline(self.path, k=o.k, vae=o.vae, device=device, dtype=parse_dtype(o.dtype, device), compile=o.compile_mode)
        self.sampler = SamplerChoice.parse(o.sampler or pipe.default_sampler)
        self._check_compile(self.sampler, f"this model's sampler is {self.sampler}")
        self.guidance = pipe.default_guidance if o.guidance is None else o.guidance
        pipe.latent_shape(o.height, o.width)  # the size is refused before any work
        self.pipe = pipe
        return self

    def sample(self, prompts, seeds):
        self.load()
        o = self.options
        return self.pipe.sample(prompts, seeds, self.sampler, self.guidance, o.height, o.width, noise_source=o.noise)

    @property
    def provider(self) -> str:
        return self.load().pipe.provider

    def metadata(self, provider: str | None = None, vae: str | None = None) -> dict:
        import torch

        pipe = self.load().pipe
        meta = {"model": self.model, "sampler": str(self.sampler), "backend": "torch", "k": pipe.schedule.k, "noise": self.options.noise, **self.options.vae_metadata}
        if pipe.device.type != "cpu" or pipe.unet.dtype != torch.float32 or pipe.compile != "none":
            meta["provider"] = pipe.provider  # e.g. PyTorch cuda:0 float16 cuda-graphs
        if self.sampler.kind == "ddim":
            meta["guidance"] = self.guidance
        return meta

    def describe(self) -> dict:
        pipe = self.load().pipe
        guidance = self.guidance if self.sampler.kind == "ddim" else None
        return {"sampler": str(self.sampler), "guidance": guidance, "k": pipe.schedule.k, "provider": pipe.provider}

    def label(self) -> str:
        return f"torch, {self.sampler}"


class BundleGenerator(Generator):
    """A bundle on a registry backend (ONNX Runtime, OpenVINO, TensorRT): the torch-free runtime.

    Opening one checks the bundle's side only (its manifest, files, the variants asked for): the
    engine itself (TensorRT, a GPU) need not be on this machine until :meth:`load`.
    """

    def __init__(self, options: GenerateOptions):
        from .bundle import Bundle
        from .variants import with_vae

        self.options = options
        self.model = str(options.model)
        self.bundle = Bundle.open(options.model, verify=options.verify)
        self.identity = bundle_identity(self.bundle)
        self.backend: Backend = resolve(options.backend, options.precision, self.bundle.manifest)
        self.bundle.with_variant(self.backend.variant)  # no int8 graphs: refused now
        with_vae(self.bundle, options.vae, self.backend.engine)  # no such decoder: refused now
        size = self.bundle.manifest.image
        asked = (options.height or size[0], options.width or size[1])
        if asked != size:
            raise InputError(f"{options.model} was exported for {size[0]}x{size[1]} images, not {asked[0]}x{asked[1]}: re-export it")
        self.max_batch = self._engine_batch_cap()
        self.pipe = None

    def _engine_batch_cap(self) -> int | None:
        """A TensorRT engine set's largest batch (its optimisation profile); None elsewhere."""
        b = self.backend
        if b.engine != "tensorrt":
            return None
        engines = self.bundle.manifest.engines
        if b.compute not in engines:
            raise InputError(f"no {b.compute} TensorRT engines in {self.model}: run tiue-export build-trt BUNDLE --precision {b.compute}")
        return int(engines[b.compute]["batch_profile"]["max"])

    def load(self) -> "BundleGenerator":
        if self.pipe is None:
            from .runtime import Pipeline

            o = self.options
            self.pipe = Pipeline(self.bundle, self.backend, threads=o.threads, low_memory=o.low_memory, vae=o.vae)
        return self

    def sample(self, prompts, seeds):
        return self.load().pipe(prompts, seeds=seeds)

    @property
    def provider(self) -> str:
        return self.load().pipe.provider

    def metadata(self, provider: str | None = None, vae: str | None = None) -> dict:
        pipe = self.load().pipe
        vae = self.options.vae if vae is None else vae
        return {
            "model": self.model,
            "sampler": "one-pass",
            "backend": self.backend.engine,
            "precision": pipe.precision,
            "k": pipe.manifest.k,
            "noise": self.options.noise,
            **({"vae": vae} if vae != "full" else {}),  # full-VAE PNGs stay as every runtime writes them
            "provider": provider if provider is not None else pipe.provider,
        }

    def describe(self) -> dict:
        pipe = self.load().pipe
        pipe.runner("unet_encoder")  # one graph open, so that the precision and provider are the real ones
        return {"sampler": "one-pass", "guidance": None, "k": self.bundle.k, "precision": pipe.precision, "provider": pipe.provider}

    def label(self) -> str:
        return f"{self.backend.name} {self.pipe.provider}, one-pass"

    def close(self) -> None:
        if self.pipe is not None:
            self.pipe.close()


def open_generator(options: GenerateOptions) -> Generator:
    """The generator of ``options``: the model resolved and checked, loaded on first use."""
    return TorchGenerator(options) if options.engine == "torch" else BundleGenerator(options)


# -- infer: prompts to PNG files ----------------------------------------------------------------
@dataclass(frozen=True)
class InferConfig:
    """``tiue-export infer``: the images (prompts x seeds), where they go, and how to draw them."""

    prompts: tuple[str, ...]
    options: GenerateOptions = field(default_factory=GenerateOptions)
    seed: int = 0
    num_images: int = 1
    batch_size: int = 4
    out: str = "outputs"
    overwrite: bool = False

    def __post_init__(self):
        check_seed_range(self.seed, self.num_images)
        for prompt in self.prompts:
            check_prompt(prompt)

    @property
    def jobs(self) -> list[tuple[str, int]]:
        return [(p, self.seed + j) for p in self.prompts for j in range(self.num_images)]


def stage_summary(totals: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in totals.items())


def write_images(gen: Generator, jobs, paths, batch_size: int, wrote: Callable[[Path], None] = lambda path: None) -> dict[str, float]:
    """Draw ``jobs`` (prompt, seed) in batches and write one PNG per image, its text metadata
    from the generator; returns the summed stage seconds."""
    from .files import write_png

    totals: dict[str, float] = {}
    batch_size = gen.batch_size(batch_size)
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        result = gen.sample([p for p, _ in chunk], [s for _, s in chunk])
        for key, v in result.timings.items():
            totals[key] = totals.get(key, 0.0) + v
        meta = gen.metadata(result.provider)
        for (prompt, s), image, path in zip(chunk, result.images, paths[start : start + batch_size]):
            write_png(path, image, png_metadata(meta, prompt, s))
            wrote(path)
    return totals


def infer(cfg: InferConfig, wrote: Callable[[Path], None] = lambda path: None) -> str:
    """Draw every image of ``cfg`` into its file; returns a one-line summary with stage times."""
    jobs = cfg.jobs
    with open_generator(cfg.options) as gen:
        paths = output_paths(cfg.out, jobs, gen.recipe(), cfg.overwrite)
        gen.load()
        totals = write_images(gen, jobs, paths, cfg.batch_size, wrote)
        return f"{len(jobs)} image(s) from {gen.model} [{gen.label()}]: {stage_summary(totals)}"
