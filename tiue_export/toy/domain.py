"""The built-in toy domain: one coloured shape on a plain background, captioned in a fixed grammar.

Every caption names four attributes (shape, colour, size, background) and admits many images:
position, size within its class, rotation, shades and a faint background gradient are random, but
each stated attribute stays unambiguous for a classifier (colours far apart in RGB, small and large
areas separated by a factor > 1.5, the object never clipped, its colour never the background's).

A fixed set of (shape, colour, background) triples never appears in training (split "heldout"),
while every single attribute value and every pair of values still does: the held-out prompts
measure compositional generalisation. numpy + Pillow only, so the evaluator can import it cheaply.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass

import numpy as np

from ..errors import InputError

SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "cross")

#: Base RGB of each colour name; renders jitter each channel by at most SHADE_JITTER.
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 180, 60),
    "blue": (40, 80, 220),
    "yellow": (235, 215, 40),
    "purple": (150, 50, 190),
    "white": (240, 240, 240),
    "black": (20, 20, 20),
    "gray": (128, 128, 128),
}

SIZES: tuple[str, ...] = ("small", "large")

BACKGROUNDS: tuple[str, ...] = ("black", "white", "gray", "blue")

ATTRIBUTES = ("shape", "color", "size", "background")

#: Radius of the object's reference circle as a fraction of the image side, per size class.
#: Small tops out at 0.16 and large starts at 0.25: areas differ by > 1.5x for every shape pair.
SIZE_RANGES: dict[str, tuple[float, float]] = {"small": (0.12, 0.16), "large": (0.25, 0.32)}

#: Largest per-channel shade change of the object and background colours (a little, never a
#: different colour name: the closest pair of base colours is > 100 apart in RGB).
SHADE_JITTER = 12

#: Peak-to-peak amplitude of the background's linear gradient, in 8-bit levels.
GRADIENT = 16

#: Largest rotation, in degrees, per shape: triangles turn freely; squares and crosses stay within
#: 30 degrees of upright so a square never reads as a diamond nor a cross as an "x".
MAX_ROTATION: dict[str, float] = {"circle": 0.0, "square": 30.0, "triangle": 180.0, "cross": 30.0}

#: Rendering supersampling factor (anti-aliasing by box downsampling with Pillow).
SUPERSAMPLE = 4

#: Fraction of the (shape, colour, background) triples held out of training.
HELDOUT_FRACTION = 0.12

#: Seed of the held-out draw; changing it changes the "heldout" split (and invalidates models).
HELDOUT_SEED = 20250521

_VOWELS = ("a", "e", "i", "o", "u")


@dataclass(frozen=True)
class Attributes:
    """The four stated attributes of one image."""

    shape: str
    color: str
    size: str
    background: str

    def __post_init__(self):
        for name, allowed in (("shape", SHAPES), ("color", tuple(COLORS)), ("size", SIZES), ("background", BACKGROUNDS)):
            value = getattr(self, name)
            if value not in allowed:
                raise InputError(f"unknown {name} {value!r}; expected one of {', '.join(allowed)}")
        if self.color == self.background:
            raise InputError(f"a {self.color} shape on a {self.background} background would be invisible")

    def as_dict(self) -> dict[str, str]:
        return {name: getattr(self, name) for name in ATTRIBUTES}


def article(word: str) -> str:
    """The indefinite article for ``word``: "an" before a vowel, else "a"."""
    return "an" if word[:1].lower() in _VOWELS else "a"


def caption(a: Attributes) -> str:
    """The caption of ``a``: "a small red triangle on a blue background"."""
    return f"{article(a.size)} {a.size} {a.color} {a.shape} on {article(a.background)} {a.background} background"


_CAPTION_RE = re.compile(
    r"^(?:a|an) (?P<size>\w+) (?P<color>\w+) (?P<shape>\w+) on (?:a|an) (?P<background>\w+) background$"
)


def parse_caption(text: str) -> Attributes:
    """The attributes named by a caption; the exact inverse of :func:`caption`.

    Case and runs of whitespace are ignored; anything else that :func:`caption` would not write
    raises :class:`InputError`.
    """
    norm = " ".join(str(text).lower().split())
    m = _CAPTION_RE.match(norm)
    if m is None:
        raise InputError(
            f"not a toy caption: {text!r}; expected 'a <size> <color> <shape> on a <background> background', "
            f"e.g. 'a small red triangle on a blue background'"
        )
    attrs = Attributes(**m.groupdict())
    if caption(attrs) != norm:
        raise InputError(f"not a toy caption: {text!r}; did you mean {caption(attrs)!r}?")
    return attrs


def _jitter(rgb: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """A shade of ``rgb``: each channel moved by at most SHADE_JITTER levels."""
    return np.clip(np.asarray(rgb, np.float64) + rng.uniform(-SHADE_JITTER, SHADE_JITTER, 3), 0, 255)


def shape_polygon(shape: str, radius: float, angle_deg: float) -> np.ndarray:
    """Vertices (N x 2, centred on 0) of ``shape`` whose area is comparable to a circle of ``radius``."""
    if shape == "circle":
        t = np.linspace(0.0, 2 * np.pi, 96, endpoint=False)
        pts = np.stack([np.cos(t), np.sin(t)], 1) * radius
    elif shape == "square":
        s = 0.9 * radius  # half side: area 3.24 r^2, close to the circle's 3.14 r^2
        pts = np.array([[-s, -s], [s, -s], [s, s], [-s, s]])
    elif shape == "triangle":
        R = 1.3 * radius  # circumradius: area 2.2 r^2
        t = np.deg2rad([-90.0, 30.0, 150.0])
        pts = np.stack([np.cos(t), np.sin(t)], 1) * R
    elif shape == "cross":
        a, w = radius, 0.38 * radius  # arm half-length and half-width: area 2.46 r^2
        pts = np.array(
            [[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a], [-w, w], [-a, w], [-a, -w], [-w, -w]]
        )
    else:
        raise InputError(f"unknown shape {shape!r}; expected one of {', '.join(SHAPES)}")
    th = np.deg2rad(angle_deg)
    rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    return pts @ rot.T


def render(a: Attributes, rng: np.random.Generator, resolution: int = 64) -> np.ndarray:
    """One random image (H x W x 3 uint8) showing exactly the attributes ``a``; deterministic per ``rng``."""
    return render_with_box(a, rng, resolution)[0]


def render_with_box(a: Attributes, rng: np.random.Generator, resolution: int = 64) -> tuple[np.ndarray, tuple[float, float, float, float]]:
    """:func:`render` and the object's bounding box ``(x0, y0, x1, y1)`` in pixels."""
    from PIL import Image, ImageDraw

    if resolution < 16:
        raise InputError(f"resolution must be at least 16 pixels, got {resolution}")
    ss = SUPERSAMPLE
    big = resolution * ss
    # Background: a jittered shade plus a faint linear gradient in a random direction (evaluated at
    # pixel centres: the box average of a linear ramp over a pixel is its value at the centre).
    bg = _jitter(COLORS[a.background], rng)
    theta = rng.uniform(0, 2 * np.pi)
    centres = (np.arange(resolution) * ss + (ss - 1) / 2) / (big - 1) - 0.5
    ramp = (np.cos(theta) * centres[None, :] + np.sin(theta) * centres[:, None]) * GRADIENT
    background = bg[None, None, :] + ramp[..., None]
    # Object: radius within its size class, random rotation, placed fully inside a 2-pixel margin.
    lo, hi = SIZE_RANGES[a.size]
    radius = rng.uniform(lo, hi) * big
    angle = rng.uniform(-MAX_ROTATION[a.shape], MAX_ROTATION[a.shape])
    pts = shape_polygon(a.shape, radius, angle)
    margin = 2 * ss
    (x0, y0), (x1, y1) = pts.min(0), pts.max(0)
    cx = rng.uniform(margin - x0, big - margin - x1)
    cy = rng.uniform(margin - y0, big - margin - y1)
    fg = np.round(_jitter(COLORS[a.color], rng))
    # Anti-aliasing: the object's coverage drawn at SUPERSAMPLE x, box-downsampled by Pillow.
    mask = Image.new("L", (big, big), 0)
    ImageDraw.Draw(mask).polygon([(float(x + cx), float(y + cy)) for x, y in pts], fill=255)
    cover = np.asarray(mask.reduce(ss), dtype=np.float64)[..., None] / 255.0
    image = np.clip(np.round(background * (1 - cover) + fg * cover), 0, 255).astype(np.uint8)
    box = ((x0 + cx) / ss, (y0 + cy) / ss, (x1 + cx) / ss, (y1 + cy) / ss)
    return image, tuple(float(v) for v in box)


def _triples() -> list[tuple[str, str, str]]:
    return [(s, c, b) for s, c, b in itertools.product(SHAPES, COLORS, BACKGROUNDS) if c != b]


def _heldout_triples() -> frozenset[tuple[str, str, str]]:
    """A fixed ~12% of (shape, colour, background) triples, keeping every value pair in training."""
    triples = _triples()
    rng = np.random.default_rng(HELDOUT_SEED)
    target = round(HELDOUT_FRACTION * len(triples))
    held: set[tuple[str, str, str]] = set()
    for i in rng.permutation(len(triples)):
        cand = held | {triples[i]}
        train = [t for t in triples if t not in cand]
        pairs = [{(t[0], t[1]) for t in train}, {(t[0], t[2]) for t in train}, {(t[1], t[2]) for t in train}]
        full = [{(t[0], t[1]) for t in triples}, {(t[0], t[2]) for t in triples}, {(t[1], t[2]) for t in triples}]
        if all(p == f for p, f in zip(pairs, full)):
            held = cand
        if len(held) == target:
            break
    return frozenset(held)


_HELDOUT = _heldout_triples()


def combos(split: str) -> list[Attributes]:
    """All attribute combinations of ``split`` ("train" or "heldout"), in a fixed order."""
    if split not in ("train", "heldout"):
        raise InputError(f"unknown split {split!r}; expected 'train' or 'heldout'")
    want_heldout = split == "heldout"
    return [
        Attributes(shape=s, color=c, size=z, background=b)
        for (s, c, b) in _triples()
        for z in SIZES
        if ((s, c, b) in _HELDOUT) == want_heldout
    ]


def sample_dataset(n: int, seed: int, split: str = "train", resolution: int = 64) -> tuple[np.ndarray, list[Attributes]]:
    """``n`` images (N x H x W x 3 uint8) with uniformly drawn combinations of ``split``, and their attributes."""
    if n < 0:
        raise InputError(f"the number of images must be >= 0, got {n}")
    pool = combos(split)
    rng = np.random.default_rng(seed)
    attrs = [pool[i] for i in rng.integers(0, len(pool), n)]
    images = np.zeros((n, resolution, resolution, 3), np.uint8)
    for i, a in enumerate(attrs):
        images[i] = render(a, rng, resolution)
    return images, attrs


def eval_prompts(split: str, n: int, seed: int = 0) -> list[str]:
    """``n`` distinct captions of ``split`` in a seeded random order."""
    pool = [caption(a) for a in combos(split)]
    if not 0 < n <= len(pool):
        raise InputError(f"the {split} split has {len(pool)} distinct prompts; asked for {n}")
    order = np.random.default_rng(seed).permutation(len(pool))
    return [pool[i] for i in order[:n]]


def all_captions() -> list[str]:
    """Every caption of both splits (the tokenizer's corpus)."""
    return [caption(a) for a in combos("train") + combos("heldout")]
