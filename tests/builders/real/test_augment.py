"""Augmentation parameters, pixel transforms and caption rewriting agree with each other."""
import numpy as np
import pytest
from PIL import Image

from builders.real.augment import apply_aug, aug_params, rewrite_positions, transform_box
from builders.real.b2c import regions_to_caption
from builders.real.m2b import analyse


def test_params_are_deterministic_and_geometrically_distinct():
    a = aug_params(seed=3, key="k", count=5)
    assert a == aug_params(seed=3, key="k", count=5)
    assert a != aug_params(seed=4, key="k", count=5)
    assert a != aug_params(seed=3, key="k2", count=5)
    geo = {(p["flip"], p["rot90"]) for p in a}
    assert len(geo) == 5 and (False, 0) not in geo
    for p in a:
        x0, y0, x1, y1 = p["crop"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert 0.6 - 1e-3 <= (x1 - x0) * (y1 - y0) <= 1 + 1e-3
    with pytest.raises(ValueError, match="crop_scale"):
        aug_params(seed=0, key="k", count=1, crop_scale=(0.0, 1.0))


def _ident(flip, rot90):
    return {"flip": flip, "rot90": rot90, "crop": [0, 0, 1, 1], "brightness": 1.0, "contrast": 1.0,
            "saturation": 1.0}


@pytest.mark.parametrize("flip,rot90,expect", [
    (True, 0, "open water along the left edge"),
    (False, 1, "open water along the top"),   # a counter-clockwise turn takes right to top
    (False, 2, "open water along the left edge"),
    (True, 3, "open water along the top"),
])
def test_pixels_and_rewritten_caption_agree(flip, rot90, expect):
    img = np.full((64, 64, 3), 150, np.uint8)
    img[:, 40:] = (30, 60, 140)  # water in the right part
    caption = "open water along the right edge"
    out = np.asarray(apply_aug(Image.fromarray(img), _ident(flip, rot90), 64))
    regions, fractions = analyse(out)
    seen = regions_to_caption(regions, fractions)
    rewritten = rewrite_positions(caption, flip=flip, rot90=rot90)
    assert expect in seen, seen
    assert rewritten.startswith(expect), rewritten


@pytest.mark.parametrize("text,flip,rot90,out", [
    ("a pond in the upper left", True, 0, "a pond in the upper right"),
    ("a pond in the upper left", False, 1, "a pond in the lower left"),
    ("Top-left corner, road to the left of the river", False, 2,
     "Bottom-right corner, road to the right of the river"),
    ("a horizontal road north of the lake", False, 1, "a vertical road west of the lake"),
    ("trees above the houses", False, 3, "trees to the right of the houses"),
    ("nothing positional here", True, 3, "nothing positional here"),
    ("left stays left", False, 0, "left stays left"),
    ("sand at the top, houses on the left", False, 1, "sand on the left, houses at the bottom"),
])
def test_rewrite_positions(text, flip, rot90, out):
    assert rewrite_positions(text, flip=flip, rot90=rot90) == out


def test_transform_box_follows_pixels():
    img = np.zeros((40, 40, 3), np.uint8)
    img[0:8, 28:40] = 255  # box [0.7, 0.0, 1.0, 0.2]
    p = {**_ident(True, 1), "crop": [0.0, 0.0, 1.0, 1.0]}
    out = np.asarray(apply_aug(Image.fromarray(img), p, 40))[..., 0] > 128
    ys, xs = np.nonzero(out)
    got = transform_box([0.7, 0.0, 1.0, 0.2], p)
    assert got == pytest.approx([xs.min() / 40, ys.min() / 40, (xs.max() + 1) / 40, (ys.max() + 1) / 40], abs=0.03)
    assert transform_box([0.0, 0.0, 0.1, 0.1], {**p, "crop": [0.5, 0.5, 1.0, 1.0]}) is None
