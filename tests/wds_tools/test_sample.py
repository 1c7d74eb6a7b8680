import json

import pytest

from tests.conftest import tiny_image
from wds_tools.sample import check_key, encode_image, make_key, make_sample


def test_make_key_never_has_dots():
    key = make_key("img.001.png", 3, "aug")
    assert "." not in key and "/" not in key
    assert key == "img-001-png_3_aug"


@pytest.mark.parametrize("bad", ["", "a.b", "dir/x", None])
def test_check_key_rejects(bad):
    with pytest.raises(ValueError):
        check_key(bad)


def test_make_sample_fills_caption_lists_and_validates_source():
    s = make_sample(key="k1", image=encode_image(tiny_image(0)), caption="a field", meta={"source": "real"})
    meta = json.loads(s["json"])
    assert meta["captions"] == ["a field"] and meta["caption_sources"] == ["original"]
    assert s["txt"] == b"a field" and s["jpg"][:2] == b"\xff\xd8"
    with pytest.raises(ValueError, match="'fake'"):
        make_sample(key="k2", image=b"x", caption="c", meta={"source": "fake"})
    with pytest.raises(ValueError, match="differ in length"):
        make_sample(key="k3", image=b"x", caption="c",
                    meta={"source": "real", "captions": ["a", "b"], "caption_sources": ["original"]})
