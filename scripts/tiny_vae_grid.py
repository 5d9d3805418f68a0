"""Side by side: the default student's images decoded by the full VAE (top row) and the shipped
tiny decoder (bottom row), and the PSNR between them; writes docs/img/tiny_vae.png.

    python scripts/tiny_vae_grid.py [--out docs/img/tiny_vae.png]
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

from tiue_export.compare import psnr
from tiue_export.files import write_png
from tiue_export.reference.builtin import default_model
from tiue_export.reference.pipeline import load_pipeline
from tiue_export.sampling import to_uint8_images
from tiue_export.toy.domain import eval_prompts

parser = argparse.ArgumentParser()
parser.add_argument("--out", default="docs/img/tiny_vae.png")
args = parser.parse_args()

prompts = eval_prompts("train", 4) + eval_prompts("heldout", 4)
pipe = load_pipeline(default_model(), vae="tiny")
z0 = torch.from_numpy(pipe.sample(prompts, list(range(len(prompts)))).latents)
with torch.no_grad():
    tiny = pipe.decode_float(z0)
    full = pipe.vae.decode(z0 / pipe.vae.config.scaling_factor).sample.float().numpy()
print(f"PSNR tiny vs full on {len(prompts)} student images: {psnr(np.clip(full, -1, 1), np.clip(tiny, -1, 1), 2.0):.2f} dB")
rows = [np.concatenate(list(to_uint8_images(x)), axis=1) for x in (full, tiny)]
write_png(args.out, np.concatenate(rows, axis=0), {"prompts": " | ".join(prompts)})
print(f"wrote {args.out}")
