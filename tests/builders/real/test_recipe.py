"""One source image -> original, augmentations and zoom crops with true, ordered captions."""
import io
import json

import numpy as np
import pytest
from PIL import Image

from builders.common.inputs import SourceItem
from builders.real.augment import transform_box
from builders.real.config import RealBuildConfig
from builders.real.recipe import build_item
from wds_tools.config import load_config

DET = {"box": [0.05, 0.05, 0.25, 0.25], "label": "airplane", "score": 0.8, "source": "detector"}


def _cfg(*o):
    return load_config(RealBuildConfig, None, ["size=48", "m2b.analysis_size=48", *o])


def _square():
    img = np.full((96, 96, 3), 150, np.uint8)
    img[48:] = (30, 60, 140)  # water in the lower half
    return Image.fromarray(img)


def _meta(s):
    return json.loads(s["json"])


def test_original_augmented_and_zoom_samples():
    item = SourceItem(rel="x/a.png", path="", captions=["a lake at the bottom"], cls="lake", boxes=[DET])
    samples = build_item("x_a", item, _square(), "train", _cfg())
    kinds = [_meta(s)["kind"] for s in samples]
    assert kinds[:6] == ["original"] + ["augmented"] * 5 and set(kinds[6:]) <= {"zoom_crop"}
    orig = _meta(samples[0])
    assert orig["caption_sources"] == ["original", "m2b_b2c"]
    assert "water in the lower half" in orig["captions"][1]
    assert orig["boxes"][0] == DET and orig["parent"] is None
    assert Image.open(io.BytesIO(samples[0]["jpg"])).size == (48, 48)
    for s in samples[1:6]:
        m = _meta(s)
        want = transform_box(DET["box"], m["aug"])
        got = [b["box"] for b in m["boxes"] if b["source"] == "detector"]
        assert got == ([want] if want else [])
        assert m["parent"] == "x_a" and s["txt"].decode() == m["captions"][0]
    zooms = [_meta(s) for s in samples if _meta(s)["kind"] == "zoom_crop"]
    assert zooms[0]["aug"]["origin"] == "detector" and zooms[0]["captions"] == [
        "A close-up aerial view of an airplane."]


def test_heldout_gets_originals_only_and_no_caption_means_skip():
    item = SourceItem(rel="a.png", path="", captions=["c"])
    assert len(build_item("a", item, _square(), "val", _cfg())) == 1
    assert len(build_item("a", item, _square(), "val", _cfg("splits.augment_heldout=true"))) > 1
    bare = SourceItem(rel="a.png", path="")  # no caption, no class, M2B off
    assert build_item("a", bare, _square(), "train", _cfg("m2b.enabled=false", "zoom.enabled=false")) == []


def test_class_template_when_input_has_no_caption():
    item = SourceItem(rel="dense_residential/a.png", path="", cls="dense_residential")
    (s,) = build_item("a", item, _square(), "test", _cfg())
    m = _meta(s)
    assert m["captions"][0] == "an aerial image of dense residential"
    assert m["caption_sources"] == ["class_template", "m2b_b2c"]


def test_config_rejects_bad_values_before_work():
    from wds_tools.config import ConfigError

    with pytest.raises(ConfigError, match="executor"):
        _cfg("executor=spark")
    with pytest.raises(ConfigError, match="crop_scale"):
        _cfg("augment.crop_scale=[0.9,0.5]")
