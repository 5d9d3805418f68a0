"""Teacher ODE pairs for the optional regression term (DMD, Yin et al. 2024, Sec. 3.3).

A pair is a noise ``z_T`` and the latent the frozen teacher's deterministic DDIM sampler (with
CFG) makes from it for one training prompt. Regressing the one-pass student onto these pairs
anchors its noise-to-image map to the teacher's (DMD's L_reg, here MSE in latent space), which the
distribution-matching VSD term alone does not do. Still image-free: the teacher draws every target.

Pairs live in a *pair store*: a directory of ``spec.json`` (what a pair is) and chunks of
``CHUNK`` pairs, each written atomically. Pair ``i`` is the same whatever the store's size (its
prompt and noise seed depend on ``i`` only), so the first N pairs of a large store are the pair set
of size N: one store serves runs of any size. A store is filled by ``tiue-export distill-pairs``
(worker processes, one thread each) or by a distill run into ``RUN/pairs`` (each rank draws every
``world``-th chunk); an interrupted fill continues at the missing chunks.

The teacher runs ``PairSpec.batch`` pairs per call. CPU kernels sum in an order that depends on the
batch size and the thread count, so a pair drawn alone differs from the same pair drawn in a batch
by float rounding (about 1e-6); a store fixes its batch and draws each chunk with one composition,
which makes every pair a fixed function of its index however many workers or resumes made it.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from ..files import atomic_path, sha256_of_weights
from ..reference.pipeline import guided_denoiser
from ..sampling import initial_noise, sample_ddim
from ..schedule import ddim_plan

log = logging.getLogger("tiue_export")

PAIRS_DIR = "pairs"
SPEC_FILE = "spec.json"
PROBE_FILE = "probe.safetensors"
CHUNK = 64
#: Pair noise seeds start here, away from the seeds evaluation uses (0, 1, 2, ...); a store's
#: ``seed`` moves them by ``SEED_STRIDE``, so stores of different seeds never share a noise.
NOISE_SEED_BASE = 1_000_000
SEED_STRIDE = 1 << 40
#: The probe set (``PROBE`` fresh noises the training never sees, for the run's log) draws from here.
PROBE_SEED_BASE = 500_000
PROBE = 64
#: Pairs per teacher call: small batches run fastest on CPU (the toy teacher, one thread:
#: 4.6 ms an image at UNet batch 8, 18 ms at 64).
DEFAULT_BATCH = 4


@dataclass(frozen=True)
class PairSpec:
    """What a pair is; a store serves a run only if this matches (its size does not matter)."""

    steps: int  # DDIM steps of the teacher
    guidance: float
    seed: int
    teacher_unet_sha256: str
    prompts_sha256: str
    latent_shape: tuple[int, int, int]
    batch: int = DEFAULT_BATCH  # pairs per teacher call (fixes the float rounding of every pair)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["latent_shape"] = list(self.latent_shape)
        return d

    @classmethod
    def from_dict(cls, data: dict) -> PairSpec:
        names = {f.name for f in fields(cls)}
        return cls(**{**{k: v for k, v in data.items() if k in names}, "latent_shape": tuple(data["latent_shape"])})


def chunks_for(count: int) -> int:
    """Chunks that hold the first ``count`` pairs (chunks are always full)."""
    return -(-count // CHUNK)


def prompts_digest(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()


def pair_plan(prompts: list[str], count: int, seed: int) -> tuple[list[str], list[int]]:
    """Prompt and noise seed of pairs ``0..count-1``: seeded shuffles of the prompts back to back
    (each prompt once before any twice), noise seeds ``NOISE_SEED_BASE + seed * SEED_STRIDE + i``.
    A prefix of a longer plan is the shorter plan."""
    rng = np.random.default_rng([seed, 0x9A125])
    order: list[int] = []
    while len(order) < count:
        order.extend(rng.permutation(len(prompts)).tolist())
    texts = [prompts[i] for i in order[:count]]
    seeds = [NOISE_SEED_BASE + seed * SEED_STRIDE + i for i in range(count)]
    return texts, seeds


def probe_plan(prompts: list[str]) -> tuple[list[str], list[int]]:
    """The probe set: ``PROBE`` prompts spread over the list, each with a noise no pair uses."""
    texts = [prompts[(i * len(prompts)) // PROBE] if len(prompts) >= PROBE else prompts[i % len(prompts)] for i in range(PROBE)]
    return texts, [PROBE_SEED_BASE + i for i in range(PROBE)]


def _chunk_path(root: Path, index: int) -> Path:
    return root / f"chunk-{index:05d}.safetensors"


@torch.no_grad()
def teacher_latents(unet, scheduler, cond, uncond, noise: torch.Tensor, steps: int, guidance: float) -> torch.Tensor:
    """The teacher's DDIM latents (eta 0, ``steps`` steps, CFG ``guidance``) from ``noise``."""
    timesteps, prev, final = ddim_plan(scheduler, steps)
    return sample_ddim(noise, guided_denoiser(unet, cond, uncond, guidance), timesteps, prev, scheduler.alphas_cumprod.double().numpy(), final)


@dataclass
class PairTeacher:
    """The frozen teacher as pair drawing needs it: a UNet, its DDIM scheduler and a text encoder."""

    unet: torch.nn.Module
    scheduler: object
    encode: object  # texts -> (B, L, D) float32 embeddings on ``device``
    null: torch.Tensor  # embedding of the empty prompt (1, L, D)
    device: torch.device
    autocast: object = None  # a context-manager factory (accelerate's autocast) or None

    @classmethod
    def load(cls, teacher_dir: Path) -> PairTeacher:
        """The teacher of a pipeline directory, float32 on the CPU."""
        from ..reference.pipeline import load_pipeline

        pipe = load_pipeline(teacher_dir)
        tok, text_encoder = pipe.tokenizer, pipe.text_encoder.eval()

        @torch.no_grad()
        def encode(texts):
            ids = tok(list(texts), padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")
            return text_encoder(ids.input_ids)[0].to(torch.float32)

        return cls(unet=pipe.unet.eval(), scheduler=pipe.scheduler, encode=encode, null=encode([""]), device=torch.device("cpu"))

    def draw(self, texts: list[str], seeds: list[int], spec: PairSpec) -> tuple[torch.Tensor, torch.Tensor]:
        """``(noise, latents)`` of the given pairs, ``spec.batch`` pairs per teacher call."""
        from contextlib import nullcontext

        noise = torch.from_numpy(initial_noise(seeds, spec.latent_shape))
        out = []
        for lo in range(0, len(texts), spec.batch):
            hi = min(lo + spec.batch, len(texts))
            z = noise[lo:hi].to(self.device)
            with self.autocast() if self.autocast else nullcontext():
                z0 = teacher_latents(self.unet, self.scheduler, self.encode(texts[lo:hi]), self.null.expand(hi - lo, -1, -1), z, spec.steps, spec.guidance)
            out.append(z0.float().cpu())
        return noise, torch.cat(out)


def _write(path: Path, noise: torch.Tensor, latents: torch.Tensor, texts: list[str], first: int) -> None:
    from safetensors.torch import save_file

    tensors = {"noise": noise.float().contiguous(), "latents": latents.float().contiguous()}
    with atomic_path(path) as tmp:
        save_file(tensors, tmp, metadata={"prompts": json.dumps(texts), "first": str(first)})


def draw_chunk(teacher: PairTeacher, prompts: list[str], spec: PairSpec, root: Path, index: int) -> int:
    """Draw chunk ``index`` of a store into ``root`` (atomically); returns its pair count."""
    texts, seeds = pair_plan(prompts, (index + 1) * CHUNK, spec.seed)
    texts, seeds = texts[index * CHUNK :], seeds[index * CHUNK :]
    noise, latents = teacher.draw(texts, seeds, spec)
    _write(_chunk_path(root, index), noise, latents, texts, index * CHUNK)
    return len(texts)


def draw_probe(teacher: PairTeacher, prompts: list[str], spec: PairSpec, root: Path) -> None:
    """The store's probe set (``PROBE`` pairs on noises no run trains on), if missing."""
    if (root / PROBE_FILE).exists():
        return
    texts, seeds = probe_plan(prompts)
    noise, latents = teacher.draw(texts, seeds, spec)
    _write(root / PROBE_FILE, noise, latents, texts, -1)


def missing_chunks(root: Path, count: int) -> list[int]:
    return [i for i in range(chunks_for(count)) if not _chunk_path(root, i).exists()]


def generate_pairs(teacher: PairTeacher, prompts: list[str], spec: PairSpec, root: Path, count: int, rank: int, world: int, progress: bool) -> None:
    """Draw this rank's share (every ``world``-th chunk) of the first ``count`` pairs, missing chunks
    only, and (rank 0) the probe set. Call :func:`load_pairs` after every rank has finished."""
    from tqdm.auto import tqdm

    mine = [i for i in missing_chunks(root, count) if i % world == rank]
    if rank == 0:
        draw_probe(teacher, prompts, spec, root)
    with tqdm(total=len(mine) * CHUNK, desc=f"teacher pairs (ddim:{spec.steps})", disable=not progress or not mine, dynamic_ncols=True) as bar:
        for i in mine:
            bar.update(draw_chunk(teacher, prompts, spec, root, i))


def open_store(root: Path, spec: PairSpec, discard_other: bool) -> None:
    """Make ``root`` a store for ``spec``: keep it if it was made for ``spec``; else empty it
    (``discard_other``: a run's own ``RUN/pairs``) or refuse (a shared store)."""
    import shutil

    spec_file = root / SPEC_FILE
    if root.exists() and any(root.iterdir()):
        old = json.loads(spec_file.read_text()) if spec_file.exists() else None
        if old == spec.to_dict():
            return
        if not discard_other:
            what = "another recipe's" if old else "no"
            raise InputError(f"{root} holds {what} teacher pairs ({SPEC_FILE} differs from this recipe): choose another directory")
        log.info("discarding teacher pairs in %s made for another recipe", root)
        shutil.rmtree(root)
    root.mkdir(parents=True, exist_ok=True)
    with atomic_path(spec_file) as tmp:
        tmp.write_text(json.dumps(spec.to_dict(), indent=2) + "\n")


def read_spec(root: Path) -> PairSpec:
    """The spec of the store at ``root``."""
    spec_file = Path(root) / SPEC_FILE
    if not spec_file.is_file():
        raise InputError(f"{root} is not a teacher pair store (no {SPEC_FILE}): make one with tiue-export distill-pairs")
    try:
        return PairSpec.from_dict(json.loads(spec_file.read_text()))
    except (ValueError, KeyError, TypeError) as exc:
        raise InputError(f"{spec_file} is not a pair spec ({exc})") from exc


def _read(path: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.get_tensor("noise"), f.get_tensor("latents"), json.loads(f.metadata()["prompts"])


def load_pairs(root: Path, spec: PairSpec, count: int) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
    """The first ``count`` pairs of the store: ``(noise, latents, prompts)`` in pair order."""
    spec_file = root / SPEC_FILE
    if not spec_file.exists() or json.loads(spec_file.read_text()) != spec.to_dict():
        raise InputError(f"{root} does not hold the teacher pairs of this recipe")
    noise, latents, texts = [], [], []
    for i in range(chunks_for(count)):
        path = _chunk_path(root, i)
        if not path.exists():
            raise InputError(f"{path} is missing: the store holds fewer than {count} pairs; draw them with tiue-export distill-pairs --resume (or rerun with --resume)")
        n, z, t = _read(path)
        noise.append(n)
        latents.append(z)
        texts.extend(t)
    return torch.cat(noise)[:count], torch.cat(latents)[:count], texts[:count]


def load_probe(root: Path) -> tuple[torch.Tensor, torch.Tensor, list[str]] | None:
    """The store's probe set, or None if it has none."""
    path = root / PROBE_FILE
    return _read(path) if path.exists() else None


# -- a store filled by worker processes (tiue-export distill-pairs) -------------------------------
_WORKER: dict = {}


def _init_worker(teacher_dir: str, prompts: list[str], spec: PairSpec, root: str) -> None:
    torch.set_num_threads(1)  # one thread a worker: the workers, not the threads, keep the cores busy
    _WORKER.update(teacher=PairTeacher.load(Path(teacher_dir)), prompts=prompts, spec=spec, root=Path(root))


def _work(index: int) -> int:
    w = _WORKER
    if index < 0:
        draw_probe(w["teacher"], w["prompts"], w["spec"], w["root"])
        return 0
    return draw_chunk(w["teacher"], w["prompts"], w["spec"], w["root"], index)


def store_spec(teacher_dir: Path, prompts: list[str], steps: int, guidance: float, seed: int, batch: int) -> PairSpec:
    """The spec of pairs drawn from ``teacher_dir`` for ``prompts`` (the teacher's latent shape)."""
    from ..reference.pipeline import load_pipeline

    pipe = load_pipeline(teacher_dir)
    return PairSpec(
        steps=steps,
        guidance=float(guidance),
        seed=seed,
        teacher_unet_sha256=sha256_of_weights(Path(teacher_dir) / "unet"),
        prompts_sha256=prompts_digest(prompts),
        latent_shape=tuple(pipe.latent_shape(None, None)),
        batch=batch,
    )


def fill_store(teacher_dir: Path, prompts: list[str], spec: PairSpec, root: Path, count: int, workers: int, progress: bool = True) -> int:
    """Draw the missing chunks of the first ``count`` pairs (and the probe set) with ``workers``
    processes of one thread each; returns the pairs drawn now. Interrupted, it keeps every chunk
    already written."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    from tqdm.auto import tqdm

    todo = missing_chunks(root, count)
    if not (root / PROBE_FILE).exists():
        todo = [-1] + todo
    if not todo:
        return 0
    drawn = 0
    if workers == 1:  # in this process, with a worker's one thread (the same pairs, no start-up)
        before = torch.get_num_threads()
        try:
            _init_worker(str(teacher_dir), prompts, spec, str(root))
            with tqdm(total=sum(CHUNK for i in todo if i >= 0), desc=f"teacher pairs (ddim:{spec.steps})", unit="pair", disable=not progress, dynamic_ncols=True) as bar:
                for i in todo:
                    n = _work(i)
                    drawn += n
                    bar.update(n)
        finally:
            torch.set_num_threads(before)
            _WORKER.clear()
        return drawn
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(str(teacher_dir), prompts, spec, str(root))) as pool:
        jobs = [pool.submit(_work, i) for i in todo]
        with tqdm(total=sum(CHUNK for i in todo if i >= 0), desc=f"teacher pairs (ddim:{spec.steps})", unit="pair", disable=not progress, dynamic_ncols=True) as bar:
            for job in as_completed(jobs):
                n = job.result()
                drawn += n
                bar.update(n)
    return drawn
