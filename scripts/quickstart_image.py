"""Render docs/img/quickstart.png: the default model, one pass, seeds 0-3, one row per prompt.

    python scripts/quickstart_image.py [--model PATH] [--out docs/img/quickstart.png]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

PROMPTS = (
    "a small red triangle on a blue background",
    "a large yellow circle on a black background",
    "a large green cross on a white background",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", type=Path, default=Path("docs/img/quickstart.png"))
    ap.add_argument("--seeds", type=int, default=4)
    ap.add_argument("--cell", type=int, default=128, help="pixels per image (nearest-neighbour upscale)")
    ap.add_argument("--gap", type=int, default=4)
    args = ap.parse_args()

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, prompt in enumerate(PROMPTS):
            out = Path(tmp) / str(i)
            cmd = [sys.executable, "-m", "tiue_export", "infer", "--prompt", prompt, "--num-images", str(args.seeds), "--out", str(out)]
            if args.model:
                cmd += ["--model", args.model]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            rows.append([Image.open(p).convert("RGB") for p in sorted(out.glob("*.png"))][: args.seeds])
    c, g = args.cell, args.gap
    sheet = Image.new("RGB", (args.seeds * c + (args.seeds - 1) * g, len(rows) * c + (len(rows) - 1) * g), "white")
    for r, images in enumerate(rows):
        for s, im in enumerate(images):
            sheet.paste(im.resize((c, c), Image.NEAREST), (s * (c + g), r * (c + g)))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = args.out.with_suffix(".tmp.png")
    sheet.save(tmp_out)
    tmp_out.replace(args.out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
