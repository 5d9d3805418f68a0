"""Teacher ODE pairs for the optional regression term (DMD, Yin et al. 2024, Sec. 3.3).

A pair is a noise ``z_T`` and the latent the frozen teacher's deterministic DDIM sampler (with
CFG) makes from it for one training prompt. Regressing the one-pass student onto these pairs
anchors its noise-to-image map to the teacher's (DMD's L_reg, here MSE in latent space), which the
distribution-matching VSD term alone does not do. Still image-free: the teacher draws every target.

Pairs are generated once per run into ``RUN/pairs/``, in chunks written atomically, so an
interrupted generation resumes at the first missing chunk; under several processes each rank
draws every ``world``-th chunk and all ranks then read all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..io import atomic_path
from ..sampling import initial_noise, sample_ddim
from ..schedule import ddim_plan

log = logging.getLogger("tiue_export")

PAIRS_DIR = "pairs"
SPEC_FILE = "spec.json"
CHUNK = 64
#: Pair noise seeds start here, away from the seeds evaluation uses (0, 1, 2, ...).
NOISE_SEED_BASE = 1_000_000


@dataclass(frozen=True)
class PairSpec:
    """What determines a pair set; a run directory's pairs are reused only if this matches."""

    count: int
    steps: int  # DDIM steps of the teacher
    guidance: float
    seed: int
    teacher_unet_sha256: str
    prompts_sha256: str
    latent_shape: tuple[int, int, int]

    @property
    def chunks(self) -> int:
        return -(-self.count // CHUNK)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latent_shape"] = list(self.latent_shape)
        return d


def prompts_digest(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()


def pair_plan(prompts: list[str], count: int, seed: int) -> tuple[list[str], list[int]]:
    """Prompt and noise seed of each pair: seeded shuffles of the prompts back to back (each prompt
    once before any twice), noise seeds ``NOISE_SEED_BASE + seed * count + i``."""
    rng = np.random.default_rng([seed, 0x9A125])
    order: list[int] = []
    while len(order) < count:
        order.extend(rng.permutation(len(prompts)).tolist())
    texts = [prompts[i] for i in order[:count]]
    seeds = [NOISE_SEED_BASE + seed * count + i for i in range(count)]
    return texts, seeds


def _chunk_path(root: Path, index: int) -> Path:
    return root / f"chunk-{index:05d}.safetensors"


def guided_denoiser(unet, cond, uncond, guidance: float):
    """``eps(z, t)`` for :func:`~tiue_export.sampling.sample_ddim`: the UNet with CFG at an integer timestep."""
    from .train import guided_eps

    def eps(z, t):
        return guided_eps(unet, z, torch.full((z.shape[0],), t, device=z.device), cond, uncond, guidance)

    return eps


@torch.no_grad()
def teacher_latents(unet, scheduler, cond, uncond, noise: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
    """The teacher's DDIM latents (eta 0, ``steps`` steps, CFG ``guidance``) from ``noise``."""
    timesteps, prev, final = ddim_plan(scheduler, steps)
    return sample_ddim(noise, guided_denoiser(unet, cond, uncond, guidance), timesteps, prev, scheduler.alphas_cumprod.double().numpy(), final)


def generate_pairs(tr, prompts: list[str], spec: PairSpec, run: Path, progress: bool) -> None:
    """Write this rank's share of the pair chunks into ``run/pairs`` (missing chunks only).

    ``tr`` is the run's :class:`~tiue_export.distill.train.Trainer`: its LoRA teacher with the
    adapters disabled is the frozen teacher. Call :func:`load_pairs` on every rank after all
    ranks have finished (a barrier).
    """
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    acc = tr.accelerator
    rank, world = acc.process_index, acc.num_processes
    root = run / PAIRS_DIR
    texts, seeds = pair_plan(prompts, spec.count, spec.seed)
    mine = [i for i in range(rank, spec.chunks, world) if not _chunk_path(root, i).exists()]
    if not mine:
        return
    lora = acc.unwrap_model(tr.lora_ddp)
    with tr.frozen_teacher(), tqdm(total=sum(min(CHUNK, spec.count - i * CHUNK) for i in mine),
                                   desc=f"teacher pairs (ddim:{spec.steps})", disable=not progress, dynamic_ncols=True) as bar:
        for i in mine:
            lo, hi = i * CHUNK, min((i + 1) * CHUNK, spec.count)
            noise = torch.from_numpy(initial_noise(seeds[lo:hi], spec.latent_shape)).to(tr.device)
            cond = tr.encode(texts[lo:hi])
            with acc.autocast():
                z0 = teacher_latents(lora, tr.scheduler, cond, tr.null.expand(hi - lo, -1, -1), noise, spec.steps, spec.guidance)
            tensors = {"noise": noise.float().cpu().contiguous(), "latents": z0.float().cpu().contiguous()}
            with atomic_path(_chunk_path(root, i)) as tmp:
                save_file(tensors, tmp, metadata={"prompts": json.dumps(texts[lo:hi]), "first": str(lo)})
            bar.update(hi - lo)


def prepare_pair_dir(run: Path, spec: PairSpec) -> None:
    """Main process, before generation: keep ``run/pairs`` if it was made for ``spec``, else empty it."""
    import shutil

    root = run / PAIRS_DIR
    spec_file = root / SPEC_FILE
    if root.exists():
        old = json.loads(spec_file.read_text()) if spec_file.exists() else None
        if old == spec.to_dict():
            return
        log.info("discarding teacher pairs in %s made for another recipe", root)
        shutil.rmtree(root)
    root.mkdir(parents=True)
    with atomic_path(spec_file) as tmp:
        tmp.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")


def load_pairs(run: Path, spec: PairSpec) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """All pairs of a run: ``(noise, latents, prompts)`` in pair order, checked against ``spec``."""
    from safetensors import safe_open

    root = run / PAIRS_DIR
    spec_file = root / SPEC_FILE
    if not spec_file.exists() or json.loads(spec_file.read_text()) != spec.to_dict():
        raise InputError(f"{root} does not hold the teacher pairs of this recipe")
    noise, latents, texts = [], [], []
    for i in range(spec.chunks):
        path = _chunk_path(root, i)
        if not path.exists():
            raise InputError(f"{path} is missing: rerun with --resume to finish the teacher pairs")
        with safe_open(str(path), framework="pt") as f:
            noise.append(f.get_tensor("noise"))
            latents.append(f.get_tensor("latents"))
            texts.extend(json.loads(f.metadata()["prompts"]))
    return torch.cat(noise), torch.cat(latents), texts
