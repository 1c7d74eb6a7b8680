"""Demo tiles: the tree layout, determinism, and content that M2B reads as drawn."""
import numpy as np
import pytest
from PIL import Image

from builders.demo_images import CLASSES, HARD_CLASSES, POND_QUADRANTS, WATER_SIDES, draw_tile, make_demo_tree
from builders.real.m2b import label_fractions


def test_tree_layout_and_determinism(tmp_path):
    out = make_demo_tree(tmp_path / "a", per_class=2, size=32, seed=3)
    files = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert files == sorted(f"{c}/{c}_{i:03d}.png" for c in CLASSES for i in range(2))
    again = make_demo_tree(tmp_path / "b", per_class=2, size=32, seed=3)
    for f in files:
        assert np.array_equal(np.asarray(Image.open(out / f)), np.asarray(Image.open(again / f)))
    assert not list(out.rglob("*.tmp-*"))


@pytest.mark.parametrize("cls,label", [("water", "water"), ("forest", "vegetation")])
def test_single_cover_classes_read_as_drawn(cls, label):
    f = label_fractions(np.asarray(draw_tile(cls, 0, size=64)))
    assert f[label] > 0.8, f


def test_beach_water_side_cycles():
    img = np.asarray(draw_tile("beach", 0, size=64))  # water at the bottom
    assert WATER_SIDES[0] == "bottom"
    assert label_fractions(img[48:])["water"] > 0.9
    assert label_fractions(img[:16])["water"] < 0.1


def test_bad_arguments():
    with pytest.raises(ValueError, match="volcano"):
        draw_tile("volcano", 0)
    with pytest.raises(ValueError, match="variation must be in .0, 1., got 1.5"):
        draw_tile("water", 0, variation=1.5)
    with pytest.raises(ValueError, match="per_class"):
        make_demo_tree("/nonexistent-never-written", per_class=0)


def test_farmland_pond_sits_in_its_quadrant():
    assert POND_QUADRANTS[1] == "upper right"
    img = np.asarray(draw_tile("farmland", 1, size=64))
    assert label_fractions(img[:32, 32:])["water"] > 0.25
    for quadrant in (img[:32, :32], img[32:, :32], img[32:, 32:]):
        assert label_fractions(quadrant)["water"] < 0.05


def test_hard_set_adds_classes_that_share_colours_and_varies_each_tile(tmp_path):
    out = make_demo_tree(tmp_path / "h", per_class=2, size=64, classes=HARD_CLASSES, variation=1.0)
    assert sorted(p.name for p in out.iterdir()) == sorted(HARD_CLASSES) and len(HARD_CLASSES) == 10
    river = label_fractions(np.asarray(draw_tile("river", 0, size=64)))
    assert 0.05 < river["water"] < 0.5 and river["vegetation"] > 0.3, river
    meadow = label_fractions(np.asarray(draw_tile("meadow", 0, size=64)))
    assert meadow["vegetation"] > 0.8, meadow
    # the variation moves each tile's colours by its own amount, and the same call repeats exactly
    plain = [np.asarray(draw_tile("water", i, size=32), np.float32).mean() for i in range(4)]
    varied = [np.asarray(draw_tile("water", i, size=32, variation=1.0), np.float32).mean() for i in range(4)]
    assert np.std(varied) > 3 * np.std(plain)
    assert np.array_equal(np.asarray(draw_tile("desert", 1, variation=1.0)),
                          np.asarray(draw_tile("desert", 1, variation=1.0)))
