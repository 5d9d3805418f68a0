"""Render docs/img/playground.png: the playground page of ``tiue-export serve`` in headless chromium.

    python scripts/playground_screenshot.py [--bundle DIR] [--out docs/img/playground.png]

Without --bundle it exports the default model (with its tiny VAE decoder) to a temporary bundle.
Needs the serve extra, playwright and a chromium (Debian: apt install chromium).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

PROMPT = "a large yellow circle on a black background"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bundle", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("docs/img/playground.png"))
    ap.add_argument("--chromium", default=shutil.which("chromium") or shutil.which("chromium-browser"))
    ap.add_argument("--images", type=int, default=3)
    args = ap.parse_args()
    if args.chromium is None:
        sys.exit("no chromium found: apt install chromium, or give --chromium PATH")

    import ray
    from playwright.sync_api import sync_playwright

    from tiue_export.serve import app
    from tiue_export.serve.config import ServeConfig, worker_config

    out = args.out.resolve()
    with tempfile.TemporaryDirectory() as tmp:
        bundle = args.bundle
        if bundle is None:
            subprocess.run([sys.executable, "-m", "tiue_export", "export", "--out", str(Path(tmp) / "default-model"), "--vae", "tiny"], check=True)
            bundle = Path(tmp) / "default-model"
        # served by its directory's name: the page and the PNGs' model text show that, not a temporary path
        os.chdir(bundle.resolve().parent)
        bundle = Path(bundle.resolve().name)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        cfg = ServeConfig(worker_config(str(bundle), max_batch=4, threads=1), port=port)
        url = app.start(cfg, {"num_cpus": 2})
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path=args.chromium, args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1000, "height": 860})
                page.set_default_timeout(120_000)
                page.goto(url + "/")
                page.wait_for_function("document.getElementById('model').textContent.includes('K=')")
                page.fill("#prompt", PROMPT)
                page.fill("#n", str(args.images))
                page.click("#generate")
                page.wait_for_selector("#results img")
                out.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(out), full_page=True)
                browser.close()
        finally:
            app.stop(cfg)
            ray.shutdown()
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
