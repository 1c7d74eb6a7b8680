"""Variant planning: modes from the mix, seeds from (seed, key, variant), captions per mode."""
from collections import Counter

import pytest

from builders.synthetic.captions import find_mentions, plural
from builders.synthetic.config import ModesConfig
from builders.synthetic.modes import (
    SourceText,
    norm_label,
    plan_variants,
    variant_seed,
    vocab_label,
    vocabulary_noun,
)
from wds_tools.config import load_config

CARS = [{"box": [0.1, 0.1, 0.2, 0.2], "label": "car", "score": 0.9, "source": "grounding_dino"},
        {"box": [0.12, 0.3, 0.22, 0.4], "label": "cars", "score": 0.8, "source": "grounding_dino"},
        {"box": [0.0, 0.0, 1.0, 1.0], "label": "parking lot", "score": 0.7, "source": "grounding_dino"}]
SRC = SourceText(key="lot_001", describe="A parking lot with two cars in the upper left.",
                 captions=["an aerial image of parking lot"], caption_sources=["class_template"],
                 b2c="An aerial view of grey ground, with smooth grey surfaces along the bottom.")


def _modes(**mix) -> ModesConfig:
    weights = {m: 0.0 for m in ("inpaint_replace", "inpaint_remove", "img2img", "text2img")} | mix
    return load_config(ModesConfig, None, [f"mix.{k}={v}" for k, v in weights.items()] + ["per_image=3"])


def _key(parent, v):
    return f"{parent}_syn_{v}"


def test_seeds_are_deterministic_per_key_and_variant():
    assert variant_seed(0, "a", 0) == variant_seed(0, "a", 0)
    assert len({variant_seed(0, "a", 0), variant_seed(0, "a", 1), variant_seed(0, "b", 0),
                variant_seed(1, "a", 0)}) == 4
    p1, _ = plan_variants(SRC, CARS, ModesConfig(), seed=3, out_key=_key)
    p2, _ = plan_variants(SRC, CARS, ModesConfig(), seed=3, out_key=_key)
    assert [p.to_dict() for p in p1] == [p.to_dict() for p in p2]
    assert [p.seed for p in p1] == [variant_seed(3, "lot_001", v) for v in range(len(p1))]


def test_mode_mix_is_followed():
    plans, _ = plan_variants(SRC, CARS, _modes(img2img=1), seed=0, out_key=_key)
    assert [p.mode for p in plans] == ["img2img"] * 3
    cfg = ModesConfig(per_image=200)
    keys = [SourceText(key=f"k{i}", describe=None, captions=["a car park with two cars"],
                       caption_sources=["original"]) for i in range(5)]
    modes = [p.mode for s in keys for p in plan_variants(s, CARS[:2], cfg, seed=0, out_key=_key)[0]]
    share = modes.count("img2img") / len(modes)
    assert 0.22 < share < 0.38   # configured 0.30 of 1000 draws


def test_inpaint_replace_rewrites_the_noun_phrase_and_boxes():
    plans, skips = plan_variants(SRC, CARS, _modes(inpaint_replace=1), seed=0, out_key=_key)
    assert not skips and len(plans) == 3
    for p in plans:
        assert p.label == "car" and p.new_label in ("truck", "bus", "van")
        assert p.captions[0] == f"A parking lot with two {plural(p.new_label)} in the upper left."
        assert p.caption_sources[0] == "synthetic_edit"
        assert "an aerial image of parking lot" in p.captions   # still true, left as it was
        assert p.mask_boxes == [0, 1]                            # both cars, never the lot
        assert [b["label"] for b in p.boxes] == [p.new_label, p.new_label, "parking lot"]
        assert p.new_label in p.prompt and "cars" in p.negative_prompt


def test_inpaint_remove_lowers_the_count_and_drops_the_box():
    plans, _ = plan_variants(SRC, CARS, _modes(inpaint_remove=1), seed=0, out_key=_key)
    p = plans[0]
    assert p.captions[0] == "A parking lot with a car in the upper left."
    assert p.mask_boxes == [0] and [b["label"] for b in p.boxes] == ["car", "parking lot"]


def test_no_editable_object_falls_back_and_is_counted():
    lot_only = [CARS[2]]   # scenery covering the tile: never edited
    tally = Counter()
    plans, skips = plan_variants(SRC, lot_only, _modes(inpaint_remove=1), seed=0, out_key=_key,
                                 tally=tally)
    assert [p.mode for p in plans] == ["img2img"] * 3
    assert all(p.fallback == "inpaint_remove:box_too_large" for p in plans)
    assert tally == {"drawn:inpaint_remove": 3, "unapplied:inpaint_remove:box_too_large": 3}
    cfg = _modes(inpaint_remove=1)
    cfg.fallback = ""
    plans, skips = plan_variants(SRC, lot_only, cfg, seed=0, out_key=_key)
    assert plans == [] and skips == ["inpaint_remove:box_too_large"] * 3


@pytest.mark.parametrize("boxes,reason", [
    ([], "no_boxes"),
    ([{**CARS[0], "label": "beach"}, {**CARS[0], "label": "car park"}], "not_in_vocabulary"),
    ([CARS[2]], "box_too_large")])
def test_a_fallback_says_why(boxes, reason):
    tally = Counter()
    plans, _ = plan_variants(SRC, boxes, _modes(inpaint_replace=1), seed=0, out_key=_key, tally=tally)
    assert {p.fallback for p in plans} == {f"inpaint_replace:{reason}"}
    assert tally[f"unapplied:inpaint_replace:{reason}"] == tally["drawn:inpaint_replace"] == 3


@pytest.mark.parametrize("label,noun", [
    ("white car", "car"), ("parked cars", "car"), ("Small House", "house"), ("small houses", "house"),
    ("red-roofed warehouses", "warehouse"), ("large storage tanks", "storage tank"),
    ("two buses", "bus"), ("car", "car"),
    ("car park", None), ("house roof", None), ("beach", None), ("sandy beach", None)])
def test_a_label_reduces_to_the_vocabulary_noun_it_ends_in(label, noun):
    vocab = ModesConfig().vocabulary
    assert vocabulary_noun(label, vocab) == noun
    assert vocab_label(label, vocab) == (noun or norm_label(label))


def test_objects_named_with_adjectives_are_edited_not_fallen_back():
    named = [{**CARS[0], "label": "white car"}, {**CARS[1], "label": "parked cars"}, CARS[2]]
    tally = Counter()
    plans, skips = plan_variants(SRC, named, _modes(inpaint_replace=1), seed=0, out_key=_key,
                                 tally=tally)
    assert not skips and [p.mode for p in plans] == ["inpaint_replace"] * 3
    assert all(p.fallback is None and p.label == "car" and p.mask_boxes == [0, 1] for p in plans)
    assert tally == {"drawn:inpaint_replace": 3}
    removed, _ = plan_variants(SRC, named, _modes(inpaint_remove=1), seed=0, out_key=_key)
    assert removed[0].captions[0] == "A parking lot with a car in the upper left."


def test_objects_are_grounded_under_their_vocabulary_noun():
    from builders.synthetic.config import SyntheticBuildConfig
    from builders.synthetic.pipeline import Source, objects_of

    cfg = SyntheticBuildConfig()
    src = Source(key="k", image=None, cls=None, captions=["two small houses by a road"],
                 caption_sources=["original"])
    desc = {"objects": ["white car", "parked cars", "car park", "small storage tanks"]}
    assert objects_of(desc, src, cfg) == ["car", "car park", "storage tank", "house", "road"]


def test_img2img_adds_the_variant_phrase_and_drops_colour_captions():
    src = SourceText(key="k", describe=None, captions=["a forest", "An aerial view of a vegetated area."],
                     caption_sources=["original", "m2b_b2c"])
    cfg = _modes(img2img=1)
    for p in plan_variants(src, [], cfg, seed=0, out_key=_key)[0]:
        phrase = next(v for v in cfg.variants if v in p.captions[0])
        assert p.captions == [f"A forest, {phrase}."] and p.caption_sources == ["synthetic_edit"]
        assert p.strength == cfg.img2img.strength
        # style, then the variant, then the caption: a 77-token CLIP cut keeps the variant
        assert p.prompt.index(cfg.prompt_style) < p.prompt.index(phrase) < p.prompt.index("a forest")


def test_text2img_captions_claim_no_layout():
    for p in plan_variants(SRC, CARS, _modes(text2img=1), seed=0, out_key=_key)[0]:
        assert p.boxes == [] and p.mask_boxes == []
        assert "upper left" in p.prompt and "along the bottom" in p.prompt   # the enriched caption
        for c in p.captions:
            assert "upper" not in c and "bottom" not in c, c
        assert p.caption_sources == ["synthetic_edit", "vlm"]
        assert p.captions[1] == "A parking lot with two cars."


@pytest.mark.parametrize("bad", ["per_image=0", "mix.img2img=-1", "remove_count=0", "variants=[]"])
def test_bad_mode_settings_are_refused(bad):
    with pytest.raises(ValueError):
        load_config(ModesConfig, None, [bad])


def test_captions_of_every_plan_name_no_removed_object():
    plans, _ = plan_variants(SRC, CARS[:1] + CARS[2:], _modes(inpaint_remove=1), seed=0, out_key=_key)
    for p in plans:
        # one car was grounded and the caption said two: one is left
        assert find_mentions(p.captions[0], "car")[0].count == 1
