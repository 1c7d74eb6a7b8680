"""Ground: a tiny random-weight Grounding DINO saved with save_pretrained, loaded by path."""
import dataclasses

import numpy as np
import pytest
from PIL import Image

from builders.synthetic.stages.base import Skip
from builders.synthetic.stages.ground import GroundConfig, Grounder, box_in_mask, make_prompt


def image(seed, h=80, w=120):
    return Image.fromarray(np.random.RandomState(seed).randint(0, 256, (h, w, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def grounder(tiny_grounding_dino):
    g = Grounder(GroundConfig(model=str(tiny_grounding_dino), box_threshold=0.5, text_threshold=0.3,
                              max_boxes=8, batch_size=4), device="cpu").load()
    yield g
    g.unload()


def test_prompt_spans_cover_the_labels():
    prompt, spans = make_prompt(["car", "parking lot"])
    assert prompt == "a car. a parking lot."
    assert [prompt[a:b] for a, b in spans] == ["car", "parking lot"]


def test_boxes_are_image_fractions_with_requested_labels(grounder):
    items = [(image(0), ["car", "parking lot"]), (image(1, 96, 64), ["tree"])]
    out = grounder(items)
    assert all(out), "random weights still score some queries above 0.5"
    for (_, labels), boxes in zip(items, out):
        assert len(boxes) <= 8
        assert [b["score"] for b in boxes] == sorted((b["score"] for b in boxes), reverse=True)
        for b in boxes:
            x0, y0, x1, y1 = b["box"]
            assert 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1
            assert b["label"] in labels and b["score"] >= 0.5 and b["source"] == "grounding_dino"


def test_higher_threshold_keeps_a_subset_and_reload_is_identical(grounder, tiny_grounding_dino):
    items = [(image(0), ["car", "parking lot"])]
    loose = Grounder(GroundConfig(model=str(tiny_grounding_dino), box_threshold=0.5, text_threshold=0.3,
                                  max_boxes=20), device="cpu")  # a second load of the same weights
    lo = loose(items)[0]
    loose.cfg = dataclasses.replace(loose.cfg, box_threshold=0.9)
    hi = loose(items)[0]
    assert len(hi) < len(lo) and all(b in lo for b in hi)
    assert grounder.cfg.box_threshold == 0.5 and grounder(items)[0] == lo[:8]


def test_batched_equals_one_by_one(grounder):
    items = [(image(2), ["road"]), (image(3), ["house", "swimming pool", "tree"])]
    together = grounder(items)
    alone = [grounder([it])[0] for it in items]
    for a, b in zip(together, alone):
        assert [x["label"] for x in a] == [x["label"] for x in b]
        assert np.allclose([x["box"] for x in a], [x["box"] for x in b], atol=2e-3)


def test_no_labels_and_bad_image_skip_only_their_item(grounder):
    out = grounder([(image(0), []), (None, ["car"]), (image(0), ["car"])])
    assert out[0] == Skip("no objects")
    assert out[1].reason == "error: AttributeError"
    assert isinstance(out[2], list) and out[2]


def test_config_checks_ranges():
    with pytest.raises(ValueError, match="box_threshold.*1.5"):
        GroundConfig(box_threshold=1.5).validate()


def test_box_in_mask_is_the_covered_fraction_of_the_box():
    mask = np.zeros((10, 20), dtype=np.uint8)
    mask[:, :10] = 255
    assert box_in_mask({"box": [0.0, 0.0, 0.5, 1.0]}, mask) == 1.0
    assert box_in_mask([0.25, 0.0, 0.75, 1.0], mask) == 0.5
    assert box_in_mask([0.6, 0.2, 0.9, 0.8], mask) == 0.0
