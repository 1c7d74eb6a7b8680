"""Zoom crop selection and geometry."""
import numpy as np
import pytest
from PIL import Image

from builders.real.m2b import detect_regions
from builders.real.zoom import cut, select_crops, square_box


def test_square_box_grows_squares_and_clamps():
    b = square_box([0.9, 0.9, 1.0, 1.0], margin=0.1, min_side=0.25)
    assert b == pytest.approx([0.75, 0.75, 1.0, 1.0])
    b = square_box([0.2, 0.4, 0.6, 0.5], margin=0.0, min_side=0.1)
    assert b[2] - b[0] == pytest.approx(b[3] - b[1]) == pytest.approx(0.4)


def test_pond_crop_is_captioned_as_water_and_holds_water():
    img = np.full((64, 64, 3), (200, 188, 160), np.uint8)
    img[4:20, 40:60] = (30, 60, 140)
    regions = detect_regions(img)
    (crop,) = select_crops(regions, [], max_crops=1)
    assert crop.label == "water" and "water" in crop.caption and crop.origin == "m2b"
    px = np.asarray(cut(Image.fromarray(img), crop.box, 32)).astype(int)
    assert ((px[..., 2] > px[..., 0] + 40).mean()) > 0.4  # mostly water inside the crop


def test_detector_boxes_come_first_and_filters_apply():
    det = [{"box": [0.1, 0.1, 0.2, 0.2], "label": "airplane", "score": 0.9, "source": "detector"},
           {"box": [0.5, 0.5, 0.6, 0.6], "label": "car", "score": 0.1, "source": "detector"}]
    regions = [{"box": [0, 0, 1, 1], "label": "water", "score": 0.9, "area": 0.9, "edge_density": 0},
               {"box": [0, 0, 0.5, 0.5], "label": "urban", "score": 0.9, "area": 0.2, "edge_density": 1}]
    crops = select_crops(regions, det, max_crops=3)
    assert [c.label for c in crops] == ["airplane", "urban"]  # low score car and whole-image water dropped
    assert crops[0].caption == "A close-up aerial view of an airplane."


def test_strips_that_square_up_to_the_whole_image_are_dropped():
    strip = {"box": [0.0, 0.0, 0.3, 1.0], "label": "road", "score": 0.9, "area": 0.3, "edge_density": 0}
    assert select_crops([strip], [], max_box_area=0.5) == []
    assert select_crops([strip], [], max_box_area=0.5, max_side=1.0)[0].box == [0.0, 0.0, 1.0, 1.0]
