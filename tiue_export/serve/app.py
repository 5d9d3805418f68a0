"""The Ray Serve application of ``tiue-export serve``.

Two deployments: ``ImagesAPI``, the HTTP ingress (routes, request checks, the admission limit,
resubmitting an image whose replica died), and ``Generator``, the model replicas, each an
:class:`~tiue_export.serve.worker.ImageWorker` behind a :class:`~tiue_export.serve.batching.Batcher`:
the images queued at a replica while it draws share its next pipeline call. Drawing an image is a pure function of its
prompt and seed, so resubmitting one is safe and gives the same bytes.

Metrics go to Ray's Prometheus endpoint beside Serve's own (``ray_serve_*``): ``tiue_images``
(images drawn; ``rate()`` is images/s), ``tiue_pipeline_calls``, ``tiue_batch_size``,
``tiue_stage_seconds`` (per stage: text_encoder, unet_encoder, unet_decoder, vae_decoder, load),
``tiue_requests`` (by HTTP code), ``tiue_request_seconds``, ``tiue_queued_images`` and
``tiue_resubmitted_images``.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time

import ray
from ray import serve
from ray.exceptions import RayActorError
from ray.util import metrics
from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from ..errors import InputError
from ..files import png_bytes
from . import playground
from .api import RequestError, error_body, image_entry, parse_request
from .batching import Batcher
from .cluster import check_resources, connect
from .config import ServeConfig
from .openai_api import OpenAIError, Served, error_envelope, generation_body, parse_generation
from .worker import ImageWorker, project_error

log = logging.getLogger("tiue_export")

STAGE_BOUNDS = [0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30]
REQUEST_BOUNDS = [0.01, 0.03, 0.1, 0.3, 1, 3, 10, 30, 100]


@serve.deployment(name="Generator")
class Generator:
    """A model replica: one pipeline, images of concurrent requests drawn in shared calls."""

    def __init__(self, cfg: ServeConfig):
        self.worker = ImageWorker(cfg.worker)
        self.batcher = Batcher(self.draw, cfg.worker.max_batch, cfg.batch_wait_ms / 1000)
        self.replica = serve.get_replica_context().replica_id.unique_id
        self.calls = 0
        self.m_images = metrics.Counter("tiue_images", "images drawn")
        self.m_calls = metrics.Counter("tiue_pipeline_calls", "pipeline calls (one per batch when batching is exact)")
        self.m_batch = metrics.Histogram("tiue_batch_size", "images per batch a replica draws", boundaries=[1, 2, 4, 8, 16, 32, 64])
        self.m_stage = metrics.Histogram(
            "tiue_stage_seconds", "seconds per pipeline stage and batch", boundaries=STAGE_BOUNDS, tag_keys=("stage",)
        )

    async def describe(self) -> dict:
        return {**self.worker.describe(), "replica": self.replica}

    def _draw(self, jobs: list[tuple[str, int]]) -> tuple[list[tuple[bytes, dict]], dict[str, float]]:
        drawn = self.worker.sample(jobs)
        self.m_images.inc(len(jobs))
        self.m_calls.inc(drawn.calls)
        self.m_batch.observe(len(jobs))
        for stage, seconds in drawn.timings.items():
            self.m_stage.observe(seconds, tags={"stage": stage})
        return [(png_bytes(image, meta), meta) for image, meta in zip(drawn.images, drawn.metadata)], drawn.timings

    async def sample(self, job: tuple[str, int]) -> dict:
        """One (prompt, seed): drawn with the images of every other caller queued here."""
        return await self.batcher.submit(tuple(job))

    async def draw(self, jobs: list[tuple[str, int]]) -> list[dict]:
        """A batch, drawn in a thread, so the replica keeps taking requests (and filling the
        next batch) meanwhile."""
        self.calls += 1
        batch_id = f"{self.replica}:{self.calls}"
        drawn, timings = await asyncio.to_thread(self._draw, jobs)
        batch = {"id": batch_id, "size": len(jobs), "timings": {stage: round(s, 6) for stage, s in timings.items()}}
        return [{"png": png, "metadata": meta, "batch": batch} for png, meta in drawn]


class ReplicaFailed(Exception):
    """An image's replica died on every try."""


class Refused(Exception):
    """Images the server will not draw now: 503 (busy, replicas lost) or 500 (drawing failed)."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


@serve.deployment(name="ImagesAPI")
class ImagesAPI:
    """The HTTP API: ``POST /v1/images``, OpenAI's ``POST /v1/images/generations`` and
    ``GET /v1/models``, ``GET /healthz``, ``GET /v1/model``, and the playground page at ``GET /``."""

    def __init__(self, generator, cfg: ServeConfig):
        self.generator = generator
        self.cfg = cfg
        self.queued = 0  # images accepted and not yet answered
        self.resubmitted = 0
        self.model: dict | None = None
        self.m_requests = metrics.Counter("tiue_requests", "HTTP requests by status code", tag_keys=("code",))
        self.m_latency = metrics.Histogram("tiue_request_seconds", "seconds per image request, admitted to drawn", boundaries=REQUEST_BOUNDS)
        self.m_queued = metrics.Gauge("tiue_queued_images", "images accepted and not yet answered")
        self.m_resubmitted = metrics.Counter("tiue_resubmitted_images", "images resubmitted because their replica died")

    async def __call__(self, request: Request) -> Response:
        path = request.url.path.rstrip("/") or "/"
        routes = {
            "/v1/images": ("POST", self.images),
            "/v1/images/generations": ("POST", self.generations),
            "/v1/models": ("GET", self.models),
            "/healthz": ("GET", self.healthz),
            "/v1/model": ("GET", self.describe),
            "/": ("GET", self.page),
        }
        openai = path in ("/v1/images/generations", "/v1/models")
        if path.startswith(playground.PREFIX):
            routes[path] = ("GET", self.page)
        if path not in routes:
            response = self.error(404, None, f"no route {path}: {', '.join(f'{m} {p}' for p, (m, _) in routes.items())}")
        elif request.method != routes[path][0]:
            message = f"{path} takes {routes[path][0]}, not {request.method}"
            response = self.openai_error(405, None, message) if openai else self.error(405, None, message)
        else:
            response = await routes[path][1](request)
        self.m_requests.inc(tags={"code": str(response.status_code)})
        return response

    def error(self, code: int, field: str | None, message: str, headers: dict | None = None) -> JSONResponse:
        return JSONResponse(error_body(field, message), status_code=code, headers=headers)

    def openai_error(self, code: int, param: str | None, message: str, headers: dict | None = None, kind: str | None = None) -> JSONResponse:
        return JSONResponse(error_envelope(code, param, message, kind), status_code=code, headers=headers)

    async def ready(self, timeout_s: float) -> bool:
        """Whether a model replica has answered once (they take a while to load and check)."""
        if self.model is None:

            async def ask():
                return await self.generator.describe.remote()

            try:
                self.model = await asyncio.wait_for(ask(), timeout_s)
            except (asyncio.TimeoutError, RayActorError):
                return False
        return True

    async def healthz(self, request: Request) -> Response:
        if not await self.ready(2.0):  # 503 until the first replica is up: a load balancer waits
            return JSONResponse({"status": "starting"}, status_code=503)
        return JSONResponse(
            {"status": "ok", "queued_images": self.queued, "max_queued": self.cfg.max_queued, "resubmitted_images": self.resubmitted}
        )

    async def describe(self, request: Request) -> Response:
        if not await self.ready(60.0):
            return self.error(503, None, "no model replica is up yet: retry later", {"Retry-After": "5"})
        return JSONResponse(
            {**self.model, "max_queued": self.cfg.max_queued, "max_images": self.cfg.max_images, "batch_wait_ms": self.cfg.batch_wait_ms}
        )

    async def page(self, request: Request) -> Response:
        found = playground.asset(request.url.path)
        if found is None:
            return self.error(404, None, f"no file {request.url.path} in the playground")
        data, media_type = found
        return Response(data, media_type=media_type, headers={"Cache-Control": "no-cache"})

    async def one(self, job: tuple[str, int]) -> dict:
        """One image, resubmitted (at most ``retries`` times) when its replica dies under it."""
        for attempt in range(self.cfg.retries + 1):
            try:
                return await self.generator.sample.remote(job)
            except RayActorError as exc:
                log.warning("replica died drawing %r seed %d (try %d): %s", job[0][:40], job[1], attempt + 1, type(exc).__name__)
                self.resubmitted += 1
                self.m_resubmitted.inc()
                await asyncio.sleep(0.2 * 2**attempt)
        raise ReplicaFailed(f"the model replica died on each of {self.cfg.retries + 1} tries")

    async def draw(self, jobs: list[tuple[str, int]]) -> list[dict]:
        """Every job's image, under the admission limit (both image routes come through here).

        Raises:
            Refused: over ``max_queued`` images, replicas lost, or drawing failed.
        """
        if self.queued + len(jobs) > self.cfg.max_queued:
            raise Refused(503, f"busy: {self.queued} images queued, at most {self.cfg.max_queued}: retry later", {"Retry-After": "1"})
        t0 = time.perf_counter()
        self.queued += len(jobs)
        self.m_queued.set(self.queued)
        try:
            done = await asyncio.gather(*(self.one(job) for job in jobs))
        except ReplicaFailed as exc:
            raise Refused(503, f"{exc}: retry later", {"Retry-After": "1"}) from exc
        except Exception as exc:  # a failed draw (a non-finite output ...): said, not hidden
            log.warning("drawing failed: %s", exc)
            found = project_error(exc)
            raise Refused(500, f"drawing failed: {found if found is not None else type(exc).__name__}") from exc
        finally:
            self.queued -= len(jobs)
            self.m_queued.set(self.queued)
        self.m_latency.observe(time.perf_counter() - t0)
        return done

    async def images(self, request: Request) -> Response:
        if not await self.ready(60.0):  # the VAE variants to check against come from a replica
            return self.error(503, None, "no model replica is up yet: retry later", {"Retry-After": "5"})
        try:
            req = parse_request(await request.body(), self.cfg.max_images, self.model["vae_variants"])
            done = await self.draw(req.jobs)
        except RequestError as exc:
            return self.error(400, exc.field, exc.message)
        except Refused as exc:
            return self.error(exc.status, None, exc.message, exc.headers)
        if req.response == "png":
            only = done[0]
            headers = {
                "X-Tiue-Seed": str(only["metadata"]["seed"]),
                "X-Tiue-Batch-Id": only["batch"]["id"],
                "X-Tiue-Batch-Size": str(only["batch"]["size"]),
            }
            return Response(only["png"], media_type="image/png", headers=headers)
        body = {"images": [image_entry(d["png"], d["metadata"], d["batch"]) for d in done]}
        return Response(json.dumps(body), media_type="application/json")

    def served(self) -> Served:
        image = self.model["image"]
        return Served(self.model["model"], image["height"], image["width"], tuple(self.model["vae_variants"]))

    async def generations(self, request: Request) -> Response:
        """OpenAI's images API; the body is OpenAI's, and what OpenAI's answer has no field for
        (each image's seed, batch and per-stage seconds) goes in the ``X-Tiue-Images`` header."""
        if not await self.ready(60.0):  # the size and model to check against come from a replica
            return self.openai_error(503, None, "no model replica is up yet: retry later", {"Retry-After": "5"})
        try:
            req = parse_generation(await request.body(), self.served(), self.cfg.max_images)
            done = await self.draw(req.jobs)
        except OpenAIError as exc:
            return self.openai_error(exc.status, exc.field, exc.message, kind=exc.code)
        except Refused as exc:
            return self.openai_error(exc.status, None, exc.message, exc.headers)
        drawn = [{"seed": d["metadata"]["seed"], "batch": d["batch"]} for d in done]
        return JSONResponse(generation_body([d["png"] for d in done]), headers={"X-Tiue-Images": json.dumps(drawn)})

    async def models(self, request: Request) -> Response:
        """OpenAI's model list: the one bundle served."""
        if not await self.ready(60.0):
            return self.openai_error(503, None, "no model replica is up yet: retry later", {"Retry-After": "5"})
        name = self.served().name
        return JSONResponse({"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "tiue-export"}]})


def build_app(cfg: ServeConfig):
    """The bound application: ``ImagesAPI`` (one light replica, no CPU reserved) over ``Generator``."""
    replicas = {"num_replicas": cfg.replicas}
    if cfg.autoscale is not None:
        lo, hi = cfg.autoscale
        replicas = {"autoscaling_config": {"min_replicas": lo, "max_replicas": hi, "target_ongoing_requests": cfg.worker.max_batch}}
    generator = Generator.options(
        **replicas,
        # a few batches' worth per replica (one drawing, the next filling): fewer and Serve's router
        # holds the rest back with backoff, which idles a replica between small batches
        max_ongoing_requests=max(8, 4 * cfg.worker.max_batch),
        ray_actor_options={"num_cpus": cfg.cpus_per_replica, "num_gpus": cfg.gpus_per_replica},
    ).bind(cfg)
    return ImagesAPI.options(
        num_replicas=1,
        # the ingress must take every request at once to answer 503 at once: its own limit is max_queued images
        max_ongoing_requests=max(256, 4 * cfg.max_queued),
        ray_actor_options={"num_cpus": 0},
    ).bind(generator, cfg)


def from_args(args: dict):
    """An application builder for a Serve config file or KubeRay's RayService
    (``import_path: tiue_export.serve.app:from_args``): ``args`` holds ``bundle`` and, optionally,
    ``backend``, ``precision``, ``threads``, ``batch_mode``, ``max_batch``, ``vae`` and any
    :class:`ServeConfig` field (``replicas``, ``autoscale: [MIN, MAX]``, ``max_queued`` ...)."""
    from .config import threads_for, worker_config

    args = dict(args)
    if "bundle" not in args:
        raise ValueError("args: give bundle: PATH (the bundle every node sees)")
    worker_keys = ("backend", "precision", "threads", "batch_mode", "max_batch", "vae")
    options = {k: args.pop(k) for k in worker_keys if k in args}
    options["threads"] = threads_for(options.get("threads"), args.get("cpus_per_replica", ServeConfig.cpus_per_replica))
    worker = worker_config(args.pop("bundle"), **options)
    if "autoscale" in args:
        args["autoscale"] = tuple(args["autoscale"])
    return build_app(ServeConfig(worker, **args))


def start(cfg: ServeConfig, ray_options: dict | None = None) -> str:
    """Start Ray (local, unless ``cfg.address``) if it is not running, then Serve and the
    application; returns the base URL. ``ray_options`` go to ``ray.init`` for a local Ray.

    Refused in one line before any replica starts: an address and port this machine cannot listen
    on (with a local Ray, whose proxy listens here), and replicas the cluster cannot place.
    """
    if cfg.address is None:
        check_listen(cfg.host, cfg.port)
    connect(cfg.address, ray_options)
    lo = cfg.autoscale[0] if cfg.autoscale is not None else cfg.replicas
    asks = {"CPU": ("--cpus-per-replica", cfg.cpus_per_replica), "GPU": ("--gpus-per-replica", cfg.gpus_per_replica)}
    check_resources(asks, max(lo, 1), "replicas")
    serve.start(http_options={"host": cfg.host, "port": cfg.port, "request_timeout_s": cfg.request_timeout_s})
    try:
        serve.run(build_app(cfg), name=cfg.app_name, route_prefix="/")
    except Exception as exc:
        status = serve.status().applications.get(cfg.app_name)
        found = project_error(exc, "\n".join(d.message for d in status.deployments.values()) if status else "")
        serve.delete(cfg.app_name)  # never leave a half-deployed application holding replicas
        if found is None:
            raise
        raise found from None  # the replica's own one line (a bundle it cannot load ...), not Serve's wrapping
    except BaseException:  # Ctrl-C while replicas load: the same
        serve.delete(cfg.app_name)
        raise
    return f"http://{cfg.host}:{cfg.port}"


def check_listen(host: str, port: int) -> None:
    """Refuse, in one line, an address and port this machine cannot listen on. Serve's proxy sets
    SO_REUSEPORT, so that a second server on a port a running one holds would start and the kernel
    would split the connections between the two; this probe sets SO_REUSEADDR only (a port whose
    last connections linger in TIME_WAIT is free), and fails on a port anyone listens on."""
    import errno
    import socket

    try:
        family, kind, proto, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
    except (socket.gaierror, UnicodeError) as exc:
        raise InputError(f"--host {host}: no such address ({getattr(exc, 'strerror', None) or exc})") from exc
    with socket.socket(family, kind, proto) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            why = {
                errno.EADDRINUSE: f"--port {port} on {host} is in use (another server, tiue-export serve or other, listens there): stop it or pick another --port",
                errno.EACCES: f"--port {port}: ports below 1024 need root (or CAP_NET_BIND_SERVICE): pick one from 1024 up",
                errno.EADDRNOTAVAIL: f"--host {host} is not an address of this machine: 127.0.0.1, 0.0.0.0 or one of its interfaces",
            }.get(exc.errno, f"cannot listen on {host}:{port} ({exc.strerror})")
            raise InputError(why) from exc


def stop(cfg: ServeConfig, shutdown_serve: bool = True) -> None:
    """Remove the application (and Serve, when this process started it)."""
    if shutdown_serve:
        serve.shutdown()
    else:
        serve.delete(cfg.app_name)


def run_forever(cfg: ServeConfig) -> None:
    """``tiue-export serve``: start, say where, serve until Ctrl-C, then remove the application
    (and the local Ray this process started)."""
    import click

    url = None
    try:
        url = start(cfg)
        node = ray._private.worker.global_worker.node
        click.echo(
            f"serving {cfg.worker.bundle} [{cfg.worker.backend}] at {url}: the playground at {url}/, POST /v1/images, "
            "POST /v1/images/generations (OpenAI's images API), GET /healthz, GET /v1/model"
        )
        if node is not None and getattr(node, "metrics_export_port", None):
            click.echo(f"Prometheus metrics (Ray Serve's and tiue_*) at http://{node.node_ip_address}:{node.metrics_export_port}/metrics")
        click.echo("Ctrl-C stops the server")
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        click.echo("stopping", err=True)
    finally:
        if ray.is_initialized():
            if cfg.address is None:
                ray.shutdown()  # the local Ray, Serve and the application with it
            elif url is not None:
                stop(cfg, shutdown_serve=False)  # the cluster's Serve stays for its other applications
