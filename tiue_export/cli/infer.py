"""``tiue-export infer``: prompts in, PNGs out, with per-stage timings."""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from pathlib import Path

import click

from ..backends import ENGINES, REGISTRY, resolve
from ..errors import InputError
from .types import COUNT, FINITE, SEED, SEED_MAX, compile_option, torch_device_options

log = logging.getLogger("tiue_export")


def read_prompts(prompts: tuple[str, ...], prompts_file: str | None) -> list[str]:
    out = list(prompts)
    if prompts_file:
        from ..files import read_text

        out += [line.strip() for line in read_text(prompts_file, "prompts file").splitlines() if line.strip()]
    if not out:
        raise InputError("no prompt given: use --prompt TEXT or --prompts-file FILE")
    return out


def _slug(text: str, n: int = 40) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:n] or "image"


def generate(jobs, paths, batch_size: int, sample, meta) -> dict[str, float]:
    """Sample ``jobs`` (prompt, seed) in batches with ``sample(prompts, seeds) -> result`` and write
    one PNG per image, its text metadata from ``meta(result)``; returns summed stage seconds."""
    from .. import __version__
    from ..files import write_png

    totals: dict[str, float] = {}
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        result = sample([p for p, _ in chunk], [s for _, s in chunk])
        for key, v in result.timings.items():
            totals[key] = totals.get(key, 0.0) + v
        for (prompt, s), image, path in zip(chunk, result.images, paths[start : start + batch_size]):
            info = {"prompt": prompt, "seed": s, **meta(result), "software": f"tiue-export {__version__}"}
            write_png(path, image, info)
            click.echo(f"wrote {path}")
    return totals


def stage_summary(totals: dict[str, float]) -> str:
    return ", ".join(f"{k} {v * 1000:.1f} ms" for k, v in totals.items())


#: Image suffixes infer does not write (it writes PNG): ``--out x.jpg`` is refused, not made a directory.
NOT_PNG = (".jpg", ".jpeg", ".webp", ".bmp", ".gif", ".tif", ".tiff", ".ppm", ".npy")


def recipe_digest(recipe: dict, prompt: str, seed: int) -> str:
    """8 hex digits of sha256 over what made one image (model, sampler, backend, precision, size,
    noise, prompt, seed): two images share a file name only if they are the same image."""
    import hashlib
    import json

    text = json.dumps({**recipe, "prompt": prompt, "seed": seed}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def output_paths(out: str, jobs: list[tuple[str, int]], recipe: dict | None = None, overwrite: bool = False) -> list[Path]:
    """One PNG per (prompt, seed): ``out`` itself if it ends in .png and there is one image (an
    existing file is replaced only with ``overwrite``), else files named
    ``NNN-prompt-slug-sSEED-DIGEST.png`` inside the directory ``out``, DIGEST from
    :func:`recipe_digest` (a file of that name holds the same image, so it is replaced)."""
    from ..files import writable_dir

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
    return [path / f"{i:03d}-{_slug(p)}-s{s}-{recipe_digest(recipe, p, s)}.png" for i, (p, s) in enumerate(jobs)]


@dataclass(frozen=True)
class InferConfig:
    """Everything ``infer`` needs, checked before any model loads."""

    prompts: tuple[str, ...]
    model: str | None = None
    backend: str = "torch"
    precision: str | None = None
    sampler: str | None = None
    guidance: float | None = None
    k: int | None = None
    seed: int = 0
    num_images: int = 1
    batch_size: int = 4
    height: int | None = None
    width: int | None = None
    noise: str = "numpy"
    out: str = "outputs"
    low_memory: bool = False
    overwrite: bool = False
    vae: str = "full"  # tiny: the distilled tiny decoder (a bundle's tiny variant of vae_decoder)
    device: str | None = None  # torch: cpu, cuda[:N], auto
    dtype: str | None = None  # torch: fp32, fp16, bf16
    compile_mode: str = "none"  # torch: eager, a torch.compile mode, or cuda-graphs

    def __post_init__(self):
        if self.seed + self.num_images - 1 > SEED_MAX:
            raise InputError(f"--seed {self.seed} with --num-images {self.num_images} passes the largest seed, {SEED_MAX}")

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

    @property
    def jobs(self) -> list[tuple[str, int]]:
        return [(p, self.seed + j) for p in self.prompts for j in range(self.num_images)]


@click.command("infer")
@click.option("--prompt", "prompts", multiple=True, help="Prompt (repeatable).")
@click.option("--prompts-file", type=click.Path(), help="Text file, one prompt per line.")
@click.option("--model", type=click.Path(), help="Model directory or bundle [default: the built-in model].")
@click.option(
    "--backend",
    type=click.Choice(list(ENGINES) + [n for n in REGISTRY if n not in ENGINES]),
    default="torch",
    show_default=True,
    help="torch: a model directory; onnxruntime / openvino: an exported bundle (no torch needed); tensorrt: a bundle's "
    "engines; or a registry name such as openvino-int8.",
)
@click.option(
    "--precision",
    type=click.Choice(["fp32", "fp16", "bf16", "int8"]),
    default=None,
    help="Bundle graphs to run: int8 = the Q/DQ graphs of tiue-export calibrate; with tensorrt, which engines; with "
    "openvino, fp32/bf16/fp16 = the compute precision [default: the bundle's own / its only engines / the CPU's "
    "default, bf16 on CPUs with bf16 units].",
)
@click.option("--sampler", default=None, help="one-pass | loop | ddim:N  [default: one-pass; ddim:50 for a teacher]")
@click.option("--guidance", type=FINITE, default=None, help="CFG scale of the ddim:N sampler [default: the model's, else 7.5].")
@click.option("--k", type=click.IntRange(1, 1000), default=None, help="Override the number of decoder timesteps.")
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of the first image; image j uses seed+j.")
@click.option("--num-images", type=click.IntRange(1, 10000), default=1, show_default=True, help="Images per prompt.")
@click.option("--batch-size", type=click.IntRange(1, 1024), default=4, show_default=True)
@click.option("--height", type=COUNT, default=None, help="Image height [default: the model's].")
@click.option("--width", type=COUNT, default=None, help="Image width [default: the model's].")
@click.option(
    "--noise",
    type=click.Choice(["numpy", "torch"]),
    default="numpy",
    show_default=True,
    help="z_T source: numpy (same on every backend) or torch (torch.Generator per image, as the authors' script).",
)
@click.option("--out", default="outputs", show_default=True, help="Output directory, or FILE.png for one image.")
@click.option("--overwrite", is_flag=True, help="Replace an existing --out FILE.png.")
@click.option(
    "--low-memory",
    is_flag=True,
    help="onnxruntime / openvino: hold one graph at a time (peak = the largest graph and its activations, not all of "
    "them); each batch pays the graphs' load time.",
)
@torch_device_options
@compile_option
@click.option("--vae", default="full", show_default=True, help="full, or tiny: the distilled tiny decoder (a bundle's tiny variant; "
              "torch: the model's distill-vae decoder, or a distill-vae directory).")
def infer(prompts, prompts_file, **options):
    """Generate images from prompts with the one-pass sampler (or a reference sampler)."""
    cfg = InferConfig(prompts=tuple(read_prompts(prompts, prompts_file)), **options)
    engine = REGISTRY[cfg.backend].engine if cfg.backend in REGISTRY else cfg.backend
    if cfg.low_memory and engine not in ("onnxruntime", "openvino"):
        raise InputError(f"--low-memory is for the onnxruntime and openvino backends, not {cfg.backend}")
    if engine != "torch":
        return infer_bundle(cfg)
    return infer_torch(cfg)


def infer_torch(cfg: InferConfig) -> None:
    """``--backend torch``: the PyTorch reference on a model directory."""
    if cfg.precision not in (None, "fp32"):
        raise InputError(f"--precision {cfg.precision} runs a bundle: use --backend onnxruntime, openvino or tensorrt")
    from . import quiet_libraries

    quiet_libraries()
    import torch

    from ..device import parse_device, parse_dtype
    from ..models import resolve_model
    from ..pipeline import Sampler, load_pipeline

    jobs = cfg.jobs
    model_path = resolve_model(cfg.model)
    paths = output_paths(cfg.out, jobs, cfg.recipe(str(Path(model_path).resolve())), cfg.overwrite)
    device = parse_device(cfg.device)
    dtype = parse_dtype(cfg.dtype, device)
    sampler = Sampler.parse(cfg.sampler or "one-pass")
    if cfg.compile_mode != "none" and sampler.kind != "one-pass":
        raise InputError(f"--compile speeds up the one-pass sampler's UNet graphs; --sampler {sampler} runs eager")
    pipe = load_pipeline(model_path, k=cfg.k, vae=cfg.vae, device=device, dtype=dtype, compile=cfg.compile_mode)
    sampler = Sampler.parse(cfg.sampler or pipe.default_sampler)
    if cfg.compile_mode != "none" and sampler.kind != "one-pass":
        raise InputError(f"--compile speeds up the one-pass sampler's UNet graphs; this model's sampler is {sampler}")
    guidance = pipe.default_guidance if cfg.guidance is None else cfg.guidance
    pipe.latent_shape(cfg.height, cfg.width)  # validate the size before any work
    meta = {"model": str(model_path), "sampler": str(sampler), "backend": "torch", "k": pipe.schedule.k, "noise": cfg.noise, **cfg.vae_metadata}
    if pipe.device.type != "cpu" or pipe.unet.dtype != torch.float32 or pipe.compile != "none":
        meta["provider"] = pipe.provider  # e.g. PyTorch cuda:0 float16 cuda-graphs
    if sampler.kind == "ddim":
        meta["guidance"] = guidance

    def sample(prompts, seeds):
        return pipe.sample(prompts, seeds, sampler, guidance, cfg.height, cfg.width, noise_source=cfg.noise)

    totals = generate(jobs, paths, cfg.batch_size, sample, lambda result: meta)
    click.echo(f"{len(jobs)} image(s) from {model_path} [torch, {sampler}]: {stage_summary(totals)}")


def bundle_identity(bundle) -> str:
    """A bundle's path and the sha256 of its manifest (which holds every graph's sha256)."""
    import hashlib

    digest = hashlib.sha256((Path(bundle.path) / "manifest.json").read_bytes()).hexdigest()[:16]
    return f"{Path(bundle.path).resolve()}@{digest}"


def infer_bundle(cfg: InferConfig) -> None:
    """A bundle on a registry backend (ONNX Runtime, OpenVINO, TensorRT): the torch-free runtime."""
    from ..bundle import Bundle
    from ..runtime import Pipeline

    if not cfg.model:
        raise InputError(f"--backend {cfg.backend} needs --model BUNDLE (make one with tiue-export export)")
    if cfg.device is not None or cfg.dtype is not None:
        raise InputError(f"--device and --dtype are for --backend torch; a bundle's device comes with its backend ({cfg.backend})")
    if cfg.compile_mode != "none":
        raise InputError(f"--compile is for --backend torch; {cfg.backend} compiles the bundle's graphs itself")
    if cfg.sampler not in (None, "one-pass"):
        raise InputError(f"--backend {cfg.backend} runs the one-pass sampler only, not {cfg.sampler!r}")
    if cfg.k is not None:
        raise InputError("--k cannot change a bundle: K is fixed when it is exported")
    if cfg.noise != "numpy":
        raise InputError("--noise torch needs --backend torch (the runtime draws z_T with numpy)")
    if cfg.guidance is not None:
        raise InputError("--guidance is for ddim:N on the torch backend; a bundle's one-pass sampler has no guidance")
    jobs = cfg.jobs
    bundle = Bundle.open(cfg.model)
    paths = output_paths(cfg.out, jobs, cfg.recipe(bundle_identity(bundle)), cfg.overwrite)
    backend = resolve(cfg.backend, cfg.precision, bundle.manifest)
    size = bundle.manifest.image
    asked = (cfg.height or size[0], cfg.width or size[1])
    if asked != size:
        raise InputError(f"{cfg.model} was exported for {size[0]}x{size[1]} images, not {asked[0]}x{asked[1]}: re-export it")
    batch_size = cfg.batch_size
    if backend.engine == "tensorrt":
        batch_size = min(batch_size, int(bundle.manifest.engines[backend.compute]["batch_profile"]["max"]))
    with Pipeline(bundle, backend, low_memory=cfg.low_memory, vae=cfg.vae) as pipe:
        meta = {
            "model": str(cfg.model),
            "sampler": "one-pass",
            "backend": backend.engine,
            "precision": pipe.precision,
            "k": pipe.manifest.k,
            "noise": cfg.noise,
            **cfg.vae_metadata,
        }

        def sample(prompts, seeds):
            return pipe(prompts, seeds=seeds)

        totals = generate(jobs, paths, batch_size, sample, lambda result: {**meta, "provider": result.provider})
        click.echo(f"{len(jobs)} image(s) from {cfg.model} [{backend.name} {pipe.provider}, one-pass]: {stage_summary(totals)}")
