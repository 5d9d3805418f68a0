"""Embed a tiue-export bundle in a Python program, without torch.

Needs only the runtime's own requirements (numpy, onnxruntime, tokenizers, Pillow) and the
``tiue_export`` package (whose runtime never imports torch):

    python examples/python_embed.py BUNDLE "a photo of a cat" --seed 0 --out cat.png

``--save-inputs DIR`` also writes what the C++ example (engines/, ``tiue_infer``) needs to draw
the same image, plus Python's own results to compare with:

    DIR/ids.npy      int64 (B, L)        the bundle tokenizer's ids (C++ takes ids, not text)
    DIR/noise.npy    float32 (B, C, h, w) z_T from numpy PCG64, one generator per seed
    DIR/latents.npy  float32 (B, C, h, w) z0 from ONNX Runtime in Python
    DIR/images.npy   float32 (B, 3, H, W) the VAE output in [-1, 1]

    tiue_infer --bundle BUNDLE --ids DIR/ids.npy --noise DIR/noise.npy --out cat.ppm
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tiue_export.errors import InputError, TiueError
from tiue_export.files import atomic_path, write_png
from tiue_export.runtime import Pipeline
from tiue_export.sampling import initial_noise


def image_paths(out: Path, count: int) -> list[Path]:
    """``out`` for one image; ``stem_0.png, stem_1.png, ...`` for more (as tiue_infer names them)."""
    if count == 1:
        return [out]
    return [out.with_name(f"{out.stem}_{i}{out.suffix}") for i in range(count)]


def save_array(path: Path, array: np.ndarray) -> None:
    """``np.save`` atomically (a half-written .npy would be read as a short array)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def generate(bundle, prompts, seed: int = 0, threads: int = 0, verify: bool = True, float_images: bool = False):
    """Token ids, z_T, the pipeline's result for ``prompts`` (seeds ``seed, seed+1, ...``) and,
    with ``float_images``, the VAE's float output (one more VAE pass), else None."""
    with Pipeline.load(bundle, providers=["CPUExecutionProvider"], verify=verify, threads=threads) as pipe:
        seeds = [seed + i for i in range(len(prompts))]
        ids = pipe.tokenize(prompts)
        noise = initial_noise(seeds, pipe.latent_shape)
        result = pipe(prompts, seeds=seeds, noise=noise)
        images = pipe.runner("vae_decoder").infer({"latents": result.latents})["images"] if float_images else None
    return ids, noise, result, images


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description="Draw images from a tiue-export bundle with ONNX Runtime (no torch).")
    parser.add_argument("bundle", type=Path, help="bundle directory written by tiue-export export")
    parser.add_argument("prompts", nargs="+", help="one image per prompt")
    parser.add_argument("--seed", type=int, default=0, help="seed of the first prompt; the next ones count up")
    parser.add_argument("--out", type=Path, default=Path("out.png"), help="PNG path (stem_N.png for several prompts)")
    parser.add_argument("--save-inputs", type=Path, help="also write ids/noise/latents/images .npy here (for tiue_infer)")
    parser.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (0: all cores)")
    parser.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle's files")
    args = parser.parse_args(argv)
    try:
        if args.out.suffix.lower() != ".png":
            raise InputError(f"--out {args.out}: give a .png path")
        ids, noise, result, images = generate(
            args.bundle, args.prompts, args.seed, args.threads, not args.no_verify, float_images=args.save_inputs is not None
        )
        paths = image_paths(args.out, len(args.prompts))
        for path, image, prompt, seed in zip(paths, result.images, args.prompts, result.seeds):
            write_png(path, image, {"prompt": prompt, "seed": seed, "bundle": str(args.bundle), "provider": result.provider})
        if args.save_inputs is not None:
            args.save_inputs.mkdir(parents=True, exist_ok=True)
            for name, array in (("ids", ids), ("noise", noise), ("latents", result.latents), ("images", images)):
                save_array(args.save_inputs / f"{name}.npy", array)
    except TiueError as exc:
        print(f"python_embed: error: {exc}", file=sys.stderr)
        return exc.exit_code
    stages = ", ".join(f"{k} {v:.3f}s" for k, v in result.timings.items())
    print(f"python_embed: wrote {', '.join(str(p) for p in paths)} on {result.provider}; {stages}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
