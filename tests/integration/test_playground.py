"""The playground page of ``tiue-export serve`` in a real headless browser: the system's chromium
(Debian: apt install chromium) driven by Playwright; no browser is downloaded.

One replica on a local Ray (127.0.0.1 only), started and stopped in this module; every wait in
the browser has a timeout.
"""

from __future__ import annotations

import base64
import os
import shutil

import pytest
from helpers.bundles import tiny_vae_bundle
from helpers.serving import infer_pngs, serving

CHROMIUM = os.environ.get("TIUE_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


def in_browser(test):
    """A test that drives chromium: slow, and skipped, saying why, where there is none."""
    skip = pytest.mark.skipif(CHROMIUM is None, reason="no chromium on PATH (Debian: apt-get install chromium; or set TIUE_CHROMIUM)")
    return pytest.mark.slow(skip(test))


PROMPT = "a small red triangle on a blue background"
WAIT_MS = 60_000


@pytest.fixture(scope="module")
def bundle(tiny_models, tmp_path_factory):
    """A bundle with a tiny VAE decoder beside its full one: the page offers both."""
    return tiny_vae_bundle(tiny_models, tmp_path_factory)


@pytest.fixture(scope="module")
def page(bundle):
    pytest.importorskip("ray.serve", reason="the serve extra: pip install 'tiue-export[serve]'")
    playwright = pytest.importorskip("playwright.sync_api", reason="playwright drives the browser: pip install playwright (in the test extra)")
    with serving(bundle, max_images=4, max_queued=8) as (url, _), playwright.sync_playwright() as p:
        # --no-sandbox: chromium's sandbox refuses to start as root, as CI containers run
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], timeout=WAIT_MS)
        try:
            tab = browser.new_page(viewport={"width": 1100, "height": 900})
            tab.set_default_timeout(WAIT_MS)
            tab.goto(url + "/")
            tab.wait_for_function("document.getElementById('model').textContent.includes('K=')")
            yield tab
        finally:
            browser.close()


def generate(page, prompt: str, seed: str, n: int, vae: str = "full") -> None:
    page.fill("#prompt", prompt)
    page.fill("#seed", seed)
    page.fill("#n", str(n))
    page.select_option("#vae", vae)
    page.click("#generate")
    page.wait_for_function("!document.getElementById('generate').disabled && document.getElementById('status').textContent !== 'drawing…'")


def shown_pngs(page) -> tuple[list[str], list[bytes]]:
    sources = page.eval_on_selector_all("#results img", "images => images.map(i => i.src)")
    return sources, [base64.b64decode(s.removeprefix("data:image/png;base64,")) for s in sources]


@in_browser
def test_page_draws_infers_pngs(page, bundle, tmp_path, capsys):
    """Type a prompt, click, and the page shows infer's PNGs for that prompt and seed, byte for
    byte, each with a download link, its stages' timings and its PNG text."""
    assert page.eval_on_selector_all("#vae option", "options => options.map(o => o.value)") == ["full", "tiny"]
    generate(page, PROMPT, "7", 2)
    assert page.locator("#error").is_hidden()
    sources, served = shown_pngs(page)
    expected = infer_pngs(bundle, tmp_path, PROMPT, 7, 2, capsys)
    assert served == [expected[7], expected[8]]
    links = page.eval_on_selector_all("#results a", "links => links.map(a => [a.href, a.download])")
    assert links == [[sources[0], "tiue-seed-7.png"], [sources[1], "tiue-seed-8.png"]]
    card = page.inner_text("#results .card")
    assert "unet_decoder" in card and " ms" in card  # the stages' timings
    assert PROMPT in card and "one-pass" in card and "software" in card  # the PNG's own text


@in_browser
def test_page_draws_with_the_tiny_vae_decoder_when_picked(page, bundle, tmp_path, capsys):
    """The VAE picked on the page: infer --vae tiny's PNGs, from a server started with the full one."""
    generate(page, PROMPT, "3", 2, vae="tiny")
    assert page.locator("#error").is_hidden()
    expected = infer_pngs(bundle, tmp_path, PROMPT, 3, 2, capsys, "--vae", "tiny")
    assert shown_pngs(page)[1] == [expected[3], expected[4]]
    assert "tiny" in page.inner_text("#results .card")  # the PNG's own vae text


@pytest.mark.parametrize(
    "seed, prompt, message",
    [("-1", PROMPT, "seed must be in [0, 9223372036854775807], not -1"), ("abc", PROMPT, 'seed must be an integer, not "abc"'), ("0", " ", "prompt is empty")],
)
@in_browser
def test_malformed_input_shows_the_servers_400(page, seed, prompt, message):
    generate(page, prompt, seed, 1)
    assert page.locator("#error").is_visible()
    assert page.inner_text("#error") == message


def test_page_files_are_the_packages_own():
    """``GET /`` and ``/playground/NAME`` serve the shipped page files only: no other path resolves."""
    from tiue_export.serve.playground import PREFIX, asset

    page, media = asset("/")
    assert media.startswith("text/html") and b"/v1/images/generations" in asset(PREFIX + "playground.js")[0]
    for name in ("playground.js", "playground.css"):
        assert f"{PREFIX}{name}".encode() in page and asset(PREFIX + name) is not None  # what the page links, served
    for path in ("/", PREFIX + "playground.js", PREFIX + "playground.css"):  # nothing from another origin (no CDN): offline
        assert b"http" not in asset(path)[0], path
    for path in (PREFIX + "__init__.py", PREFIX + "../api.py", PREFIX + "..%2Fapi.py", "/etc/passwd", PREFIX, "/index.html"):
        assert asset(path) is None, path
