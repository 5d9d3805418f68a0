"""Train the built-in toy teacher: a small Stable Diffusion (CLIP text encoder, KL VAE, SD 2.x UNet).

Read top to bottom: :class:`TeacherConfig` holds every choice with its reason; :func:`train_teacher`
runs (a) the VAE on rendered domain images, then (b) the UNet and text encoder, jointly, with the
epsilon loss on SD 2.1-base's exact scheduler, and writes a diffusers pipeline directory that
:func:`tiue_export.reference.pipeline.load_pipeline` loads and samples with ``ddim:50``.

Training is seeded and resumable: a checkpoint (models, optimizer, EMA, RNG states, step) is
written atomically every ``checkpoint_every`` steps to the work directory, and a resumed run
equals an uninterrupted one. The final export is written atomically too.
"""

from __future__ import annotations

import json
import logging
import math
import sys
import time
from dataclasses import dataclass, field, fields, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import atomic_path
from ..reference.random_models import write_model_index
from ..schedule import SD21_SCHEDULER_CONFIG
from . import domain

log = logging.getLogger("tiue_export")

CHECKPOINT = "checkpoint.pt"
LATENTS = "latents.pt"
CONFIG_JSON = "training_config.json"


@dataclass(frozen=True)
class TeacherConfig:
    """Every choice of the toy teacher and its training, with why (saved beside every output)."""

    seed: int = 0  # everything (data, init, noise) derives from it: same seed, same weights
    threads: int = 2  # torch intra-op threads: the laptops this must train on have 2 cores
    resolution: int = 64  # image side: big enough for four shapes at two sizes, small enough for CPU
    # --- text encoder (CLIP-style, trained from scratch on the domain's captions) ---
    text_hidden: int = 64  # 25 words need no more; also the UNet's cross-attention width
    text_layers: int = 2  # two layers so words can see their neighbours ("red" binds to "triangle")
    text_heads: int = 2
    text_max_tokens: int = 16  # captions are 10 tokens with BOS/EOS; SD's 77 would be waste
    # --- VAE: 64x64x3 <-> 16x16x4 (factor 4), trained first ---
    vae_channels: tuple[int, ...] = (8, 16, 32)  # 3 levels = factor 4: at factor 8 (8x8 latents) a small shape
    # is 2 latent cells wide and even reconstructions lose it (docs/toy.md); narrow at full resolution,
    # where the cost is
    vae_layers_per_block: int = 1  # the shapes are flat colours: one resnet per level is enough
    vae_norm_groups: int = 1  # GroupNorm over all channels: per-channel groups would subtract each flat colour away
    vae_mid_attention: bool = False  # fully convolutional, so it can train on crops and run on whole images
    vae_crop: int = 32  # train on 32x32 crops around the object of 64x64 renders: 4x cheaper, same scale and edges
    vae_steps: int = 3000  # reconstructions good enough for every attribute (docs/toy.md has the numbers)
    vae_batch: int = 16  # fresh renders every step: small batches, many steps
    vae_crop_steps: int = 2200  # then whole images: GroupNorm statistics span the image, so the VAE must
    # finish on the size it runs on (crop-trained, whole-image backgrounds drift in colour)
    vae_full_batch: int = 8  # whole images cost 4 crops each
    vae_warmup: int = 50  # then cosine decay to 0: the last, small steps sharpen the edges
    vae_lr: float = 1e-3  # Adam on a small conv net from scratch (docs/toy.md)
    vae_kl_weight: float = 1e-6  # as SD's VAE: a hint of KL keeps latents bounded, reconstructions sharp
    vae_logvar_init: float = -6.0  # start with little posterior noise: at the default (std 1) a fresh
    # decoder sees mostly noise and learns blurry averages for hundreds of steps
    # --- UNet (SD 2.x blocks on a 16x16x4 latent) ---
    unet_channels: tuple[int, ...] = (32, 64, 128)  # 16x16, 8x8, 4x4 (+ cross-attention mid block); 3.2M parameters
    unet_down_blocks: tuple[str, ...] = ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D")  # SD 2.x:
    # attention above, plain below
    unet_up_blocks: tuple[str, ...] = ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D")
    unet_layers_per_block: int = 1  # depth costs CPU time linearly; width buys more here
    unet_head_dim: tuple[int, ...] = (2, 4, 8)  # heads per level (diffusers' attention_head_dim): 16-dim heads
    # --- joint UNet + text-encoder training ---
    latent_pool: int = 12000  # rendered, encoded once (~60 images per caption); the VAE encoder is not rerun per step
    unet_steps: int = 4000  # about 40 minutes on 2 cores
    unet_batch: int = 48
    unet_lr: float = 1e-3  # high for a short run on a small net; warmup, clipping and cosine decay keep it stable
    unet_warmup: int = 200
    caption_dropout: float = 0.1  # empty prompt 10% of the time: the unconditional branch of CFG
    snr_gamma: float = 5.0  # Min-SNR weighting (Hang et al. 2023): converges faster than plain epsilon MSE
    ema_decay: float = 0.999  # with warmup; averages the last ~1000 steps of a short, noisy run
    # --- bookkeeping ---
    checkpoint_every: int = 250  # ~2 minutes of work lost at most on an interruption
    guidance: float = 5.0  # the CFG scale recommended for sampling (written to provenance)

    def to_dict(self) -> dict:
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v) for f in fields(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "TeacherConfig":
        names = {f.name for f in fields(cls)}
        unknown = set(data) - names
        if unknown:
            raise InputError(f"unknown teacher config keys: {', '.join(sorted(unknown))}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()})

    @property
    def latent_size(self) -> int:
        return self.resolution // 2 ** (len(self.vae_channels) - 1)


def read_config(path) -> TeacherConfig:
    """A :class:`TeacherConfig` from a JSON file (``training_config.json`` of a trained teacher)."""
    from ..files import read_text

    try:
        data = json.loads(read_text(path, "--config file"))
    except ValueError as exc:
        raise InputError(f"--config {path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict):
        raise InputError(f"--config {path}: expected a JSON object of teacher config keys")
    return TeacherConfig.from_dict(data)


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------


def build_tokenizer(config: TeacherConfig, out_dir: Path):
    """A CLIP BPE tokenizer trained on every caption of the domain and the empty prompt, with
    reproducible ids.

    The BPE trainer numbers its initial alphabet in hash order, which changes from run to run;
    the ids are renumbered here (special tokens, then the alphabet sorted, then merges in order)
    so that the same seed gives the same embedding rows, hence the same weights.
    """
    from transformers import CLIPTokenizer

    from ..reference.tokenizer_builder import build_clip_tokenizer

    tok = build_clip_tokenizer(domain.all_captions() + [""], out_dir, vocab_size=512, model_max_length=config.text_max_tokens)
    vocab = tok.get_vocab()
    merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in json.loads(tok.backend_tokenizer.to_str())["model"]["merges"]]
    special = sorted((i, t) for t, i in vocab.items() if t in tok.all_special_tokens)
    merged = list(dict.fromkeys(a + b for a, b in merges))
    alphabet = sorted(set(vocab) - {t for _, t in special} - set(merged))
    order = [t for _, t in special] + alphabet + merged
    canonical = CLIPTokenizer(vocab={t: i for i, t in enumerate(order)}, merges=merges, model_max_length=config.text_max_tokens)
    canonical.save_pretrained(str(out_dir))
    return canonical


def build_models(config: TeacherConfig, tokenizer):
    """Fresh (text_encoder, vae, unet), initialised from the current torch seed."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.text_hidden,
            intermediate_size=4 * config.text_hidden,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=config.text_max_tokens,
            hidden_act="gelu",
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    n = len(config.vae_channels)
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=config.vae_channels,
        layers_per_block=config.vae_layers_per_block,
        latent_channels=4,
        norm_num_groups=config.vae_norm_groups,
        sample_size=config.resolution,
        mid_block_add_attention=config.vae_mid_attention,
    )
    with torch.no_grad():  # quant_conv's outputs are (mean, log-variance) of the posterior
        vae.quant_conv.bias[vae.config.latent_channels :] = config.vae_logvar_init
    unet = UNet2DConditionModel(
        sample_size=config.latent_size,
        in_channels=4,
        out_channels=4,
        block_out_channels=config.unet_channels,
        down_block_types=config.unet_down_blocks,
        up_block_types=config.unet_up_blocks,
        layers_per_block=config.unet_layers_per_block,
        attention_head_dim=config.unet_head_dim,
        cross_attention_dim=config.text_hidden,
        norm_num_groups=8,
        use_linear_projection=True,
    )
    return text_encoder, vae, unet


def object_crop(image: np.ndarray, box, size: int, rng: np.random.Generator) -> np.ndarray:
    """A random ``size`` x ``size`` crop of an HWC image whose central half holds the object's centre.

    Most pixels of a toy image are background; centring crops on the object spends the VAE's
    training on the shapes and colours that matter.
    """
    h, w = image.shape[:2]
    cx, cy = (box[0] + box[2]) / 2, (box[1] + box[3]) / 2
    offsets = []
    for c, n in ((cy, h), (cx, w)):
        lo = int(np.clip(np.floor(c - 3 * size / 4), 0, n - size))
        hi = int(np.clip(np.ceil(c - size / 4), 0, n - size))
        offsets.append(int(rng.integers(lo, max(lo, hi) + 1)))
    y, x = offsets
    return image[y : y + size, x : x + size]


def images_to_tensor(images: np.ndarray):
    """uint8 NHWC in [0, 255] -> float NCHW in [-1, 1], as SD's VAE expects."""
    import torch

    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


# ---------------------------------------------------------------------------------------------
# losses (pure functions)
# ---------------------------------------------------------------------------------------------


def vae_loss(recon, target, kl, kl_weight: float):
    """VAE objective: per-pixel MSE plus ``kl_weight`` times the per-element KL to N(0, I)."""
    n = target[0].numel()
    return (recon - target).pow(2).mean() + kl_weight * kl.mean() / n


def min_snr_weights(snr, gamma: float):
    """Min-SNR-gamma loss weights for epsilon prediction: ``min(SNR, gamma) / SNR`` (Hang et al. 2023, Eq. 9)."""
    import torch

    return torch.clamp(snr, max=gamma) / snr


def epsilon_loss(pred, noise, weights):
    """Weighted epsilon MSE, averaged per sample first (DDPM's simple loss with Min-SNR weights)."""
    per_sample = (pred.float() - noise.float()).pow(2).mean(dim=(1, 2, 3))
    return (per_sample * weights).mean()


# ---------------------------------------------------------------------------------------------
# checkpoints
# ---------------------------------------------------------------------------------------------


def _save_checkpoint(path: Path, state: dict) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _rng_state(data_rng: np.random.Generator) -> dict:
    import torch

    return {"torch": torch.get_rng_state(), "numpy": data_rng.bit_generator.state}


def _set_rng_state(state: dict, data_rng: np.random.Generator) -> None:
    import torch

    torch.set_rng_state(state["torch"])
    data_rng.bit_generator.state = state["numpy"]


def _progress(total: int, initial: int, desc: str, enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, disable=not enabled, file=sys.stderr, mininterval=2.0, dynamic_ncols=True)


# ---------------------------------------------------------------------------------------------
# training
# ---------------------------------------------------------------------------------------------


@dataclass
class _Run:
    """What the two training stages share: the work directory, the checkpoint, the data RNG, the step budget."""

    config: TeacherConfig
    work: Path
    state: dict | None  # the checkpoint resumed from, or None
    data_rng: np.random.Generator
    budget: int | None  # optimisation steps left before an early stop (None: no limit)
    progress: bool
    elapsed_before: float
    t_start: float = field(default_factory=time.perf_counter)

    @property
    def ckpt_path(self) -> Path:
        return self.work / CHECKPOINT

    def elapsed(self) -> float:
        return self.elapsed_before + time.perf_counter() - self.t_start

    def out_of_budget(self) -> bool:
        return self.budget is not None and self.budget <= 0

    def spend_step(self) -> None:
        if self.budget is not None:
            self.budget -= 1

    def save(self, payload: dict) -> None:
        _save_checkpoint(self.ckpt_path, {**payload, "rng": _rng_state(self.data_rng), "elapsed": self.elapsed()})


def train_teacher(
    out_dir,
    config: TeacherConfig = TeacherConfig(),
    work_dir=None,
    resume: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
    command: str | None = None,
) -> Path | None:
    """Train the toy teacher and export it as a diffusers pipeline directory at ``out_dir``.

    Args:
        out_dir: the pipeline directory to write (replaced atomically at the end).
        config: the model and training choices.
        work_dir: checkpoints, the latent pool and the tokenizer [default: ``<out_dir>.train``].
        resume: continue from the work directory's checkpoint (if there is one).
        progress: show tqdm progress bars.
        stop_after: stop (with a checkpoint) after this many optimisation steps in total over
            both stages, without exporting (a run interrupted at a known step).
        command: the command line, for the provenance record.

    Returns:
        ``out_dir``, or None when ``stop_after`` stopped the run early.
    """
    import torch

    out_dir = Path(out_dir)
    work = Path(work_dir) if work_dir else out_dir.with_name(out_dir.name + ".train")
    resuming = _check_resume(work, config, resume)

    torch.manual_seed(config.seed)
    tokenizer = _tokenizer(config, work / "tokenizer", resuming)
    text_encoder, vae, unet = build_models(config, tokenizer)
    state = torch.load(work / CHECKPOINT, weights_only=False) if resuming else None
    run = _Run(config, work, state, np.random.default_rng([config.seed, 1]), stop_after, progress, state["elapsed"] if state else 0.0)

    vae_step, vae_losses = _train_vae(run, vae)
    if vae_step is None:
        return None
    vae.eval().requires_grad_(False)
    if run.out_of_budget():
        return None
    pool = _latent_pool(run, vae)
    vae.register_to_config(scaling_factor=float(pool["scaling_factor"]))
    trained = _train_unet(run, tokenizer, text_encoder, vae, unet, pool, vae_step, vae_losses)
    if trained is None:
        return None
    unet_losses, unet_segments = trained

    provenance = _provenance(config, command, run, {"vae": vae_losses, "unet": unet_losses}, unet_segments)
    export_pipeline(out_dir, work / "tokenizer", text_encoder, vae, unet, config, provenance)
    log.info("wrote the toy teacher to %s (%.0f s of training)", out_dir, run.elapsed())
    return out_dir


def _tokenizer(config: TeacherConfig, path: Path, resuming: bool):
    """The run's tokenizer: built once into the work directory, read back on resume."""
    if not resuming:
        return build_tokenizer(config, path)
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(path)


def _provenance(config: TeacherConfig, command: str | None, run: _Run, final_losses: dict, unet_segments: list) -> dict:
    """What the exported pipeline records of how it was trained."""
    return {
        "source": "tiue-export toy train-teacher",
        "command": command or "tiue-export toy train-teacher",
        "seed": config.seed,
        "vae_steps": config.vae_steps,
        "unet_steps": config.unet_steps,
        # [from step, schedule length] of each cosine schedule: more than one entry means the
        # run was extended with --resume --steps N at that step (a warm restart).
        "unet_schedule_lengths": unet_segments,
        "data": f"tiue_export.toy.domain, split 'train' ({len(domain.combos('train'))} captions); "
        f"{config.latent_pool} encoded images for the UNet, fresh renders for the VAE",
        "final_losses": final_losses,
        "train_seconds": round(run.elapsed(), 1),
        "guidance": config.guidance,
        "torch_threads": config.threads,
    }


def _check_resume(work: Path, config: TeacherConfig, resume: bool) -> bool:
    """Refuse a clash with an earlier run, record the config; True when a checkpoint is resumed."""
    import torch

    ckpt_path = work / CHECKPOINT
    if ckpt_path.exists() and not resume:
        raise InputError(f"{work} holds a checkpoint of an earlier run: pass --resume to continue it, or remove {work}")
    if resume and not ckpt_path.exists() and not (work / CONFIG_JSON).exists():
        raise InputError(f"--resume: {work} holds no run to continue: drop --resume to start one")
    torch.set_num_threads(config.threads)
    work.mkdir(parents=True, exist_ok=True)
    cfg_file = work / CONFIG_JSON
    if resume and ckpt_path.exists():
        saved = TeacherConfig.from_dict(json.loads(cfg_file.read_text()))
        extended = config.unet_steps > saved.unet_steps
        if replace(saved, threads=config.threads, unet_steps=config.unet_steps if extended else saved.unet_steps) != config:
            raise InputError(
                f"--resume with a different config than {cfg_file} was written with; use the same options "
                "(only --steps may grow, to extend the UNet stage)"
            )
        if extended:
            # A warm restart: the cosine schedule is recomputed for the new length, so the
            # learning rate jumps back up from where the shorter schedule had decayed it.
            log.info("extending the UNet stage from %d to %d steps", saved.unet_steps, config.unet_steps)
            with atomic_path(cfg_file) as tmp:
                tmp.write_text(json.dumps(config.to_dict(), indent=2))
        return True
    if resume:
        log.info("no checkpoint in %s: starting from scratch", work)
    with atomic_path(cfg_file) as tmp:
        tmp.write_text(json.dumps(config.to_dict(), indent=2))
    return False


def _train_stage(run: _Run, stage: str, total: int, step: int, train_one, checkpoint, save) -> int | None:
    """Steps ``step`` .. ``total`` of one stage with a progress bar: ``train_one(step)`` trains on
    one batch and returns the bar's postfix; every ``checkpoint_every`` steps and at the end
    ``checkpoint(step)`` records the losses and saves. Returns the steps done, or None (after
    ``save(step)``) when the step budget ran out first."""
    bar = _progress(total, step, stage, run.progress)
    while step < total:
        if run.out_of_budget():
            save(step)
            bar.close()
            return None
        postfix = train_one(step)
        step += 1
        run.spend_step()
        bar.set_postfix(**postfix, refresh=False)
        bar.update(1)
        if step % run.config.checkpoint_every == 0 or step == total:
            checkpoint(step)
    bar.close()
    return step


def _train_vae(run: _Run, vae) -> tuple[int | None, dict]:
    """Stage (a): the VAE on fresh renders (crops first, then whole images).

    Returns (steps done, smoothed losses); steps is None when the budget stopped the run.
    """
    import torch
    from diffusers.optimization import get_cosine_schedule_with_warmup

    config, state, data_rng = run.config, run.state, run.data_rng
    vae_opt = torch.optim.AdamW(vae.parameters(), lr=config.vae_lr, weight_decay=0.0)
    vae_sched = get_cosine_schedule_with_warmup(vae_opt, config.vae_warmup, max(config.vae_steps, 1))
    vae_step, vae_losses = 0, {}
    if state is not None:
        vae.load_state_dict(state["vae"])
        if state["stage"] == "vae":
            vae_opt.load_state_dict(state["vae_opt"])
            vae_sched.load_state_dict(state["vae_sched"])
            _set_rng_state(state["rng"], data_rng)
        vae_step = state["vae_step"]
        vae_losses = state.get("vae_losses", {})
    if vae_step >= config.vae_steps:
        return vae_step, vae_losses
    train_combos = domain.combos("train")
    smooth = None

    def train_one(step: int) -> dict:
        nonlocal smooth
        x = _vae_batch(config, step, train_combos, data_rng)
        post = vae.encode(x).latent_dist
        recon = vae.decode(post.sample()).sample
        loss = vae_loss(recon, x, post.kl(), config.vae_kl_weight)
        vae_opt.zero_grad(set_to_none=True)
        loss.backward()
        vae_opt.step()
        vae_sched.step()
        smooth = loss.item() if smooth is None else 0.98 * smooth + 0.02 * loss.item()
        return {"loss": f"{smooth:.5f}", "psnr": f"{_psnr(smooth):.1f}dB"}

    def checkpoint(step: int) -> None:
        nonlocal vae_losses
        vae_losses = {"mse_smoothed": smooth, "psnr_db": _psnr(smooth)}
        log.info("vae step %d/%d: loss %.5f (PSNR %.1f dB)", step, config.vae_steps, smooth, _psnr(smooth))
        save(step)

    def save(step: int) -> None:
        run.save(
            {"stage": "vae", "vae_step": step, "vae": vae.state_dict(), "vae_opt": vae_opt.state_dict(),
             "vae_sched": vae_sched.state_dict(), "vae_losses": vae_losses}
        )

    vae.train()
    return _train_stage(run, "vae", config.vae_steps, vae_step, train_one, checkpoint, save), vae_losses


def _psnr(mse: float) -> float:
    """PSNR in dB of images in [-1, 1] (peak-to-peak 2) at mean squared error ``mse``."""
    return 10 * math.log10(4.0 / max(mse, 1e-12))


def _vae_batch(config: TeacherConfig, step: int, combos: list, data_rng: np.random.Generator):
    """One VAE batch of fresh renders: object crops for the first ``vae_crop_steps``, whole images after."""
    if step < config.vae_crop_steps:
        batch = [combos[i] for i in data_rng.integers(0, len(combos), config.vae_batch)]
        images = [object_crop(*domain.render_with_box(a, data_rng, config.resolution), config.vae_crop, data_rng) for a in batch]
    else:
        batch = [combos[i] for i in data_rng.integers(0, len(combos), config.vae_full_batch)]
        images = [domain.render(a, data_rng, config.resolution) for a in batch]
    return images_to_tensor(np.stack(images))


def _latent_pool(run: _Run, vae) -> dict:
    """The latent pool: rendered and encoded once with the frozen VAE; sets SD's scaling_factor."""
    import torch

    pool_path = run.work / LATENTS
    if pool_path.exists() and run.state is not None and run.state["stage"] == "unet":
        return torch.load(pool_path, weights_only=False)
    pool = encode_latent_pool(vae, run.config, run.progress)
    with atomic_path(pool_path) as tmp:
        torch.save(pool, tmp)
    return pool


def _train_unet(run: _Run, tokenizer, text_encoder, vae, unet, pool, vae_step, vae_losses) -> tuple[dict, list] | None:
    """Stage (b): the UNet and text encoder, jointly, on the latent pool; the EMA weights are copied in.

    Returns (smoothed losses, schedule segments), or None when the budget stopped the run.
    """
    import torch
    from diffusers import DDIMScheduler
    from diffusers.optimization import get_cosine_schedule_with_warmup
    from diffusers.training_utils import EMAModel

    config = run.config
    noise_scheduler = DDIMScheduler.from_config(SD21_SCHEDULER_CONFIG)
    # The UNet stage draws from its own seed: it depends on the VAE's weights, not on how many
    # random numbers the VAE stage used, so it can be rerun alone on a finished VAE.
    torch.manual_seed(config.seed + 1)
    params = list(unet.parameters()) + list(text_encoder.parameters())
    opt = torch.optim.AdamW(params, lr=config.unet_lr, weight_decay=1e-2)
    lr_sched = get_cosine_schedule_with_warmup(opt, config.unet_warmup, config.unet_steps)
    ema = EMAModel(params, decay=config.ema_decay, use_ema_warmup=True, power=3 / 4)
    ids, empty = _caption_ids(tokenizer, config)
    trained = {"unet": unet, "text_encoder": text_encoder, "opt": opt, "lr_sched": lr_sched, "ema": ema}
    unet_step, unet_losses, unet_segments = _restore_unet(run, trained)
    smooth = None

    def train_one(step: int) -> dict:
        nonlocal smooth
        loss = _unet_loss(pool, config, noise_scheduler, text_encoder, unet, ids, empty)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        lr_sched.step()
        ema.step(params)
        smooth = loss.item() if smooth is None else 0.99 * smooth + 0.01 * loss.item()
        return {"loss": f"{smooth:.4f}", "lr": f"{lr_sched.get_last_lr()[0]:.1e}"}

    def checkpoint(step: int) -> None:
        nonlocal unet_losses
        unet_losses = {"eps_loss_smoothed": smooth}
        log.info("unet step %d/%d: loss %.4f (%.0f s)", step, config.unet_steps, smooth, run.elapsed())
        save(step)

    def save(step: int) -> None:
        states = {k: v.state_dict() for k, v in trained.items()}
        run.save(
            {"stage": "unet", "vae_step": vae_step, "unet_step": step, "vae": vae.state_dict(), **states,
             "vae_losses": vae_losses, "unet_losses": unet_losses, "unet_segments": unet_segments}
        )

    unet.train()
    text_encoder.train()
    if _train_stage(run, "unet", config.unet_steps, unet_step, train_one, checkpoint, save) is None:
        return None
    ema.copy_to(params)
    return unet_losses, unet_segments


def _caption_ids(tokenizer, config: TeacherConfig):
    """Token ids of every training caption and, last, of the empty prompt; and that last index."""
    import torch

    captions = [domain.caption(a) for a in domain.combos("train")]
    ids = torch.from_numpy(
        tokenizer(captions + [""], padding="max_length", max_length=config.text_max_tokens, truncation=True, return_tensors="np").input_ids
    ).long()
    return ids, len(captions)


def _restore_unet(run: _Run, trained: dict) -> tuple[int, dict, list]:
    """The UNet stage's step, losses and schedule segments, and ``trained``'s states, from a
    checkpoint of that stage (a fresh start otherwise); a new segment when ``--steps`` grew."""
    state, config = run.state, run.config
    unet_step, unet_losses, unet_segments = 0, {}, []
    if state is not None and state["stage"] == "unet":
        for key, obj in trained.items():
            obj.load_state_dict(state[key])
        _set_rng_state(state["rng"], run.data_rng)
        unet_step = state["unet_step"]
        unet_losses = state.get("unet_losses", {})
        unet_segments = [list(x) for x in state.get("unet_segments", [[0, state["unet_step"]]] if state["unet_step"] else [])]
    if not unet_segments or unet_segments[-1][1] != config.unet_steps:
        unet_segments.append([unet_step, config.unet_steps])
    return unet_step, unet_losses, unet_segments


def _unet_loss(pool: dict, config: TeacherConfig, noise_scheduler, text_encoder, unet, ids, empty: int):
    """The min-SNR-weighted epsilon loss on one batch of the latent pool (captions dropped to the empty prompt at ``caption_dropout``)."""
    import torch
    from diffusers.training_utils import compute_snr

    idx = torch.randint(0, len(pool["mean"]), (config.unet_batch,))
    mean, std = pool["mean"][idx], pool["std"][idx]
    latents = (mean + std * torch.randn_like(mean)) * pool["scaling_factor"]
    cap = pool["caption"][idx].clone()
    cap[torch.rand(config.unet_batch) < config.caption_dropout] = empty
    noise = torch.randn_like(latents)
    t = torch.randint(0, noise_scheduler.config.num_train_timesteps, (config.unet_batch,))
    noisy = noise_scheduler.add_noise(latents, noise, t)
    cond = text_encoder(ids[cap])[0]
    pred = unet(noisy, t, encoder_hidden_states=cond).sample
    return epsilon_loss(pred, noise, min_snr_weights(compute_snr(noise_scheduler, t), config.snr_gamma))


def encode_latent_pool(vae, config: TeacherConfig, progress: bool = True, batch: int = 64) -> dict:
    """Render ``config.latent_pool`` training images and encode them: posterior mean/std, caption index.

    The scaling factor makes the latents unit-variance, as SD's 0.18215 does for its VAE.
    """
    import torch

    pool = domain.combos("train")
    index = {a: i for i, a in enumerate(pool)}
    images, attrs = domain.sample_dataset(config.latent_pool, seed=config.seed + 1, split="train", resolution=config.resolution)
    means, stds = [], []
    with torch.no_grad():
        for start in _progress_range(len(images), batch, "encode", progress):
            post = vae.encode(images_to_tensor(images[start : start + batch])).latent_dist
            means.append(post.mean)
            stds.append(post.std)
    mean, std = torch.cat(means), torch.cat(stds)
    gen = torch.Generator().manual_seed(config.seed + 2)
    sample = mean + std * torch.randn(mean.shape, generator=gen)
    scaling = 1.0 / float(sample.std())
    log.info("latent pool: %d images, latent std %.3f -> scaling_factor %.5f", len(mean), 1 / scaling, scaling)
    return {"mean": mean, "std": std, "caption": torch.tensor([index[a] for a in attrs]), "scaling_factor": scaling}


def _progress_range(n: int, step: int, desc: str, enabled: bool):
    bar = _progress(n, 0, desc, enabled)
    for start in range(0, n, step):
        yield start
        bar.update(min(step, n - start))
    bar.close()


def export_pipeline(out_dir: Path, tokenizer_dir: Path, text_encoder, vae, unet, config: TeacherConfig, provenance: dict) -> Path:
    """Write the diffusers pipeline directory (safetensors weights, SD 2.1's scheduler) atomically."""
    import shutil

    with atomic_path(out_dir) as tmp:
        tmp.mkdir(parents=True)
        shutil.copytree(tokenizer_dir, tmp / "tokenizer")
        text_encoder.save_pretrained(tmp / "text_encoder", safe_serialization=True)
        vae.save_pretrained(tmp / "vae", safe_serialization=True)
        unet.save_pretrained(tmp / "unet", safe_serialization=True)
        (tmp / "scheduler").mkdir()
        (tmp / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD21_SCHEDULER_CONFIG, indent=2))
        write_model_index(tmp)
        (tmp / "tiue.json").write_text(json.dumps({"kind": "teacher", "k": 4, "provenance": provenance}, indent=2))
        (tmp / CONFIG_JSON).write_text(json.dumps(config.to_dict(), indent=2))
    return out_dir


def sample_grid(model_dir, out_png, prompts: list[str], seeds_per_prompt: int = 4, guidance: float = 5.0, sampler: str = "ddim:50"):
    """A PNG grid: one row per prompt, ``seeds_per_prompt`` columns; returns (images, prompts)."""
    from ..files import write_png
    from ..reference.pipeline import load_pipeline

    pipe = load_pipeline(model_dir)
    jobs = [(p, s) for p in prompts for s in range(seeds_per_prompt)]
    res = pipe.sample([p for p, _ in jobs], [s for _, s in jobs], sampler, guidance)
    n, h, w, c = res.images.shape
    grid = res.images.reshape(len(prompts), seeds_per_prompt, h, w, c).transpose(0, 2, 1, 3, 4).reshape(len(prompts) * h, seeds_per_prompt * w, c)
    write_png(out_png, grid, {"prompts": "\n".join(prompts), "sampler": sampler, "guidance": str(guidance)})
    return res.images, [p for p, _ in jobs]
