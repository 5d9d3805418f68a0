"""The toy domain: captions, splits and renders (numpy + Pillow only)."""

from __future__ import annotations

import itertools
import subprocess
import sys

import numpy as np
import pytest

from tiue_export.errors import InputError
from tiue_export.toy import domain as d


def _object_mask(image: np.ndarray, a: d.Attributes) -> np.ndarray:
    """Pixels nearer the object's base colour than the background's."""
    img = image.astype(np.float64)
    to_fg = np.linalg.norm(img - np.array(d.COLORS[a.color]), axis=-1)
    to_bg = np.linalg.norm(img - np.array(d.COLORS[a.background]), axis=-1)
    return to_fg < to_bg


def test_domain_does_not_import_torch():
    code = "import sys, tiue_export.toy.domain; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_attribute_tables_are_consistent():
    assert d.ATTRIBUTES == ("shape", "color", "size", "background")
    assert set(d.BACKGROUNDS) <= set(d.COLORS)
    assert d.SIZES == ("small", "large")
    # Colours are clearly distinct even after the shade jitter on both sides.
    for (n1, c1), (n2, c2) in itertools.combinations(d.COLORS.items(), 2):
        gap = np.linalg.norm(np.subtract(c1, c2))
        assert gap > 4 * d.SHADE_JITTER * np.sqrt(3), (n1, n2, gap)


def test_caption_round_trip_for_every_combination():
    for a in d.combos("train") + d.combos("heldout"):
        text = d.caption(a)
        assert d.parse_caption(text) == a
        assert d.parse_caption("  " + text.upper().replace(" ", "   ") + " ") == a


def test_caption_grammar():
    a = d.Attributes(shape="triangle", color="red", size="small", background="blue")
    assert d.caption(a) == "a small red triangle on a blue background"
    assert d.article("orange") == "an"
    assert d.article("ellipse") == "an"
    assert d.article("red") == "a"
    for a in d.combos("train"):
        words = d.caption(a).split()
        for art, nxt in zip(words, words[1:]):
            if art in ("a", "an"):
                assert art == ("an" if nxt[0] in "aeiou" else "a")


@pytest.mark.parametrize(
    "text, message",
    [
        ("a small red hexagon on a blue background", "unknown shape 'hexagon'"),
        ("a tiny red circle on a blue background", "unknown size 'tiny'"),
        ("a small blue circle on a blue background", "would be invisible"),
        ("a small red circle on a purple background", "unknown background 'purple'"),
        ("red circle", "not a toy caption"),
        ("an small red circle on a blue background", "did you mean 'a small red circle on a blue background'"),
        ("", "not a toy caption"),
    ],
)
def test_parse_caption_rejects(text, message):
    with pytest.raises(InputError, match=message):
        d.parse_caption(text)


def test_render_is_deterministic_and_varied():
    a = d.Attributes(shape="square", color="yellow", size="large", background="black")
    x1 = d.render(a, np.random.default_rng(7))
    x2 = d.render(a, np.random.default_rng(7))
    x3 = d.render(a, np.random.default_rng(8))
    assert x1.shape == (64, 64, 3) and x1.dtype == np.uint8
    np.testing.assert_array_equal(x1, x2)
    assert np.abs(x1.astype(int) - x3.astype(int)).mean() > 1.0  # one caption, many images
    assert d.render(a, np.random.default_rng(0), resolution=32).shape == (32, 32, 3)


def test_sample_dataset_is_deterministic():
    x1, a1 = d.sample_dataset(12, seed=3)
    x2, a2 = d.sample_dataset(12, seed=3)
    np.testing.assert_array_equal(x1, x2)
    assert a1 == a2 and x1.shape == (12, 64, 64, 3)
    x3, a3 = d.sample_dataset(12, seed=4)
    assert a3 != a1
    assert set(a1) <= set(d.combos("train"))
    _, held = d.sample_dataset(12, seed=3, split="heldout")
    assert set(held) <= set(d.combos("heldout"))


def test_heldout_split_is_compositional():
    train, held = d.combos("train"), d.combos("heldout")
    key = lambda a: (a.shape, a.color, a.background)  # noqa: E731
    assert {key(a) for a in train}.isdisjoint({key(a) for a in held})
    n_triples = len({key(a) for a in train + held})
    assert 0.08 <= len({key(a) for a in held}) / n_triples <= 0.16
    # Every value, and every pair of values, appears in training.
    for name, values in zip(d.ATTRIBUTES, (d.SHAPES, tuple(d.COLORS), d.SIZES, d.BACKGROUNDS)):
        assert {getattr(a, name) for a in train} == set(values), name
    for n1, n2 in itertools.combinations(d.ATTRIBUTES, 2):
        held_pairs = {(getattr(a, n1), getattr(a, n2)) for a in held}
        train_pairs = {(getattr(a, n1), getattr(a, n2)) for a in train}
        assert held_pairs <= train_pairs, (n1, n2)
    # Every caption with a shape colour different from its background is in exactly one split.
    every = set(itertools.product(d.SHAPES, d.COLORS, d.SIZES, d.BACKGROUNDS))
    every = {d.Attributes(*t) for t in every if t[1] != t[3]}
    assert set(train) | set(held) == every and len(train) + len(held) == len(every)


def test_object_in_frame_and_sizes_separated():
    rng = np.random.default_rng(0)
    areas = {size: [] for size in d.SIZES}
    for shape, size in itertools.product(d.SHAPES, d.SIZES):
        for color, bg in (("red", "white"), ("white", "black"), ("black", "gray"), ("yellow", "blue")):
            for _ in range(6):
                a = d.Attributes(shape=shape, color=color, size=size, background=bg)
                mask = _object_mask(d.render(a, rng), a)
                border = np.concatenate([mask[0], mask[-1], mask[:, 0], mask[:, -1]])
                assert not border.any(), f"{d.caption(a)} touches the frame"
                areas[size].append(mask.sum())
    assert min(areas["large"]) > 1.4 * max(areas["small"]), (min(areas["large"]), max(areas["small"]))
    assert min(areas["small"]) > 30  # a small object still has enough pixels to classify


def test_render_with_box_bounds_the_object():
    rng = np.random.default_rng(5)
    for a in d.combos("train")[::7]:
        state = rng.bit_generator.state
        image, (x0, y0, x1, y1) = d.render_with_box(a, rng)
        rng.bit_generator.state = state
        np.testing.assert_array_equal(image, d.render(a, rng))
        ys, xs = np.nonzero(_object_mask(image, a))
        assert 2 <= x0 < x1 <= 62 and 2 <= y0 < y1 <= 62
        assert xs.min() >= np.floor(x0) - 1 and xs.max() <= np.ceil(x1) and ys.min() >= np.floor(y0) - 1 and ys.max() <= np.ceil(y1)


def test_eval_prompts():
    p = d.eval_prompts("train", 20, seed=1)
    assert len(p) == len(set(p)) == 20
    assert p == d.eval_prompts("train", 20, seed=1)
    assert p != d.eval_prompts("train", 20, seed=2)
    held = d.eval_prompts("heldout", len(d.combos("heldout")))
    assert {d.parse_caption(t) for t in held} == set(d.combos("heldout"))


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda: d.combos("test"), "unknown split 'test'; expected 'train' or 'heldout'"),
        (lambda: d.eval_prompts("heldout", 1000), "the heldout split has 26 distinct prompts; asked for 1000"),
        (lambda: d.sample_dataset(-1, 0), "the number of images must be >= 0"),
        (lambda: d.render(d.combos("train")[0], np.random.default_rng(0), 8), "resolution must be at least 16"),
    ],
)
def test_domain_errors(call, message):
    with pytest.raises(InputError, match=message):
        call()
