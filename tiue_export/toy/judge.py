"""The toy domain's strict judge: is this image the one clean object its caption states?

:func:`measure` looks at an image without its caption: the background's colour (from the border),
the objects on it (connected regions that differ from the background), the main object's colour,
size and shape, and what else is there. :func:`judge` compares that with the stated attributes.
An image is right only if

* there is **exactly one object** (no second shape, no object split in pieces),
* the **background is clean**: its stated colour, with no foreign blobs or stains,
* the object is a **recognisable** instance of a shape: the shape a second opinion names (the
  attribute classifier's forced choice, ``named``) fits its rotated template well enough
  (:data:`NAMED_FIT`: generated shapes are rounded and bowed), or else the best-fitting template
  of the four fits closely (:data:`MIN_IOU`); otherwise the shape is ``None`` (open set, not a
  forced choice). And it is one colour,
* and its colour, size and shape are the stated ones.

Classical measurements only (numpy, scipy.ndimage, Pillow): every threshold below is a named
constant with its reason, and ``tests/unit/test_toy_judge.py`` holds it to its targets on renders,
degraded renders and renders with each defect injected (:mod:`tiue_export.toy.defects`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import domain

#: The judge works at the domain's resolution; other sizes are resized to it.
RESOLUTION = 64
#: Border ring (pixels) whose median colour is the background's; the object keeps a 2-pixel margin.
BORDER = 2
#: RGB distance from the background above which a pixel is "something": the closest pair of
#: base colours is > 100 apart, while shade jitter, the gradient and a sampler's grain stay < 40.
FOREGROUND = 60.0
#: A region smaller than this (pixels at 64x64) is grain, not a blob.
SPECK = 6
#: Stained background: pixels outside the object (dilated by 2) that differ from the background by
#: more than STAIN, as a fraction of the image, above STAIN_FRACTION.
STAIN = 45.0
STAIN_FRACTION = 0.015
#: A second region of at least this many pixels, and at least SECOND_SHARE of the main one's area,
#: is a second object (smaller ones are stains, counted above).
SECOND_MIN = 12
SECOND_SHARE = 0.15
#: One colour: at least this share of the object's pixels lies within PURE_DIST / 2 of the line from
#: the background's colour to the object's (anti-aliased edges are mixtures of the two). A small
#: object's thin colour fringe (the VAE's, on one edge) costs up to a quarter of its pixels; a
#: second colour inside it costs more (hand-labelled generated images: clean 0.75-1.0).
PURE_SHARE = 0.7
PURE_DIST = 70.0
#: Recognisable: the intersection over union of the object's mask with the best rotated template
#: of a shape (same area and centroid) reaches MIN_IOU.
MIN_IOU = 0.85
#: A shape named by a second opinion (toy eval: the attribute classifier's forced choice) is taken
#: when its template fits at least this well, even where another template fits better: at 64x64
#: a generated small square's corners are rounded, so a circle's template fits it as well as a
#: square's, and a triangle's sides bow. Hand-labelled images of the default teacher and student
#: that a person names (rounded small squares, triangles with concave sides, ovals for circles) fit
#: the stated shape's template at 0.75-0.85; the blobs a person calls shapeless mostly below 0.72.
NAMED_FIT = 0.75
#: ... unless another convex template fits better by more than this (a rounded square fits the
#: circle's and the square's alike; a triangle named "square" does not).
NAMED_MARGIN = 0.06
#: A named cross is taken from this template IoU on when its outline is clearly notched (solidity
#: at most NAMED_CROSS_SOLIDITY): a generated small cross is four blobby arms that fit the template
#: at 0.6-0.76 with solidity 0.67-0.80, while shapeless blobs are notched less (0.80-0.90).
NAMED_FIT_NOTCHED = 0.6
NAMED_CROSS_SOLIDITY = 0.8
#: Solidity (area over convex hull area, at UPSAMPLE) below which an object has a cross's notches:
#: renders give crosses 0.78-0.82 and every other shape >= 0.98; the model's VAE rounds a small
#: cross's notches (up to 0.98) and a triangle's corners (down to 0.93).
NOTCHED = 0.95
#: A notched object is a cross from this template IoU on (a VAE-rounded small cross fits a square's
#: template about as well as a cross's).
MIN_IOU_NOTCHED = 0.8
#: Equivalent radius (fraction of the side, with the shape's area factor) between small and large:
#: renders have small <= 0.16 and large >= 0.25.
SIZE_SPLIT = 0.2
#: Rotations searched per shape (degrees): the template's symmetry period, in steps of STEP_DEG.
PERIOD = {"square": 90.0, "triangle": 120.0, "cross": 90.0}
STEP_DEG = 3.0

#: What :meth:`Measurement.defects` can report (the attributes are scored apart).
DEFECTS = ("stained", "objects", "shapeless", "multicoloured", "no object")


@dataclass(frozen=True)
class Measurement:
    """What an image shows, measured without its caption."""

    background: str  # nearest base colour of the border
    color: str | None  # nearest base colour of the main object (None: no object)
    size: str | None
    shape: str | None  # None: no object, or no shape fits (see ``iou``)
    objects: int  # regions that count as objects (>= SECOND_MIN px and >= SECOND_SHARE of the main one)
    stained: float  # fraction of the image that is foreign blobs on the background
    purity: float  # share of the object's pixels near its median colour
    iou: dict[str, float] = field(default_factory=dict)  # best template IoU per shape
    solidity: float = 1.0  # area / convex hull area: a cross's notches make it < NOTCHED
    radius: float = 0.0  # equivalent radius, fraction of the side

    def defects(self) -> list[str]:
        """What is wrong with the image whatever its caption says."""
        out = []
        if self.color is None:
            return ["no object"]
        if self.objects > 1:
            out.append("objects")
        if self.stained > STAIN_FRACTION:
            out.append("stained")
        if self.shape is None:
            out.append("shapeless")
        if self.purity < PURE_SHARE:
            out.append("multicoloured")
        return out


@dataclass(frozen=True)
class Verdict:
    """The judge's answer for one image and its caption."""

    measured: Measurement
    wrong: tuple[str, ...]  # failed attributes (shape, color, size, background) and defects

    @property
    def right(self) -> bool:
        return not self.wrong

    @property
    def reason(self) -> str:
        return ", ".join(self.wrong) if self.wrong else "ok"


def _nearest_color(rgb: np.ndarray, names) -> str:
    names = list(names)
    base = np.asarray([domain.COLORS[n] for n in names], np.float64)
    return names[int(np.argmin(((base - rgb) ** 2).sum(1)))]


def _background_plane(img: np.ndarray) -> np.ndarray:
    """The background as a plane per channel fitted to the border ring (robust: the median colour
    first, then a least-squares plane through the border pixels close to it)."""
    h, w, _ = img.shape
    ring = np.zeros((h, w), bool)
    ring[:BORDER], ring[-BORDER:], ring[:, :BORDER], ring[:, -BORDER:] = True, True, True, True
    ys, xs = np.nonzero(ring)
    px = img[ring]
    med = np.median(px, 0)
    keep = np.linalg.norm(px - med, axis=1) < FOREGROUND / 2
    if keep.sum() < 16:
        return np.broadcast_to(med, img.shape).copy()
    A = np.stack([np.ones(keep.sum()), xs[keep] / w - 0.5, ys[keep] / h - 0.5], 1)
    coef, *_ = np.linalg.lstsq(A, px[keep], rcond=None)
    gy, gx = np.mgrid[0:h, 0:w]
    B = np.stack([np.ones(h * w), gx.ravel() / w - 0.5, gy.ravel() / h - 0.5], 1)
    return (B @ coef).reshape(h, w, 3)


#: The shape fit works at this multiple of the image's resolution: a small shape is ~8 pixels
#: wide, and a cross's arms are 3; sub-pixel edges keep a rounded cross apart from a square.
UPSAMPLE = 4


def _template(shape: str, angle: float, radius: float, cx: float, cy: float, n: int) -> np.ndarray:
    """The mask (n x n, bool) of ``shape`` at ``radius`` and ``angle``, centred on (cx, cy)."""
    from PIL import Image, ImageDraw

    pts = domain.shape_polygon(shape, radius, angle)
    mask = Image.new("1", (n, n), 0)
    ImageDraw.Draw(mask).polygon([(float(x + cx), float(y + cy)) for x, y in pts], fill=1)
    return np.asarray(mask, bool)


def _area_factor(shape: str) -> float:
    pts = domain.shape_polygon(shape, 1.0, 0.0)
    x, y = pts[:, 0], pts[:, 1]
    return float(0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1))))


#: Area of each shape's polygon at radius 1 (see domain.shape_polygon).
AREA_FACTOR = {s: _area_factor(s) for s in domain.SHAPES}


def _fit_shapes(cover: np.ndarray) -> tuple[float, dict[str, float]]:
    """(solidity, best IoU of each shape's template against the object's coverage map, at :data:`UPSAMPLE`
    times the resolution (bicubic), both cut at one half: a blurred edge keeps its half-way level
    where the sharp edge was), and the object's solidity."""
    from PIL import Image

    n = cover.shape[0] * UPSAMPLE
    fine = np.asarray(Image.fromarray(cover.astype(np.float32), "F").resize((n, n), Image.BICUBIC))
    mask = fine >= 0.5
    area = float(mask.sum())
    if area < 3:
        return 1.0, dict.fromkeys(domain.SHAPES, 0.0)
    gy, gx = np.mgrid[0:n, 0:n] + 0.5
    cx, cy = float((mask * gx).sum() / area), float((mask * gy).sum() / area)
    best = {}
    for shape in domain.SHAPES:
        radius = np.sqrt(area / AREA_FACTOR[shape])
        angles = [0.0] if shape == "circle" else np.arange(0.0, PERIOD[shape], STEP_DEG)
        top = 0.0
        for a in angles:
            t = _template(shape, float(a), radius, cx, cy, n)
            top = max(top, float((t & mask).sum() / ((t | mask).sum() + 1e-9)))
        best[shape] = top
    from scipy.spatial import ConvexHull, QhullError

    try:
        solidity = area / ConvexHull(np.argwhere(mask)).volume
    except QhullError:  # a line of pixels
        solidity = 1.0
    return float(solidity), best


def recognise(iou: dict[str, float], solidity: float) -> str | None:
    """The shape whose template fits best (None below :data:`MIN_IOU`). A notched object is a cross
    when the cross template fits at all (:data:`MIN_IOU_NOTCHED`); a convex one is never a cross."""
    if solidity < NOTCHED and iou["cross"] >= MIN_IOU_NOTCHED:
        return "cross"
    convex = {k: v for k, v in iou.items() if k != "cross"}
    best = max(convex, key=convex.get)
    return best if convex[best] >= MIN_IOU else None


def named_fits(named: str, iou: dict[str, float], solidity: float) -> bool:
    """Whether the object is a recognisable ``named`` (see :data:`NAMED_FIT` and the constants after it)."""
    if named == "cross":
        return solidity <= NAMED_CROSS_SOLIDITY and iou.get("cross", 0.0) >= NAMED_FIT_NOTCHED
    others = [v for k, v in iou.items() if k not in (named, "cross")]
    fit = iou.get(named, 0.0)
    return fit >= NAMED_FIT and fit >= max(others, default=0.0) - NAMED_MARGIN


def measure(image: np.ndarray, named: str | None = None) -> Measurement:
    """Measure one uint8 HxWx3 image (any size; resized to :data:`RESOLUTION`).

    ``named``: a shape a second opinion names for the image (toy eval: the attribute classifier's
    forced choice); it is taken where :func:`named_fits`, else the best template decides.
    """
    from scipy import ndimage

    img = np.asarray(image)
    if img.shape[:2] != (RESOLUTION, RESOLUTION):
        from PIL import Image

        img = np.asarray(Image.fromarray(img).resize((RESOLUTION, RESOLUTION), Image.BICUBIC))
    img = img.astype(np.float64)
    bg = _background_plane(img)
    bg_name = _nearest_color(np.median(bg.reshape(-1, 3), 0), domain.COLORS)
    dist = np.linalg.norm(img - bg, axis=2)
    fg = dist > FOREGROUND
    labels, n = ndimage.label(fg, structure=np.ones((3, 3)))
    sizes = ndimage.sum_labels(np.ones_like(dist), labels, np.arange(1, n + 1)) if n else np.zeros(0)
    if n == 0 or sizes.max() < SPECK:
        return Measurement(bg_name, None, None, None, 0, float((dist > STAIN).mean()), 0.0)
    main = int(np.argmax(sizes)) + 1
    obj = labels == main
    others = [i for i, s in enumerate(sizes, 1) if i != main and s >= SECOND_MIN and s >= SECOND_SHARE * sizes[main - 1]]
    objects = 1 + len(others)
    # The object's colour: the median of its confidently-foreground core.
    core = ndimage.binary_erosion(obj) if obj.sum() > 30 else obj
    core = core if core.any() else obj
    color_rgb = np.median(img[core], 0)
    color = _nearest_color(color_rgb, domain.COLORS)
    # Coverage: where each pixel lies between the background and the object's colour (anti-aliased
    # edges count in part), restricted to the object's neighbourhood.
    near = ndimage.binary_dilation(obj, iterations=2)
    span = color_rgb - bg
    alpha = np.clip(((img - bg) * span).sum(2) / np.maximum((span * span).sum(2), 1e-9), 0, 1)
    cover = alpha * near
    # One colour: the object's pixels lie on the line from the background to its colour (edges
    # are mixtures of the two); a second colour lies off it.
    residual = np.linalg.norm(img - (bg + alpha[..., None] * span), axis=2)
    purity = float((residual[obj] < PURE_DIST / 2).mean())
    stains = (dist > STAIN) & ~near & ~np.isin(labels, [main, *others])
    stained = float(ndimage.binary_opening(stains).mean()) if stains.any() else 0.0
    solidity, iou = _fit_shapes(cover)
    shape = recognise(iou, solidity)
    if named is not None and named_fits(named, iou, solidity):
        shape = named
    radius = float(np.sqrt(cover.sum() / AREA_FACTOR[shape or "circle"]) / RESOLUTION)
    size = "small" if radius < SIZE_SPLIT else "large"
    return Measurement(bg_name, color, size, shape, objects, stained, purity, iou, solidity, radius)


def judge(image: np.ndarray, stated: domain.Attributes, named: str | None = None) -> Verdict:
    """The verdict on ``image`` for its caption's attributes ``stated`` (``named``: see :func:`measure`)."""
    m = measure(image, named)
    wrong = m.defects()
    if m.color is not None:
        wrong += [a for a in domain.ATTRIBUTES if a != "shape" and getattr(m, a) != getattr(stated, a)]
        if m.shape is not None and m.shape != stated.shape:
            wrong.append("shape")
    elif m.background != stated.background:
        wrong.append("background")
    return Verdict(m, tuple(wrong))


def judge_images(images: np.ndarray, stated: list[domain.Attributes], named: list[str] | None = None) -> list[Verdict]:
    """:func:`judge` for a batch (uint8 NHWC), with one ``named`` shape per image or none."""
    named = list(named) if named is not None else [None] * len(images)
    return [judge(im, a, n) for im, a, n in zip(images, stated, named)]
