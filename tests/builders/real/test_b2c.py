"""B2C captions are true of pictures with known layouts."""
import numpy as np
import pytest

from builders.real.b2c import regions_to_caption, spatial_phrase
from builders.real.m2b import detect_regions, label_fractions


def _caption(img):
    return regions_to_caption(detect_regions(img), label_fractions(img))


def _img(size=64):
    return np.zeros((size, size, 3), np.uint8)


def test_lower_half_water_says_water_at_the_bottom():
    img = _img()
    img[:32] = (150, 150, 150)
    img[32:] = (30, 60, 140)
    cap = _caption(img)
    assert "water in the lower half" in cap, cap
    assert "upper half" in cap and "water in the upper" not in cap


def test_green_left_half_says_vegetation_on_the_left():
    img = _img()
    img[:, :32] = (40, 120, 40)
    img[:, 32:] = (150, 150, 150)
    cap = _caption(img)
    assert "grass or low vegetation on the left side" in cap, cap
    assert "on the right side" in cap


def test_corner_pond_is_in_the_upper_left():
    img = _img()
    img[:] = (200, 188, 160)
    img[:20, :20] = (30, 60, 140)
    cap = _caption(img)
    assert "water in the upper left" in cap, cap
    assert cap.startswith("An aerial view of")


@pytest.mark.parametrize("box,phrase", [
    ([0.0, 0.0, 1.0, 1.0], "across the image"),
    ([0.7, 0.7, 1.0, 1.0], "in the lower right"),
    ([0.4, 0.4, 0.6, 0.6], "at the center"),
    ([0.0, 0.0, 0.3, 1.0], "along the left edge"),
    ([0.0, 0.0, 1.0, 0.25], "along the top"),
])
def test_spatial_phrases(box, phrase):
    assert spatial_phrase(box) == phrase


def test_no_regions_gives_scene_only():
    assert regions_to_caption([], {"water": 0.0}) == "An aerial view of a mixed landscape."
