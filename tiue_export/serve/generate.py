"""``tiue-export generate``: images for a prompt file on Ray Data, over a pool of runtime actors.

Each (prompt, seed) is one job with a fixed file name; an actor draws a batch of jobs, writes
their PNGs (atomically) and hands back one index row per file; the driver commits those rows
batch by batch as parquet parts under ``OUT/.index/`` and, once every job is done, folds them into
``OUT/index.parquet``. A job counts as done when it has a row and its file exists, so a run that
was killed (at any point) and started again draws exactly the jobs that are missing: no
duplicates (a job always writes the same file name, and drawing is deterministic), no gaps.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import InputError, TiueError
from ..files import atomic_path, write_json, write_png
from ..generator import check_seed_range, slug
from .cluster import check_resources, connect
from .config import WorkerConfig
from .worker import project_error

log = logging.getLogger("tiue_export")

RUN_FILE = "generate.json"
INDEX = "index.parquet"
PARTS = ".index"
#: What a resumed run must share with the run that started ``--out``: anything else changes files.
IDENTITY = ("model", "manifest_sha256", "backend", "vae", "prompts_sha256", "num_images", "seed")


@dataclass(frozen=True)
class GenerateConfig:
    """``tiue-export generate``: what to draw, where, and on how many actors."""

    worker: WorkerConfig
    prompts_file: str
    out: str
    num_images: int = 1  # per prompt; image j of a prompt uses seed + j, as in infer
    seed: int = 0
    workers: int = 1  # actors, each holding one pipeline
    address: str | None = None  # an existing Ray cluster; None: a local one started here
    cpus_per_worker: float = 1.0
    gpus_per_worker: float = 0.0

    def __post_init__(self):
        check_seed_range(self.seed, self.num_images)


def plan(cfg: GenerateConfig) -> tuple[list[dict], dict]:
    """Every job of the run (prompt index, prompt, seed, file) and the run's identity record."""
    from ..bundle import Bundle
    from ..prompts import load_prompts

    prompts = load_prompts(cfg.prompts_file)
    jobs = [
        {"prompt_index": i, "prompt": p, "seed": cfg.seed + j, "file": f"{i:06d}-{slug(p)}-s{cfg.seed + j}.png"}
        for i, p in enumerate(prompts)
        for j in range(cfg.num_images)
    ]
    manifest = Path(Bundle.open(cfg.worker.bundle, verify=False).path) / "manifest.json"
    record = {
        "model": cfg.worker.bundle,
        "manifest_sha256": hashlib.sha256(manifest.read_bytes()).hexdigest(),
        "backend": cfg.worker.backend,
        **({"vae": cfg.worker.vae} if cfg.worker.vae != "full" else {}),  # runs of the full VAE stay as they were
        "prompts_file": str(cfg.prompts_file),
        "prompts_sha256": hashlib.sha256("\n".join(prompts).encode()).hexdigest(),
        "prompts": len(prompts),
        "num_images": cfg.num_images,
        "seed": cfg.seed,
        "jobs": len(jobs),
    }
    return jobs, record


def claim_out(out: Path, record: dict, config: dict) -> None:
    """Write ``OUT/generate.json`` (the run's identity and this invocation's config), or refuse
    when the run already there is another one."""
    check_claim(out, record)
    write_json(out / RUN_FILE, {**record, "config": config, "software": _software()})


def check_claim(out: Path, record: dict) -> None:
    """Refuse an ``--out`` that holds another run, or PNG files of its own; writes nothing."""
    path = out / RUN_FILE
    if out.exists() and not out.is_dir():
        raise InputError(f"--out {out} exists and is not a directory")
    if path.exists():
        try:
            old = json.loads(path.read_text())
        except ValueError as exc:
            raise InputError(f"{path} is not JSON: not a generate output directory? use a new --out") from exc
        diff = [k for k in IDENTITY if old.get(k) != record.get(k)]
        if diff:
            raise InputError(f"--out {out} holds another run ({diff[0]}: {old.get(diff[0])!r}, now {record.get(diff[0])!r}): use a new --out")
    elif out.is_dir() and any(p.suffix == ".png" for p in out.iterdir()):
        raise InputError(f"--out {out} already holds PNG files not written by generate: use a new --out")


def _software() -> str:
    from .. import __version__

    return f"tiue-export {__version__}"


def read_index(out: Path) -> list[dict]:
    """The index rows committed so far (the folded index and every part), one per file."""
    import pyarrow.parquet as pq

    rows: dict[str, dict] = {}
    files = ([out / INDEX] if (out / INDEX).exists() else []) + sorted((out / PARTS).glob("*.parquet"))
    for f in files:
        for row in pq.read_table(f).to_pylist():
            rows[row["file"]] = row
    return list(rows.values())


def write_table(path: Path, rows: list[dict]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    with atomic_path(path) as tmp:
        pq.write_table(pa.Table.from_pylist(rows), tmp)


class PngWriter:
    """A Ray Data actor: one pipeline; draws a batch of jobs and writes their PNGs."""

    def __init__(self, worker: WorkerConfig, out: str):
        from .worker import ImageWorker

        self.worker = ImageWorker(worker)
        self.out = Path(out)

    def __call__(self, batch: dict) -> dict:
        jobs = [(str(p), int(s)) for p, s in zip(batch["prompt"], batch["seed"])]
        t0 = time.perf_counter()
        drawn = self.worker.sample(jobs)
        seconds = (time.perf_counter() - t0) / len(jobs)
        rows = {k: [] for k in ("file", "prompt_index", "prompt", "seed", "sha256", "seconds", "metadata")}
        for name, index, image, meta in zip(batch["file"], batch["prompt_index"], drawn.images, drawn.metadata):
            path = write_png(self.out / str(name), image, meta)
            rows["file"].append(str(name))
            rows["prompt_index"].append(int(index))
            rows["prompt"].append(meta["prompt"])
            rows["seed"].append(int(meta["seed"]))
            rows["sha256"].append(hashlib.sha256(path.read_bytes()).hexdigest())
            rows["seconds"].append(seconds)
            rows["metadata"].append(json.dumps(meta))
        return rows


def run(cfg: GenerateConfig, ray_options: dict | None = None, progress: bool = True) -> dict:
    """Draw every job of ``cfg`` not done yet; returns a summary (jobs, done before, drawn, seconds)."""
    import ray

    out = Path(cfg.out)
    jobs, record = plan(cfg)
    check_claim(out, record)
    done = {r["file"] for r in read_index(out) if (out / r["file"]).is_file()}
    todo = [j for j in jobs if j["file"] not in done]
    summary = {"jobs": len(jobs), "done_before": len(jobs) - len(todo), "drawn": 0, "seconds": 0.0}
    t0 = time.perf_counter()
    started = connect(cfg.address, ray_options) if todo else False
    try:
        if todo:  # before --out is claimed: a refusal leaves nothing behind
            asks = {"CPU": ("--cpus-per-worker", cfg.cpus_per_worker), "GPU": ("--gpus-per-worker", cfg.gpus_per_worker)}
            check_resources(asks, cfg.workers, "workers")
        claim_out(out, record, asdict(cfg))
        for leftover in out.glob(".*.tmp"):  # staging files of a killed run (one run per --out at a time)
            shutil.rmtree(leftover, ignore_errors=True)
        if summary["done_before"]:
            log.info("resuming %s: %d of %d images already there", out, summary["done_before"], len(jobs))
        if todo:
            summary["drawn"] = _draw(cfg, out, todo, len(jobs), progress)
    except Exception as exc:
        found = project_error(exc)
        if found is None or found is exc:
            raise
        raise found from None  # the actor's own one line (a bundle it cannot load ...), not Ray's wrapping
    finally:
        if started:
            ray.shutdown()
    rows = sorted(read_index(out), key=lambda r: (r["prompt_index"], r["seed"]))
    wanted = {j["file"] for j in jobs}
    missing = wanted - {r["file"] for r in rows if (out / r["file"]).is_file()}
    if missing:
        raise TiueError(f"{len(missing)} images were not written (e.g. {sorted(missing)[0]}): run the same command again to finish")
    write_table(out / INDEX, [r for r in rows if r["file"] in wanted])
    shutil.rmtree(out / PARTS, ignore_errors=True)
    summary["seconds"] = time.perf_counter() - t0
    return summary


def _draw(cfg: GenerateConfig, out: Path, todo: list[dict], total: int, progress: bool) -> int:
    """Ray Data over an actor pool; each batch's rows are committed as a parquet part when it returns."""
    import ray.data
    from tqdm import tqdm

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False  # ours counts images, across resumes
    logging.getLogger("ray.data").setLevel(logging.WARNING)
    ds = ray.data.from_items(todo).map_batches(
        PngWriter,
        fn_constructor_args=(cfg.worker, str(out.resolve())),
        batch_size=cfg.worker.max_batch,
        compute=ray.data.ActorPoolStrategy(size=cfg.workers),
        num_cpus=cfg.cpus_per_worker,
        num_gpus=cfg.gpus_per_worker or None,
    )
    run_id = uuid.uuid4().hex[:8]
    (out / PARTS).mkdir(exist_ok=True)
    drawn = 0
    with tqdm(total=total, initial=total - len(todo), unit="img", disable=not progress, dynamic_ncols=True) as bar:
        for n, batch in enumerate(ds.iter_batches(batch_size=None, batch_format="pyarrow")):
            rows = batch.to_pylist()
            write_table(out / PARTS / f"part-{run_id}-{n:06d}.parquet", rows)
            drawn += len(rows)
            bar.update(len(rows))
    return drawn
