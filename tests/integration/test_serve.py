"""``tiue-export serve`` on a real local Ray (127.0.0.1 only), started and stopped in this module.

Every request loop here is bounded in count and in time; every HTTP call has a timeout.
"""

from __future__ import annotations

import concurrent.futures as cf
import io
import threading
import time

import pytest

pytest.importorskip("ray.serve", reason="the serve extra: pip install 'tiue-export[serve]'")
requests = pytest.importorskip("requests")

from helpers.bundles import tiny_bundle, tiny_vae_bundle  # noqa: E402
from helpers.cli import run_cli  # noqa: E402
from helpers.serving import serving  # noqa: E402

pytestmark = pytest.mark.slow

PROMPTS = ("a red square", "a blue circle on green", "two yellow stars", "an orange triangle")
MAX_BATCH, MAX_QUEUED = 4, 16


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    return tiny_bundle(tiny_models, tmp_path_factory, "sd21")


@pytest.fixture(scope="module")
def server(bundle):
    """Two model replicas (one CPU each) behind the API, on a Ray of two CPUs."""
    with serving(bundle, max_batch=MAX_BATCH, replicas=2, max_queued=MAX_QUEUED, retries=3) as (url, cfg):
        yield url, cfg


def post(url: str, body, timeout: float = 60.0):
    return requests.post(url + "/v1/images", json=body, timeout=timeout)


def infer_pngs(bundle, tmp_path, capsys) -> dict[tuple[str, int], bytes]:
    """``tiue-export infer`` files by (prompt, seed), read from their own PNG text."""
    from PIL import Image

    out = tmp_path / "infer"
    args = ["infer", "--backend", "onnxruntime", "--model", str(bundle), "--num-images", "8", "--seed", "0", "--out", str(out)]
    code, _, err = run_cli([*args, *(a for p in PROMPTS for a in ("--prompt", p))], capsys)
    assert code == 0, err
    files = {}
    for path in out.glob("*.png"):
        data = path.read_bytes()
        text = Image.open(io.BytesIO(data)).text
        files[(text["prompt"], int(text["seed"]))] = data
    return files


def test_concurrent_requests_equal_infer_and_share_calls(server, bundle, tmp_path, capsys):
    url, _ = server
    expected = infer_pngs(bundle, tmp_path, capsys)
    jobs = [(p, s) for p in PROMPTS for s in range(8)]
    assert len(jobs) == 32 and set(jobs) == set(expected)

    def one(job):
        r = post(url, {"prompt": job[0], "seed": job[1]})
        return job, r.status_code, r.content, r.headers.get("X-Tiue-Batch-Id"), int(r.headers.get("X-Tiue-Batch-Size", 0))

    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(8) as pool:
        results = list(pool.map(one, jobs, timeout=120))
    seconds = time.perf_counter() - t0
    assert [code for _, code, *_ in results] == [200] * 32
    different = [job for job, _, data, *_ in results if data != expected[job]]
    assert not different, f"{len(different)} of 32 served PNGs differ from infer's, e.g. {different[0]}"
    calls = {batch for *_, batch, _ in results}
    print(f"32 requests, 8 client threads: {seconds:.2f} s, {len(calls)} pipeline calls, batch sizes {sorted(s for *_, s in results)}")
    assert len(calls) < 32, "no two requests shared a pipeline call"


def test_json_response_several_images(server, bundle):
    import base64

    from PIL import Image

    url, _ = server
    r = post(url, {"prompts": list(PROMPTS[:2]), "seed": 5, "num_images": 2})
    assert r.status_code == 200 and r.headers["content-type"] == "application/json"
    images = r.json()["images"]
    assert [(i["prompt"], i["seed"]) for i in images] == [(PROMPTS[0], 5), (PROMPTS[0], 6), (PROMPTS[1], 5), (PROMPTS[1], 6)]
    for entry in images:
        text = Image.open(io.BytesIO(base64.b64decode(entry["png"]))).text
        assert text == {k: str(v) for k, v in entry["metadata"].items()}
        assert text["model"] == str(bundle) and text["sampler"] == "one-pass"


def test_health_and_model(server, bundle):
    url, _ = server
    health = requests.get(url + "/healthz", timeout=10)
    assert health.status_code == 200 and health.json()["status"] == "ok"
    model = requests.get(url + "/v1/model", timeout=30).json()
    assert model["model"] == str(bundle) and model["k"] > 0 and model["image"]["height"] > 0
    assert model["backend"] == "onnxruntime" and model["batching"] in ("batched", "per-image")
    assert requests.get(url + "/nowhere", timeout=10).status_code == 404
    assert requests.get(url + "/v1/images", timeout=10).status_code == 405


@pytest.mark.parametrize(
    "body, field",
    [
        (b"{not json", None),
        ([1, 2], None),
        ({}, "prompt"),
        ({"prompt": "a", "prompts": ["b"]}, "prompt"),
        ({"prompt": ""}, "prompt"),
        ({"prompt": 3}, "prompt"),
        ({"prompts": []}, "prompts"),
        ({"prompts": ["ok", 7]}, "prompts[1]"),
        ({"prompt": "a", "seed": -1}, "seed"),
        ({"prompt": "a", "seed": "3"}, "seed"),
        ({"prompt": "a", "seed": True}, "seed"),
        ({"prompt": "a", "num_images": 0}, "num_images"),
        ({"prompt": "a", "num_images": MAX_QUEUED + 1}, "num_images"),
        ({"prompt": "a", "num_images": 2, "response": "png"}, "response"),
        ({"prompt": "a", "response": "gif"}, "response"),
        ({"prompt": "a", "steps": 50}, "steps"),
        ({"prompt": "a", "vae": "tiny"}, "vae"),  # a bundle without a tiny VAE decoder
        (b"[" * 100_000, None),  # nested past the JSON parser's recursion limit
        (b"\xff\xfe{}", None),
        ({"prompt": "\ud800"}, "prompt"),  # a lone surrogate: no text to encode
        ({"prompt": "x" * 10_001}, "prompt"),
        ({"prompts": ["ok", " "]}, "prompts[1]"),
    ],
)
def test_bad_request_is_400_naming_the_field(server, body, field):
    url, _ = server
    if isinstance(body, bytes):
        r = requests.post(url + "/v1/images", data=body, timeout=10)
    else:
        r = post(url, body, timeout=10)
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["field"] == field and error["message"]


def test_beyond_max_queued_is_503_at_once(server):
    """Eight clients asking for max-queued images each at the same moment: one is taken, the
    others are refused at once (not queued)."""
    url, cfg = server
    barrier = threading.Barrier(8, timeout=30)

    def one(seed):
        barrier.wait()
        t0 = time.perf_counter()
        r = post(url, {"prompt": "a red square", "seed": seed, "num_images": MAX_QUEUED})
        return r.status_code, time.perf_counter() - t0, r

    refused = []
    for _ in range(3):  # bounded: a round where no two requests overlapped is retried, at most twice
        with cf.ThreadPoolExecutor(8) as pool:
            results = list(pool.map(one, range(8), timeout=120))
        assert {code for code, _, _ in results} <= {200, 503}
        refused = [(t, r) for code, t, r in results if code == 503]
        if refused:
            break
    assert refused, "eight concurrent requests of max-queued images each were all taken"
    worst = max(t for t, _ in refused)
    print(f"503 latency: max {worst * 1000:.0f} ms over {len(refused)} refusals")
    assert worst < 2.0
    r = refused[0][1]
    assert r.headers.get("Retry-After") == "1" and "queued" in r.json()["error"]["message"]


def test_killed_replica_loses_no_request(server):
    """A model replica is killed under load: every request is answered (retried on the other
    replica) or refused explicitly; none hangs; the service recovers."""
    import ray

    url, _ = server
    stop_at = time.monotonic() + 6.0
    results = []

    def client(k):
        for i in range(40):  # bounded in count and in time
            if time.monotonic() > stop_at:
                return
            try:
                r = post(url, {"prompt": PROMPTS[k % 4], "seed": 1000 + 40 * k + i}, timeout=60)
                results.append((r.status_code, r.headers.get("content-type", "")))
            except requests.RequestException as exc:  # a hang would show here, as a timeout
                results.append((type(exc).__name__, ""))

    with cf.ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(client, k) for k in range(6)]
        time.sleep(1.5)
        names = [a for a in ray.util.list_named_actors(all_namespaces=True) if "#Generator#" in a["name"]]
        assert names, "no Generator replica found"
        killed = names[0]["name"]
        ray.kill(ray.get_actor(killed, namespace=names[0]["namespace"]), no_restart=True)
        for f in futures:
            f.result(timeout=120)
    codes = [c for c, _ in results]
    resubmitted = requests.get(url + "/healthz", timeout=10).json()["resubmitted_images"]
    print(f"replica killed under load: {len(codes)} requests, answers {sorted(set(map(str, codes)))}, {codes.count(200)} images, {resubmitted} resubmitted")
    assert codes and all(c in (200, 503) for c in codes), codes
    assert all(t == "application/json" for c, t in results if c == 503)
    for _ in range(60):  # recovery, bounded to a minute: two replicas again, the killed one replaced
        replicas = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True) if "#Generator#" in a["name"]]
        r = post(url, {"prompt": "a red square", "seed": 0}, timeout=30)
        if r.status_code == 200 and len(replicas) == 2 and killed not in replicas:
            break
        time.sleep(1)
    assert r.status_code == 200 and len(replicas) == 2 and killed not in replicas, replicas


def test_tiny_vae_replica_draws_infers_pngs(server, tiny_models, tmp_path_factory, tmp_path, capsys):
    """serve --vae tiny: a model replica of a bundle with a tiny VAE decoder draws the PNGs of
    infer --vae tiny, byte for byte (a second application on the module's Ray, through its handle:
    no CPU reserved, no HTTP route)."""
    from PIL import Image
    from ray import serve

    from tiue_export.serve.app import build_app
    from tiue_export.serve.config import ServeConfig, worker_config

    tiny = tiny_vae_bundle(tiny_models, tmp_path_factory)
    worker = worker_config(str(tiny), max_batch=2, threads=1, vae="tiny")
    cfg = ServeConfig(worker, max_queued=4, max_images=2, cpus_per_replica=0, app_name="tiny-vae")
    serve.run(build_app(cfg), name=cfg.app_name, route_prefix=None)
    try:
        handle = serve.get_deployment_handle("Generator", app_name=cfg.app_name)
        drawn = [handle.sample.remote((PROMPTS[0], seed)).result(timeout_s=120) for seed in (0, 1)]
        model = handle.describe.remote().result(timeout_s=60)
    finally:
        serve.delete(cfg.app_name)
    assert model["vae"] == "tiny"
    out = tmp_path / "infer"
    args = ["infer", "--backend", "onnxruntime", "--model", str(tiny), "--vae", "tiny", "--prompt", PROMPTS[0], "--num-images", "2", "--out", str(out)]
    code, _, err = run_cli(args, capsys)
    assert code == 0, err
    files = {int(Image.open(p).text["seed"]): p.read_bytes() for p in out.glob("*.png")}
    assert [d["png"] for d in drawn] == [files[0], files[1]] and drawn[0]["metadata"]["vae"] == "tiny"


def test_metrics_include_images_and_stages(server):
    import ray

    port = ray._private.worker.global_worker.node.metrics_export_port
    text = ""
    for _ in range(30):  # the metrics agent exports every few seconds: bounded to ~30 s
        text = requests.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text
        if "tiue_images" in text and "tiue_stage_seconds" in text:
            break
        time.sleep(1)
    assert "tiue_images" in text and "tiue_stage_seconds" in text and "ray_serve_" in text


def test_a_replica_error_surfaces_as_its_own_line():
    from tiue_export.errors import ModelError, TiueError
    from tiue_export.serve.worker import project_error

    remote = RuntimeError('The actor died ...\n  File "x.py", line 1\ntiue_export.errors.ModelError: bundle b has no int8 graphs (it is fp32): run tiue-export calibrate b')
    found = project_error(remote)
    assert isinstance(found, ModelError) and str(found).startswith("bundle b has no int8 graphs")
    assert isinstance(project_error(RuntimeError("x"), "tiue_export.errors.Nonsense: y"), TiueError)
    assert project_error(RuntimeError("deploy failed")) is None
    try:
        raise RuntimeError("wrapped") from ModelError("inner")
    except RuntimeError as exc:
        assert str(project_error(exc)) == "inner"


def test_application_builder_for_config_files_and_kuberay(bundle):
    from ray.serve import Application

    from tiue_export.serve.app import from_args

    assert isinstance(from_args({"bundle": str(bundle), "max_batch": 2, "autoscale": [1, 2], "max_queued": 16}), Application)
    with pytest.raises(ValueError, match="bundle"):
        from_args({"max_batch": 2})


def test_replica_code_imports_no_torch(bundle):
    """What a replica or actor runs (the worker, the app, generate) on a torch-free node."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "import tiue_export.serve.app, tiue_export.serve.generate, tiue_export.cli.serve, tiue_export.cli.generate\n"
        "from tiue_export.serve.worker import ImageWorker, WorkerConfig\n"
        f"w = ImageWorker(WorkerConfig({str(bundle)!r}, max_batch=2))\n"
        "assert len(w.sample([('a red square', 0), ('a red square', 1)]).images) == 2\n"
        "heavy = [m for m in ('torch', 'diffusers', 'transformers') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.mark.parametrize(
    "args, message",
    [
        (["/no/such/bundle"], "no such"),
        (["BUNDLE", "--replicas", "2", "--autoscale", "1:2"], "--replicas or --autoscale"),
        (["BUNDLE", "--autoscale", "3"], "MIN:MAX"),
        (["BUNDLE", "--max-batch", "8", "--max-queued", "4"], "--max-queued 4"),
        (["BUNDLE", "--backend", "torch"], "is not one of"),
        (["BUNDLE", "--backend", "onnxruntime-int8"], "int8"),
        (["BUNDLE", "--vae", "tiny"], "re-export it with --vae tiny"),
    ],
)
def test_serve_cli_refuses_bad_options_in_one_line(bundle, capsys, args, message):
    code, _, err = run_cli(["serve", *[str(bundle) if a == "BUNDLE" else a for a in args]], capsys)
    assert code == 2, err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
