"""OpenAI's images API on ``tiue-export serve``, driven by the official ``openai`` client.

One replica on a local Ray (127.0.0.1 only), started and stopped in this module; every request
has a timeout, and the one request loop is bounded in count.
"""

from __future__ import annotations

import base64
import concurrent.futures as cf
import json
import threading

import pytest

pytest.importorskip("ray.serve", reason="the serve extra: pip install 'tiue-export[serve]'")
openai = pytest.importorskip("openai", reason="the official OpenAI client: pip install openai (in the test extra)")
requests = pytest.importorskip("requests")

from helpers.bundles import tiny_bundle  # noqa: E402
from helpers.serving import infer_pngs, serving  # noqa: E402

pytestmark = pytest.mark.slow

PROMPT = "a small red triangle on a blue background"
MAX_IMAGES, MAX_QUEUED = 4, 8


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    return tiny_bundle(tiny_models, tmp_path_factory, "sd21")


@pytest.fixture(scope="module")
def server(bundle):
    with serving(bundle, max_images=MAX_IMAGES, max_queued=MAX_QUEUED) as (url, cfg):
        yield url, cfg


@pytest.fixture(scope="module")
def client(server):
    return openai.OpenAI(base_url=server[0] + "/v1", api_key="not-checked", timeout=60, max_retries=0)


@pytest.fixture(scope="module")
def size(server):
    model = requests.get(server[0] + "/v1/model", timeout=60).json()
    return f"{model['image']['width']}x{model['image']['height']}"


def test_client_images_equal_infer(client, bundle, size, tmp_path, capsys):
    """client.images.generate: the files infer writes for the prompt and seeds, byte for byte;
    OpenAI's fields this model has no use for are ignored, as OpenAI ignores them."""
    raw = client.images.with_raw_response.generate(
        prompt=PROMPT, n=3, size=size, model=bundle.name, response_format="b64_json", quality="high", style="vivid", user="u1",
        extra_body={"seed": 5, "some_future_field": True},
    )
    body = json.loads(raw.http_response.text)
    assert set(body) == {"created", "data"} and all(set(d) == {"b64_json"} for d in body["data"])  # no revised_prompt, no url
    result = raw.parse()
    assert isinstance(result.created, int) and result.created > 0
    served = [base64.b64decode(d.b64_json) for d in result.data]
    expected = infer_pngs(bundle, tmp_path / "infer", PROMPT, 5, 3, capsys)
    assert served == [expected[5], expected[6], expected[7]]
    drawn = json.loads(raw.headers["X-Tiue-Images"])
    assert [d["seed"] for d in drawn] == [5, 6, 7] and "unet_decoder" in drawn[0]["batch"]["timings"]


def test_defaults_are_one_image_at_seed_0(client, bundle, tmp_path, capsys):
    result = client.images.generate(prompt=PROMPT)
    assert [base64.b64decode(d.b64_json) for d in result.data] == [infer_pngs(bundle, tmp_path, PROMPT, 0, 1, capsys)[0]]


def test_models_lists_the_bundle(client, bundle):
    assert [m.id for m in client.models.list()] == [bundle.name]


@pytest.mark.parametrize(
    "options, error, param, words",
    [
        ({"size": "1024x1024"}, "BadRequestError", "size", "draws {size} only"),
        ({"model": "dall-e-3"}, "NotFoundError", "model", "is not served here"),
        ({"response_format": "url"}, "BadRequestError", "response_format", "url is not offered"),
        ({"n": 0}, "BadRequestError", "n", "n must be in [1, 4]"),
        ({"n": MAX_IMAGES + 1}, "BadRequestError", "n", "not 5"),
        ({"prompt": ""}, "BadRequestError", "prompt", "prompt is empty"),
        ({"output_format": "webp"}, "BadRequestError", "output_format", "the images are PNGs"),
        ({"extra_body": {"seed": -1}}, "BadRequestError", "seed", "seed must be in [0,"),
        ({"extra_body": {"seed": "3"}}, "BadRequestError", "seed", "seed must be an integer"),
        ({"extra_body": {"vae": "tiny"}}, "BadRequestError", "vae", "this server draws with full"),
    ],
)
def test_refusals_are_openai_errors(client, size, options, error, param, words):
    options = {"prompt": PROMPT, **options}
    with pytest.raises(getattr(openai, error)) as caught:
        client.images.generate(**options)
    assert caught.value.body["param"] == param and caught.value.body["type"] == "invalid_request_error"
    assert words.format(size=size) in caught.value.body["message"]


@pytest.mark.parametrize(
    "raw, param, words",
    [
        (b"{not json", None, "not JSON"),
        (b"[1, 2]", None, "JSON object"),
        (b"{}", "prompt", "prompt is required"),
        (b"[" * 100_000, None, "nested too deeply"),
        (b'{"prompt": "\\ud800"}', "prompt", "not UTF-8"),
        (b'{"prompt": "a", "model": ["x"]}', "model", "model must be a string"),
        (b'{"prompt": "a", "n": "2"}', "n", "n must be an integer"),
        (b'{"prompt": "a", "stream": "yes"}', "stream", "stream must be a boolean"),
    ],
)
def test_malformed_bodies_get_the_error_envelope(server, raw, param, words):
    r = requests.post(server[0] + "/v1/images/generations", data=raw, timeout=30)
    assert r.status_code == 400
    assert set(r.json()) == {"error"} and set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["param"] == param and words in r.json()["error"]["message"]
    assert requests.get(server[0] + "/v1/images/generations", timeout=10).json()["error"]["type"] == "invalid_request_error"


def test_beyond_max_queued_is_503_in_the_envelope(server):
    """The native API's admission limit holds here too: four clients asking for MAX_IMAGES
    images each at once over a limit of MAX_QUEUED images; at least one is refused at once."""
    url, _ = server
    barrier = threading.Barrier(4, timeout=30)

    def one(seed):
        barrier.wait()
        return requests.post(url + "/v1/images/generations", json={"prompt": PROMPT, "n": MAX_IMAGES, "seed": seed}, timeout=60)

    refused = []
    for _ in range(3):  # bounded: a round where no requests overlapped is retried, at most twice
        with cf.ThreadPoolExecutor(4) as pool:
            answers = list(pool.map(one, range(4), timeout=120))
        assert {r.status_code for r in answers} <= {200, 503}
        refused = [r for r in answers if r.status_code == 503]
        if refused:
            break
    assert refused, "four concurrent requests over the queue limit were all taken"
    error = refused[0].json()["error"]
    assert refused[0].headers.get("Retry-After") == "1" and error["type"] == "server_error" and "queued" in error["message"]
