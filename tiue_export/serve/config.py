"""The configs of ``tiue-export serve`` and ``generate``, checked before Ray starts."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InputError

#: ``auto``: batch only if the start-up check finds batched images equal to single ones;
#: ``batched``: trust the backend; ``per-image``: one pipeline call per image, always.
BATCH_MODES = ("auto", "batched", "per-image")


@dataclass(frozen=True)
class WorkerConfig:
    """What every replica or actor loads; the same for all of them.

    ``bundle`` is kept as the user wrote it: it is the ``model`` text of every PNG, as in infer.
    """

    bundle: str
    backend: str = "onnxruntime"  # a registry name (``onnxruntime-int8``), resolved by the driver
    threads: int = 0  # intra-op threads per graph; 0: the engine's default (every core of the node)
    batch_mode: str = "auto"
    max_batch: int = 8  # the largest pipeline call; the batch check runs at this size
    vae: str = "full"  # tiny: the bundle's tiny vae_decoder (export --vae tiny), as infer --vae tiny

    def __post_init__(self):
        if self.batch_mode not in BATCH_MODES:
            raise InputError(f"batch mode {self.batch_mode!r}: choose from {', '.join(BATCH_MODES)}")

    def generate_options(self):
        """The :class:`~tiue_export.generator.GenerateOptions` every replica opens its generator with."""
        from ..generator import GenerateOptions

        return GenerateOptions(self.bundle, self.backend, vae=self.vae, threads=self.threads)


def threads_for(threads: int | None, cpus: float) -> int:
    """Intra-op threads of a replica or actor: ``threads``, else the CPUs it reserves (at least
    one). ONNX Runtime's own default, every core of the node, makes replicas that share a node
    spin against each other."""
    return threads if threads is not None else max(1, int(cpus))


def worker_config(bundle: str, backend: str = "onnxruntime", precision: str | None = None, **options) -> WorkerConfig:
    """Open ``bundle`` here (manifest, files, sha256) and resolve the backend, so that a bad bundle
    or backend is one line before any replica or actor starts.

    ``max_batch`` is capped at a TensorRT engine set's batch profile.
    """
    from ..backends import engine_of
    from ..generator import GenerateOptions, open_generator

    if engine_of(backend) == "torch":
        raise InputError(
            "--backend torch runs a model directory in one process: serve and generate run bundles (onnxruntime, openvino, tensorrt)"
        )
    # The bundle's side only: the engine itself (TensorRT, a GPU) need not be on this machine, the
    # replicas of a cluster may run where it is.
    gen = open_generator(GenerateOptions(str(bundle), backend, precision, vae=options.get("vae", "full")))
    max_batch = gen.batch_size(options.pop("max_batch", WorkerConfig.max_batch))
    return WorkerConfig(str(bundle), gen.backend.name, max_batch=max_batch, **options)

@dataclass(frozen=True)
class ServeConfig:
    """``tiue-export serve``: the deployment, its batching and its admission limit."""

    worker: WorkerConfig
    replicas: int = 1
    autoscale: tuple[int, int] | None = None  # (min, max) replicas; replaces ``replicas``
    # how long an idle replica waits to fill a batch; 0: a busy replica batches what queued while it
    # drew anyway, and waiting only slows a server that is never busy (docs/serving.md, Measured)
    batch_wait_ms: float = 0.0
    max_queued: int = 64  # images accepted and not yet answered; one more gets 503 at once
    max_images: int = 16  # images one request may ask for
    host: str = "127.0.0.1"  # loopback unless told: the API has no authentication
    port: int = 8000
    address: str | None = None  # an existing Ray cluster; None: a local one started here
    cpus_per_replica: float = 1.0
    gpus_per_replica: float = 0.0  # 1: a replica per GPU
    retries: int = 2  # resubmissions of an image whose replica died (drawing is deterministic, so safe)
    request_timeout_s: float = 300.0  # the HTTP proxy answers 408 past it: no request waits forever
    app_name: str = "tiue"

    def __post_init__(self):
        if self.autoscale is not None:
            lo, hi = self.autoscale
            if not 0 <= lo <= hi or hi < 1:
                raise InputError(f"--autoscale {lo}:{hi}: need 0 <= MIN <= MAX and MAX >= 1")
        if self.max_queued < self.worker.max_batch:
            raise InputError(f"--max-queued {self.max_queued} is below --max-batch {self.worker.max_batch}: no batch could fill")
        if self.max_images > self.max_queued:
            raise InputError(f"--max-images {self.max_images} is over --max-queued {self.max_queued}: such a request could never be taken")
