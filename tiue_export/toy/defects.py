"""Validation sets for the toy judge, built from the domain's renderer.

Degradations keep the caption true (a person would still pass the image): blur, noise, a colour
tint, and, in :func:`vae_roundtrip`, the model's own VAE. Defects make it false in the ways a
generator fails (a second object, background blotches, a shapeless or broken shape, the wrong
size). Each builder takes a seeded ``numpy.random.Generator`` and is deterministic with it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from . import domain

DEGRADATIONS = ("clean", "blur", "noise", "tint")
DEFECTS = ("second object", "blotches", "shapeless", "broken", "wrong size")


def _pil(image: np.ndarray):
    from PIL import Image

    return Image.fromarray(image)


def degrade(image: np.ndarray, kind: str, rng: np.random.Generator) -> np.ndarray:
    """``image`` blurred (Gaussian, radius 0.6-1.0 px), noised (Gaussian, sigma 6-10 levels) or
    tinted (every channel shifted by up to 15 levels); ``clean`` returns it unchanged."""
    from PIL import ImageFilter

    if kind == "clean":
        return image
    if kind == "blur":
        return np.asarray(_pil(image).filter(ImageFilter.GaussianBlur(rng.uniform(0.6, 1.0))))
    x = image.astype(np.float64)
    if kind == "noise":
        x = x + rng.normal(0, rng.uniform(6, 10), x.shape)
    elif kind == "tint":
        x = x + rng.uniform(-15, 15, 3)
    else:
        raise ValueError(f"unknown degradation {kind!r}")
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


def _paint(image: np.ndarray, mask: np.ndarray, rgb) -> np.ndarray:
    """``image`` with coverage ``mask`` (0..1, HxW) painted in ``rgb``."""
    m = mask[..., None]
    return np.clip(np.round(image * (1 - m) + np.asarray(rgb, np.float64) * m), 0, 255).astype(np.uint8)


def _polygon_cover(points, n: int) -> np.ndarray:
    from PIL import Image, ImageDraw

    ss = 4
    mask = Image.new("L", (n * ss, n * ss), 0)
    ImageDraw.Draw(mask).polygon([(float(x * ss), float(y * ss)) for x, y in points], fill=255)
    return np.asarray(mask.reduce(ss), np.float64) / 255.0


def _free_spot(box, radius: float, n: int, rng: np.random.Generator):
    """A centre at least ``radius`` from the border and clear of ``box`` (x0, y0, x1, y1), or None."""
    x0, y0, x1, y1 = box
    for _ in range(200):
        cx, cy = rng.uniform(radius + 1, n - radius - 1, 2)
        if cx + radius < x0 - 2 or cx - radius > x1 + 2 or cy + radius < y0 - 2 or cy - radius > y1 + 2:
            return cx, cy
    return None


def _other_color(a: domain.Attributes, rng: np.random.Generator, avoid=()) -> tuple[int, int, int]:
    names = [c for c in domain.COLORS if c != a.background and c not in avoid]
    return domain.COLORS[names[rng.integers(len(names))]]


def inject(a: domain.Attributes, kind: str, rng: np.random.Generator, resolution: int = 64) -> np.ndarray:
    """A render of ``a`` with defect ``kind`` (one of :data:`DEFECTS`)."""
    n = resolution
    if kind == "wrong size":
        other = "large" if a.size == "small" else "small"
        return domain.render(domain.Attributes(a.shape, a.color, other, a.background), rng, n)
    image, box = domain.render_with_box(a, rng, n)
    if kind == "second object":
        # Another shape (any shape, the stated colour or another) beside the first one; a large
        # first shape can leave no room, so the scene is drawn again until there is.
        while True:
            shape = domain.SHAPES[rng.integers(len(domain.SHAPES))]
            r = rng.uniform(0.09, 0.14) * n
            spot = _free_spot(box, r, n, rng)
            if spot is not None:
                pts = domain.shape_polygon(shape, r, rng.uniform(0, 360)) + np.asarray(spot)
                rgb = domain.COLORS[a.color] if rng.random() < 0.5 else _other_color(a, rng)
                return _paint(image, _polygon_cover(pts, n), rgb)
            image, box = domain.render_with_box(a, rng, n)
    if kind == "blotches":
        # Two to five soft blobs of a foreign colour on the background, 3-10% of the image in all.
        rgb = _other_color(a, rng, avoid=(a.color,))
        mask = np.zeros((n, n))
        gy, gx = np.mgrid[0:n, 0:n] + 0.5
        target = rng.uniform(0.03, 0.10) * n * n
        for _ in range(50):
            if mask.sum() >= target:
                break
            r = rng.uniform(2.5, 6.0)
            spot = _free_spot(box, r, n, rng)
            if spot is None:
                continue
            d = np.hypot(gx - spot[0], gy - spot[1]) / r
            mask = np.maximum(mask, np.clip(1.5 - d, 0, 1) * rng.uniform(0.6, 1.0))
        return _paint(image, mask, rgb)
    if kind in ("shapeless", "broken"):
        # the object erased, then a blob (or the broken shape) painted where it was
        x0, y0, x1, y1 = box
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        r = rng.uniform(*domain.SIZE_RANGES[a.size]) * n
        rgb = np.round(np.asarray(domain.COLORS[a.color], np.float64))
        canvas = _erase(image, box)
        if kind == "shapeless":
            # A jagged blob: 7-11 vertices at random radii, or a union of overlapping ellipses.
            k = rng.integers(7, 12)
            t = np.sort(rng.uniform(0, 2 * np.pi, k))
            rad = r * rng.uniform(0.35, 1.25, k)
            pts = np.stack([cx + rad * np.cos(t), cy + rad * np.sin(t)], 1)
            return _paint(canvas, _polygon_cover(pts, n), rgb)
        # broken: the stated shape cut in two by a background band through it
        pts = domain.shape_polygon(a.shape, r, rng.uniform(-domain.MAX_ROTATION[a.shape], domain.MAX_ROTATION[a.shape] + 1e-9))
        cover = _polygon_cover(pts + np.asarray([cx, cy]), n)
        th = rng.uniform(0, np.pi)
        gy, gx = np.mgrid[0:n, 0:n] + 0.5
        band = np.abs((gx - cx) * np.cos(th) + (gy - cy) * np.sin(th)) < rng.uniform(1.5, 2.5)
        return _paint(canvas, cover * ~band, rgb)
    raise ValueError(f"unknown defect {kind!r}")


def _erase(image: np.ndarray, box) -> np.ndarray:
    """``image`` with the object's box filled from the background around it (its border median)."""
    out = image.copy()
    n = image.shape[0]
    ring = np.concatenate([image[:2].reshape(-1, 3), image[-2:].reshape(-1, 3), image[:, :2].reshape(-1, 3), image[:, -2:].reshape(-1, 3)])
    x0, y0, x1, y1 = (int(np.floor(box[0])) - 1, int(np.floor(box[1])) - 1, int(np.ceil(box[2])) + 1, int(np.ceil(box[3])) + 1)
    out[max(y0, 0) : min(y1, n), max(x0, 0) : min(x1, n)] = np.median(ring, 0).astype(np.uint8)
    return out


def validation_set(kind: str, n: int, seed: int, resolution: int = 64, transform: Callable | None = None):
    """``n`` images of ``kind`` (a degradation or a defect) with the attributes their captions state.

    Captions come uniformly from both splits. ``transform`` (uint8 NHWC -> uint8 NHWC) is applied
    to the whole set, e.g. a round trip through a model's VAE.
    """
    rng = np.random.default_rng([seed, (DEGRADATIONS + DEFECTS).index(kind)])
    pool = domain.combos("train") + domain.combos("heldout")
    attrs = [pool[i] for i in rng.integers(0, len(pool), n)]
    images = np.stack(
        [
            degrade(domain.render(a, rng, resolution), kind, rng) if kind in DEGRADATIONS else inject(a, kind, rng, resolution)
            for a in attrs
        ]
    )
    return (transform(images) if transform is not None else images), attrs


def vae_roundtrip(model_dir) -> Callable[[np.ndarray], np.ndarray]:
    """A ``transform`` for :func:`validation_set`: encode (posterior mean) and decode with the VAE
    of the pipeline directory ``model_dir``, as every generated image is decoded."""
    import torch
    from diffusers import AutoencoderKL

    vae = AutoencoderKL.from_pretrained(str(model_dir), subfolder="vae").eval()

    @torch.no_grad()
    def transform(images: np.ndarray) -> np.ndarray:
        x = torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
        out = [vae.decode(vae.encode(b).latent_dist.mean).sample for b in x.split(32)]
        y = torch.cat(out).clamp(-1, 1).add(1).mul(127.5).round().byte()
        return y.permute(0, 2, 3, 1).numpy()

    return transform
