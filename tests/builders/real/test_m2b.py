"""M2B regions on images with known content, and on real UCM tiles when present."""
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.real.m2b import detect_regions, label_fractions

UCM = Path(__file__).resolve().parents[4] / "shared" / "data" / "ucm_sample"


def _noise(rng, shape, amp):
    return rng.integers(-amp, amp + 1, shape).astype(np.int16)


def _compose(top, bottom, *, size=64, seed=0, split="h"):
    rng = np.random.default_rng(seed)
    img = np.zeros((size, size, 3), np.int16)
    half = size // 2
    if split == "h":
        img[:half], img[half:] = top, bottom
    else:
        img[:, :half], img[:, half:] = top, bottom
    img += _noise(rng, (size, size, 1), 6)
    return np.clip(img, 0, 255).astype(np.uint8)


def _by_label(regions, label):
    found = [r for r in regions if r["label"] == label]
    assert found, f"no {label} region in {[r['label'] for r in regions]}"
    return max(found, key=lambda r: r["area"])


def test_lower_half_water_has_box_in_lower_half():
    img = _compose((150, 150, 150), (30, 60, 140))
    water = _by_label(detect_regions(img), "water")
    x0, y0, x1, y1 = water["box"]
    assert y0 == pytest.approx(0.5, abs=0.05) and y1 == pytest.approx(1.0, abs=0.02)
    assert x1 - x0 > 0.95
    assert water["area"] == pytest.approx(0.5, abs=0.03)
    assert water["cell"][0] == 2 and water["source"] == "m2b"


def test_green_left_half_is_vegetation_on_the_left():
    img = _compose((40, 120, 40), (150, 150, 150), split="v")
    regions = detect_regions(img)
    veg = _by_label(regions, "vegetation")
    assert veg["box"][2] == pytest.approx(0.5, abs=0.05) and veg["box"][0] < 0.02
    assert veg["cell"][1] == 0
    assert all(r["label"] != "water" for r in regions)


def test_regions_follow_box_contract():
    img = _compose((200, 185, 150), (30, 60, 140), seed=1)
    for r in detect_regions(img, grid=4):
        x0, y0, x1, y1 = r["box"]
        assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
        assert 0 < r["score"] <= 1 and 0 < r["area"] <= 1
        assert all(0 <= v < 4 for v in r["cell"])


def test_bad_input_is_rejected_with_shape():
    with pytest.raises(ValueError, match="shape"):
        detect_regions(np.zeros((8, 8), np.uint8))
    with pytest.raises(ValueError, match="grid"):
        detect_regions(np.zeros((8, 8, 3), np.uint8), grid=0)


def test_fractions_sum_to_at_most_one():
    img = _compose((40, 120, 40), (30, 60, 140), seed=2)
    f = label_fractions(img)
    assert sum(f.values()) <= 1.0 + 1e-6
    assert f["vegetation"] == pytest.approx(0.5, abs=0.05)
    assert f["water"] == pytest.approx(0.5, abs=0.05)


@pytest.mark.skipif(not (UCM / "captions.json").exists(), reason="ucm_sample not present")
def test_ucm_forest_is_mostly_vegetation():
    items = [x for x in json.loads((UCM / "captions.json").read_text()) if x["class"] == "forest"]
    hits = 0
    for x in items:
        rgb = np.asarray(Image.open(UCM / x["image"]).convert("RGB").resize((128, 128)))
        f = label_fractions(rgb)
        hits += max(f, key=f.get) == "vegetation"
    assert hits >= 0.75 * len(items), f"vegetation led in only {hits}/{len(items)} forest tiles"
