"""``tiue-export distill-vae``: a tiny VAE decoder (diffusers' ``AutoencoderTiny``) for a model's own VAE.

The tiny decoder learns to reproduce the model's full VAE decoder, image for image: each step
draws latents, decodes them with the frozen full decoder, and moves the tiny decoder's output
towards that image (pixel MSE, the quantity PSNR measures). The latents are the model's VAE
encoder posterior on training images (a folder, or renders of the toy domain for the toy models),
or, for any other model without ``--images`` and for a toy model given ``--prompts``, the z0 the
model itself samples (its default sampler over ``--prompts``): exactly what its tiny decoder will
decode.

The latent contract is the full ``vae_decoder`` graph's: the tiny decoder takes ``z0`` exactly as
the UNet makes it (the VAE's ``scaling_factor`` applied) and gives images in [-1, 1]. Its config
therefore says ``scaling_factor: 1.0``, so that ``vae.decode(z0 / vae.config.scaling_factor)``,
which every pipeline writes, decodes ``z0`` itself. (TAESD's ``latent_magnitude``/``latent_shift``
only concern its encoder's uint8 packing, which is not used.) Only the decoder is trained; the
encoder half that ``AutoencoderTiny`` always has is a minimal, untrained placeholder.

Runs alone or under ``accelerate launch`` (DDP averages the gradients, each rank draws its own
latents); checkpoints continue bit-for-bit with ``--resume``, as ``distill``'s do.
"""

from __future__ import annotations

import json
import logging
import math
import shutil
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch

from .. import __version__
from ..errors import InputError, ModelError
from ..files import atomic_path, sha256_of_weights, write_json
from ..reference.builtin import ASSETS, resolve_model
from .config import MIXED_PRECISION, DistillConfig
from .train import checkpoint_dirs, make_accelerator, trim_log

log = logging.getLogger("tiue_export")

#: What the saved directory records about its origin, beside AutoencoderTiny's config.json.
RECORD = "distill_vae.json"
CHECKPOINTS, LOG_FILE, CONFIG_FILE, POOL_FILE = "checkpoints", "log.jsonl", "config.json", "latents.pt"
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
#: The shipped toy VAE (shared by the toy teacher and student): models with it can train on renders.
TOY_VAE = ASSETS / "toy-teacher" / "vae"
#: Renders of the held-out split measured at the end (PSNR of tiny vs full on held-out latents).
EVAL_IMAGES = 256
#: Fields a resume may change (they do not change the maths).
RESUMABLE_CHANGES = ("checkpoint_every", "keep_checkpoints", "out", "run_dir")


@dataclass(frozen=True)
class VaeDistillConfig:
    """Everything ``tiue-export distill-vae`` needs; written beside every checkpoint."""

    out: str  # the AutoencoderTiny directory written at the end
    model: str | None = None  # a diffusers pipeline directory (its vae/); None: the built-in model
    run_dir: str | None = None  # checkpoints, log, config, latent pool; None: "<out>.run"
    images: str | None = None  # a folder of training images; None: toy-domain renders (toy VAE without --prompts), else the model's own samples
    samples: int = 4096  # toy renders or model samples in the latent pool (ignored with --images)
    prompts: str | None = None  # prompts the model samples from (one a line); given, the toy VAE too learns the model's z0; None: the shipped calibration prompts

    # -- the tiny decoder: AutoencoderTiny's decoder; all stages share one width (DecoderTiny's rule)
    width: int = 64  # TAESD's 64 channels; the shipped toy decoder uses 48 (64x64 images)
    blocks: tuple[int, ...] | None = None  # AutoencoderTinyBlocks per stage; None: TAESD's (3, 3, 3, 1) cut to the VAE's upsamplings

    # -- optimisation: Adam with a linear warm-up and a cosine decay to 0 at the last step
    steps: int = 2000
    batch_size: int = 16  # latents per device and step
    lr: float = 1e-3  # a small conv net from scratch takes Adam's usual 1e-3
    lr_warmup_steps: int = 50
    mixed_precision: str = "no"  # bf16 halves a CPU step on AMX machines; the weights stay fp32
    checkpoint_every: int = 250
    keep_checkpoints: int = 2
    seed: int = 0  # init, pool renders, batch draws and posterior noise
    log_tensorboard: bool = False  # make_accelerator's switch; distill-vae logs to log.jsonl only

    def __post_init__(self):
        checks = [
            (self.samples >= 1, f"--samples must be >= 1, got {self.samples}"),
            (not (self.images and self.prompts), "--prompts is for sampling the model's own latents: drop it with --images"),
            (self.width >= 1, f"--width must be >= 1, got {self.width}"),
            (self.blocks is None or (len(self.blocks) >= 1 and min(self.blocks) >= 0), f"--blocks must be counts >= 0, got {self.blocks}"),
            (self.steps >= 1, f"--steps must be >= 1, got {self.steps}"),
            (self.batch_size >= 1, f"--batch-size must be >= 1, got {self.batch_size}"),
            (self.lr > 0, f"--lr must be > 0, got {self.lr}"),
            (self.lr_warmup_steps >= 0, f"--lr-warmup-steps must be >= 0, got {self.lr_warmup_steps}"),
            (self.mixed_precision in MIXED_PRECISION, f"--mixed-precision must be one of {', '.join(MIXED_PRECISION)}"),
            (self.checkpoint_every >= 1, f"--checkpoint-every must be >= 1, got {self.checkpoint_every}"),
            (self.keep_checkpoints >= 0, f"--keep-checkpoints must be >= 0, got {self.keep_checkpoints}"),
        ]
        bad = next((message for ok, message in checks if not ok), None)
        if bad:
            raise InputError(bad)

    run_path = DistillConfig.run_path  # "<out>.run" unless --run-dir, as distill's

    def to_dict(self) -> dict:
        d = asdict(self)
        d["blocks"] = list(self.blocks) if self.blocks is not None else None
        return d

    @classmethod
    def from_dict(cls, data: dict) -> VaeDistillConfig:
        data = dict(data)
        if data.get("blocks") is not None:
            data["blocks"] = tuple(data["blocks"])
        return cls(**data)

    def differences(self, other: VaeDistillConfig) -> list[str]:
        a, b = self.to_dict(), other.to_dict()
        return [k for k in a if k not in RESUMABLE_CHANGES and a[k] != b[k]]


# -- pure pieces ----------------------------------------------------------------------------------
def lr_at(step: int, cfg: VaeDistillConfig) -> float:
    """Learning rate of step ``step`` (0-based): linear warm-up, then cosine decay to 0 at ``cfg.steps``."""
    if step < cfg.lr_warmup_steps:
        return cfg.lr * (step + 1) / cfg.lr_warmup_steps
    span = max(1, cfg.steps - cfg.lr_warmup_steps)
    return cfg.lr * 0.5 * (1 + math.cos(math.pi * (step - cfg.lr_warmup_steps) / span))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two image batches in [-1, 1] (peak-to-peak 2), over all pixels, after clipping as the pipeline does."""
    mse = (a.clamp(-1, 1) - b.clamp(-1, 1)).double().pow(2).mean().item()
    return float("inf") if mse == 0 else 10 * math.log10(4.0 / mse)


def tiny_config(cfg: VaeDistillConfig, vae_config) -> dict:
    """``AutoencoderTiny`` kwargs for a VAE: as many upsamplings as its decoder, z0 in, [-1, 1] out."""
    ups = len(vae_config.block_out_channels) - 1
    blocks = tuple(cfg.blocks) if cfg.blocks is not None else (3,) * ups + (1,)
    if len(blocks) != ups + 1:
        raise InputError(f"--blocks needs {ups + 1} stages for this VAE ({ups} upsamplings, x{2 ** ups}), got {len(blocks)}")
    return {
        "in_channels": int(vae_config.out_channels),
        "out_channels": int(vae_config.out_channels),
        "latent_channels": int(vae_config.latent_channels),
        "decoder_block_out_channels": (cfg.width,) * len(blocks),
        "num_decoder_blocks": blocks,
        # the encoder half is untrained and kept minimal: (8 channels, no blocks) x the same downsamplings
        "encoder_block_out_channels": (8,) * len(blocks),
        "num_encoder_blocks": (0,) * len(blocks),
        "scaling_factor": 1.0,  # takes z0 itself: see the module docstring
        "shift_factor": 0.0,
    }


def build_tiny(cfg: VaeDistillConfig, vae_config, seed: int):
    """A freshly initialised ``AutoencoderTiny`` (fp32) for ``vae_config``."""
    from diffusers import AutoencoderTiny

    torch.manual_seed(seed)
    return AutoencoderTiny(**tiny_config(cfg, vae_config))


# -- data -----------------------------------------------------------------------------------------
def is_toy_vae(vae_dir: Path) -> bool:
    return TOY_VAE.is_dir() and sha256_of_weights(vae_dir) == sha256_of_weights(TOY_VAE)


def image_files(folder: Path) -> list[Path]:
    """The image files of ``--images``, sorted by name; a one-line error when there are none."""
    if not folder.is_dir():
        raise InputError(f"--images {folder} is not a directory")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise InputError(f"--images {folder} holds no images ({', '.join(IMAGE_SUFFIXES)})")
    return files


def folder_images(folder: Path, resolution: int) -> np.ndarray:
    """Every image of a folder (sorted by name), RGB, centre-cropped square and resized: N x H x W x 3 uint8."""
    from PIL import Image, UnidentifiedImageError

    files = image_files(folder)
    out = np.zeros((len(files), resolution, resolution, 3), np.uint8)
    for i, p in enumerate(files):
        try:
            with Image.open(p) as im:
                im = im.convert("RGB")
                s = min(im.size)
                left, top = (im.width - s) // 2, (im.height - s) // 2
                out[i] = np.asarray(im.crop((left, top, left + s, top + s)).resize((resolution, resolution), Image.BICUBIC))
        except (UnidentifiedImageError, OSError) as exc:
            raise InputError(f"--images: cannot read {p} ({exc})") from exc
    return out


@torch.no_grad()
def encode_pool(vae, images: np.ndarray, batch: int = 64) -> dict[str, torch.Tensor]:
    """The VAE encoder's posterior (mean, std) of every image, on the CPU."""
    from ..toy.teacher import images_to_tensor

    means, stds = [], []
    for start in range(0, len(images), batch):
        post = vae.encode(images_to_tensor(images[start : start + batch]).to(vae.device)).latent_dist
        means.append(post.mean.float().cpu())
        stds.append(post.std.float().cpu())
    if not means:  # no held-out images: a folder of fewer than 10
        return {"mean": torch.empty(0), "std": torch.empty(0)}
    return {"mean": torch.cat(means), "std": torch.cat(stds)}


def training_images(cfg: VaeDistillConfig, vae_dir: Path, resolution: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``(train, held_out, source)``: images to learn from and to measure on, and what they are."""
    if cfg.images:
        images = folder_images(Path(cfg.images), resolution)
        n_eval = len(images) // 10 if len(images) >= 10 else 0  # the last tenth, by name, is held out
        source = f"{len(images)} images of {Path(cfg.images).resolve()}"
        return images[: len(images) - n_eval], images[len(images) - n_eval :], source
    from ..toy import domain

    train, _ = domain.sample_dataset(cfg.samples, seed=cfg.seed, split="train", resolution=resolution)
    held, _ = domain.sample_dataset(EVAL_IMAGES, seed=cfg.seed + 1, split="heldout", resolution=resolution)
    return train, held, f"{cfg.samples} toy-domain renders (train split, seed {cfg.seed})"


#: Prompts a model samples from for ``--samples`` when no ``--prompts`` is given.
DEFAULT_PROMPTS = Path(__file__).resolve().parent.parent / "calibration" / "prompts.txt"


def sample_prompts(cfg: VaeDistillConfig) -> tuple[Path, list[str]]:
    """The file ``--samples`` draws its prompts from and its prompts (blank lines skipped)."""
    from ..files import read_text

    prompts_file = Path(cfg.prompts) if cfg.prompts else DEFAULT_PROMPTS
    prompts = [line.strip() for line in read_text(prompts_file, "prompts file").splitlines() if line.strip()]
    if not prompts:
        raise InputError(f"--prompts {prompts_file} holds no prompt")
    return prompts_file, prompts


@torch.no_grad()
def sample_pool(cfg: VaeDistillConfig, model: Path, scaling: float, batch: int = 4) -> dict:
    """The model's own z0 for ``cfg.samples`` (prompt, seed) pairs, as a posterior pool of zero
    spread (mean ``z0 / scaling``, std 0): training then decodes exactly what the model's sampler
    makes. Prompts cycle through ``cfg.prompts`` (default :data:`DEFAULT_PROMPTS`), seeds count
    from ``cfg.seed``; the last tenth (of 10 or more) is held out."""
    from tqdm.auto import tqdm

    from ..reference.pipeline import load_pipeline

    prompts_file, prompts = sample_prompts(cfg)
    pipe = load_pipeline(model)
    jobs = [(prompts[i % len(prompts)], cfg.seed + i) for i in range(cfg.samples)]
    log.info("sampling %d latents with %s's %s sampler (prompts from %s)", len(jobs), model.name, pipe.default_sampler, prompts_file)
    z0 = []
    for start in tqdm(range(0, len(jobs), batch), desc="sampling z0", unit="batch", dynamic_ncols=True):
        chunk = jobs[start : start + batch]
        z0.append(torch.from_numpy(pipe.sample([p for p, _ in chunk], [s for _, s in chunk], pipe.default_sampler, pipe.default_guidance).latents))
    mean = torch.cat(z0).float() / scaling
    n_eval = len(jobs) // 10 if len(jobs) >= 10 else 0
    pool = {"mean": mean, "std": torch.zeros_like(mean)}
    split = len(jobs) - n_eval
    source = f"{len(jobs)} samples of the model ({pipe.default_sampler}, prompts from {prompts_file}, seeds {cfg.seed}..{cfg.seed + len(jobs) - 1})"
    return {"train": {k: v[:split] for k, v in pool.items()}, "held_out": {k: v[split:] for k, v in pool.items()}, "source": source}


# -- checkpoints ----------------------------------------------------------------------------------
def save_checkpoint(path: Path, cfg: VaeDistillConfig, decoder, opt, step: int, world: int) -> Path:
    """A checkpoint directory, atomically (main process): decoder weights, Adam state, config, step.

    No RNG state is needed: each step's draws come from a generator seeded by (seed, rank, step).
    """
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        tmp.mkdir()
        save_file({k: v.detach().cpu().contiguous() for k, v in decoder.state_dict().items()}, tmp / "decoder.safetensors")
        torch.save(opt.state_dict(), tmp / "optimizer.pt")
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
        (tmp / "state.json").write_text(json.dumps({"step": step, "world_size": world}) + "\n")
    return path


def load_checkpoint(path: Path, decoder, opt, world: int) -> int:
    """Restore a checkpoint into the (unwrapped) decoder and its optimiser; returns its step."""
    from safetensors.torch import load_file

    state = json.loads((path / "state.json").read_text())
    if state["world_size"] != world:
        raise InputError(f"{path} was written by {state['world_size']} process(es) but this run has {world}: resume with the same number")
    decoder.load_state_dict(load_file(path / "decoder.safetensors"))
    opt.load_state_dict(torch.load(path / "optimizer.pt", weights_only=True))
    return int(state["step"])


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The generator of one rank's step: batches and noise depend on (seed, rank, step) only."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence([seed, rank, step]).generate_state(1)[0]))


def check_resume(cfg: VaeDistillConfig, ckpts: list[Path], resume: bool) -> None:
    run, out = cfg.run_path, Path(cfg.out)
    if ckpts and not resume:
        raise InputError(f"{run} holds checkpoints of an earlier run: pass --resume to continue it, or choose another --out")
    if out.exists():
        raise InputError(f"--out {out} already exists: choose a new directory")
    if resume and not (run / CONFIG_FILE).exists():
        raise InputError(f"--resume: {run} holds no run to continue: drop --resume to start one")
    if resume:
        changed = VaeDistillConfig.from_dict(json.loads((run / CONFIG_FILE).read_text())).differences(cfg)
        if changed:
            raise InputError(f"--resume with different options ({', '.join(changed)}): use the original ones")


def load_or_encode_pool(cfg: VaeDistillConfig, vae, vae_dir: Path, resolution: int, main: bool, accelerator) -> tuple[dict, dict, str]:
    """The run's latent pools (train, held out), encoded once by the main process and kept in the run directory."""
    path = cfg.run_path / POOL_FILE
    if main and not path.exists():
        if cfg.images or (is_toy_vae(vae_dir) and not cfg.prompts):  # --prompts: the model's own z0, toy VAE too
            train, held, source = training_images(cfg, vae_dir, resolution)
            log.info("encoding %s with the model's VAE encoder", source)
            pools = {"train": encode_pool(vae, train), "held_out": encode_pool(vae, held), "source": source}
        else:
            pools = sample_pool(cfg, vae_dir.parent, float(vae.config.scaling_factor))
        with atomic_path(path) as tmp:
            torch.save(pools, tmp)
    accelerator.wait_for_everyone()
    pool = torch.load(path, weights_only=True)
    return pool["train"], pool["held_out"], pool["source"]


# -- the run --------------------------------------------------------------------------------------
@dataclass
class VaeDistillResult:
    out: Path
    steps: int
    psnr_held_out: float | None
    is_main: bool = True


def posterior_z0(pool: dict, idx: torch.Tensor, scaling: float, generator: torch.Generator) -> torch.Tensor:
    """``z0 = scaling_factor * (mean + std * noise)``: a posterior sample, as the UNet's latents are scaled."""
    mean, std = pool["mean"][idx], pool["std"][idx]
    return scaling * (mean + std * torch.randn(mean.shape, generator=generator))


@torch.no_grad()
def held_out_psnr(tiny, vae, pool: dict, scaling: float, seed: int, device, batch: int = 64) -> float | None:
    """PSNR of the tiny decode against the full decode on the held-out latents (fixed noise), fp32."""
    n = pool["mean"].shape[0]
    if n == 0:
        return None
    g = torch.Generator().manual_seed(seed)
    fulls, tinys = [], []
    for start in range(0, n, batch):
        z0 = posterior_z0(pool, torch.arange(start, min(n, start + batch)), scaling, g).to(device)
        fulls.append(vae.decode(z0 / scaling).sample.float().cpu())
        tinys.append(tiny.decode(z0).sample.float().cpu())
    return psnr(torch.cat(tinys), torch.cat(fulls))


def save_tiny(out: Path, tiny, record: dict) -> Path:
    """The AutoencoderTiny directory (config.json + safetensors) and its record, atomically."""
    with atomic_path(out) as tmp:
        tiny.save_pretrained(tmp, safe_serialization=True)
        (tmp / RECORD).write_text(json.dumps(record, indent=2) + "\n")
    return out


def load_vae(vae_dir: Path):
    """The model's own VAE, frozen: the teacher of the tiny decoder."""
    from diffusers import AutoencoderKL

    try:
        return AutoencoderKL.from_pretrained(vae_dir).eval().requires_grad_(False)
    except (OSError, ValueError) as exc:
        raise ModelError(f"{vae_dir}: not a loadable AutoencoderKL ({str(exc).splitlines()[0]})") from exc


def train_step(cfg: VaeDistillConfig, step: int, vae, decoder, opt, pool: dict, scaling: float, accelerator, rank: int) -> float:
    """One optimisation step on a batch of pool latents: the tiny decoder's MSE to the full
    decoder's images of the same z0; returns the loss averaged over processes."""
    generator = step_generator(cfg.seed, rank, step)
    idx = torch.randint(0, pool["mean"].shape[0], (cfg.batch_size,), generator=generator)
    z0 = posterior_z0(pool, idx, scaling, generator).to(accelerator.device)
    with torch.no_grad():
        target = vae.decode(z0 / scaling).sample.float()
    for group in opt.param_groups:
        group["lr"] = lr_at(step, cfg)
    with accelerator.autocast():
        pred = decoder(z0)
    loss = torch.nn.functional.mse_loss(pred.float(), target)
    accelerator.backward(loss)
    opt.step()
    opt.zero_grad(set_to_none=True)
    return accelerator.reduce(loss.detach(), reduction="mean").item()


def log_step(run: Path, bar, cfg: VaeDistillConfig, step: int, mean_loss: float, seconds: float) -> None:
    """One line of ``log.jsonl`` and the progress bar (main process)."""
    record = {"step": step, "loss_mse": mean_loss, "psnr": 10 * math.log10(4.0 / max(mean_loss, 1e-12)), "lr": lr_at(step - 1, cfg), "seconds": seconds}
    with (run / LOG_FILE).open("a") as f:
        f.write(json.dumps(record) + "\n")
    bar.set_postfix({"mse": f"{mean_loss:.3g}", "psnr": f"{record['psnr']:.1f}"})
    bar.update(1)


def checkpoint(run: Path, cfg: VaeDistillConfig, tiny, opt, step: int, world: int) -> None:
    """Save step ``step``'s checkpoint, keeping the last ``cfg.keep_checkpoints``."""
    save_checkpoint(run / CHECKPOINTS / f"step-{step:08d}", cfg, tiny.decoder, opt, step, world)
    if cfg.keep_checkpoints:
        for old in checkpoint_dirs(run)[: -cfg.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)


def decoder_record(cfg: VaeDistillConfig, model: Path, vae, source: str, step: int, world: int, score) -> dict:
    """``distill_vae.json``: what the decoder was distilled from, on what, how long, how well."""
    return {
        "distilled_from": {
            "model": str(model),
            "vae_sha256": sha256_of_weights(model / "vae"),
            "vae_scaling_factor": float(vae.config.scaling_factor),
            "resolution": int(vae.config.sample_size),
        },
        "latents": "z0 as the UNet makes it (the VAE's scaling_factor applied): decode(z0) in [-1, 1], as the full vae_decoder graph",
        "encoder": "untrained placeholder (only the decoder is distilled)",
        "data": source,
        "steps": step,
        "processes": world,
        "held_out_psnr_db": score,
        "recipe": cfg.to_dict(),
        "software": f"tiue-export {__version__}",
    }


def train_until_done(cfg: VaeDistillConfig, step: int, tiny, vae, decoder, opt, pool, scaling: float, accelerator) -> int:
    """Train from ``step`` to ``cfg.steps`` with a progress bar and the log on the main process,
    checkpointing every ``cfg.checkpoint_every`` steps and at the end; returns the last step."""
    from tqdm.auto import tqdm

    main, rank, world = accelerator.is_main_process, accelerator.process_index, accelerator.num_processes
    run = cfg.run_path
    bar = tqdm(total=cfg.steps, initial=step, desc="distill-vae", disable=not main, dynamic_ncols=True)
    while step < cfg.steps:
        t0 = time.perf_counter()
        mean_loss = train_step(cfg, step, vae, decoder, opt, pool, scaling, accelerator, rank)
        step += 1
        if main:
            log_step(run, bar, cfg, step, mean_loss, time.perf_counter() - t0)
        if step % cfg.checkpoint_every == 0 or step == cfg.steps:
            if main:
                checkpoint(run, cfg, tiny, opt, step, world)
            accelerator.wait_for_everyone()
    bar.close()
    return step


def distill_vae(cfg: VaeDistillConfig, resume: bool = False) -> VaeDistillResult:
    """Train a tiny decoder on the model's own VAE decoder.

    Args:
        cfg: the options; ``cfg.out`` receives the ``AutoencoderTiny`` directory, ``cfg.run_path``
            the checkpoints, the latent pool, the resolved config and ``log.jsonl``.
        resume: continue from the latest checkpoint in ``cfg.run_path``.

    Returns:
        Where the decoder was written, its steps and its held-out PSNR against the full decoder.
    """
    from ..reference.pipeline import check_model_dir

    model = resolve_model(cfg.model).resolve()
    check_model_dir(model, "distill-vae takes the PyTorch model directory whose VAE decoder it distils")
    cfg = replace(cfg, model=str(model), images=str(Path(cfg.images).resolve()) if cfg.images else None)
    run, out = cfg.run_path, Path(cfg.out)
    ckpts = checkpoint_dirs(run)
    check_resume(cfg, ckpts, resume)
    if cfg.images:  # the data is checked before the run directory is made: a refusal leaves nothing
        image_files(Path(cfg.images))
    elif cfg.prompts:
        sample_prompts(cfg)
    vae = load_vae(model / "vae")
    scaling = float(vae.config.scaling_factor)
    accelerator = make_accelerator(cfg)
    main, world = accelerator.is_main_process, accelerator.num_processes
    vae.to(accelerator.device)
    tiny = build_tiny(cfg, vae.config, cfg.seed).train()
    tiny.encoder.requires_grad_(False)  # the placeholder encoder is saved, never trained
    opt = torch.optim.Adam(tiny.decoder.parameters(), lr=cfg.lr)
    decoder, opt = accelerator.prepare(tiny.decoder, opt)
    made = main and not run.exists()
    if main:
        run.mkdir(parents=True, exist_ok=True)
    try:
        pool, held, source = load_or_encode_pool(cfg, vae, model / "vae", int(vae.config.sample_size), main, accelerator)
    except BaseException:
        if made:  # an image that cannot be read, an interrupted pool: no run folder left holding nothing
            shutil.rmtree(run, ignore_errors=True)
        raise
    step = load_checkpoint(ckpts[-1], tiny.decoder, opt, world) if resume and ckpts else 0
    if main:
        write_json(run / CONFIG_FILE, cfg.to_dict())
        trim_log(run / LOG_FILE, step)
        log.info(
            "distilling %s's VAE decoder into AutoencoderTiny (width %d, blocks %s): %s, %d process(es) x batch %d, %d steps; run dir %s",
            model, cfg.width, tiny.config.num_decoder_blocks, source, world, cfg.batch_size, cfg.steps, run,
        )
    step = train_until_done(cfg, step, tiny, vae, decoder, opt, pool, scaling, accelerator)
    tiny.eval()
    score = held_out_psnr(tiny, vae, held, scaling, cfg.seed, accelerator.device) if main else None
    if main:
        save_tiny(out, tiny, decoder_record(cfg, model, vae, source, step, world, score))
        log.info("wrote the tiny decoder to %s (%d steps; held-out PSNR vs the full decoder %s dB)", out, step, "n/a" if score is None else f"{score:.2f}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return VaeDistillResult(out=out, steps=step, psnr_held_out=score, is_main=main)
