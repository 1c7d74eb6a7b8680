"""Describe: answer parsing (format, JSON, malformed -> caption nouns) and the tiny Qwen2-VL end to end."""
import dataclasses

import numpy as np
import pytest
from PIL import Image

from builders.synthetic.stages.base import Skip
from builders.synthetic.stages.describe import (
    AERIAL_NOUNS,
    DescribeConfig,
    Describer,
    Description,
    nouns_in,
    parse_description,
)


def parse(raw):
    return parse_description(raw, nouns=AERIAL_NOUNS, max_objects=8)


def test_fixed_format_answer_gives_caption_and_clean_objects():
    d = parse("Caption: Several cars parked in a parking lot next to two tennis courts.\n"
              "Objects: cars, a parking lot, 2 tennis courts and some trees")
    assert d.caption == "Several cars parked in a parking lot next to two tennis courts."
    assert d.objects == ["car", "parking lot", "tennis court", "tree"] and not d.fallback


def test_json_answer_is_accepted():
    d = parse('Sure! {"caption": "A river crosses farmland", "objects": ["River", "farmland."]}')
    assert (d.caption, d.objects, d.fallback) == ("A river crosses farmland", ["river", "farmland"], False)


@pytest.mark.parametrize("raw", [
    "An aerial view of buses and greenhouses near the beaches",        # no format at all
    "Caption: An aerial view of buses and greenhouses near the beaches. Objects:",  # empty list
    '{"caption": "An aerial view of buses and greenhouses near the beaches", "objects": "??"}',
])
def test_malformed_answer_falls_back_to_caption_nouns(raw):
    d = parse(raw)
    assert d.fallback and d.objects == ["bus", "greenhouse", "beach"]
    assert d.caption.startswith("An aerial view of buses") and d.raw == raw.strip()


def test_no_caption_is_none_and_objects_are_capped():
    assert parse(None) is None and parse("  ### ") is None
    d = parse_description("Caption: A town. Objects: roads, cars, trees, houses, a lake",
                          nouns=AERIAL_NOUNS, max_objects=3)
    assert d.objects == ["road", "car", "tree"]


def test_nouns_prefer_longest_phrase_in_caption_order():
    assert nouns_in("Swimming pools beside houses, a pool and a tennis court", AERIAL_NOUNS) == \
        ["swimming pool", "house", "pool", "tennis court"]


def test_description_round_trips_through_a_dict():
    d = parse("Caption: a road. Objects: road")
    assert Description.from_dict(dataclasses.asdict(d)) == d


def test_tiny_qwen2vl_end_to_end_is_deterministic(tiny_vlm):
    cfg = DescribeConfig(model=str(tiny_vlm), batch_size=2, max_new_tokens=8, max_pixels=112 * 112)
    images = [Image.fromarray(np.random.RandomState(i).randint(0, 256, (64, 64, 3), dtype=np.uint8))
              for i in range(3)]
    stage = Describer(cfg, device="cpu")
    out = stage(images)
    assert len(out) == 3
    for d in out:
        # Random weights cannot follow the format: every real answer takes the fallback path.
        assert isinstance(d, Skip) and d.reason == "no caption" or (isinstance(d, Description) and d.fallback)
    assert stage(images) == out  # greedy decoding: same images, same answers
    mixed = stage([images[0], None, images[2]])
    assert mixed[1].reason == "error: AttributeError" and [mixed[0], mixed[2]] == [out[0], out[2]]
    stage.unload()
    assert stage.captioner is None


# Qwen2-VL-style answers to the describe prompt: (answer, caption, objects, objects fell back)
QWEN_ANSWERS = [
    ("Caption: A dense residential area with houses and trees.\nObjects:\n- houses\n- trees",
     "A dense residential area with houses and trees.", ["house", "tree"], False),
    ("**Caption:** A residential area with red-roofed houses along a road.\n\n**Objects:**\n"
     "1. Houses\n2. Trees\n3. A road\n4. Cars (parked)",
     "A residential area with red-roofed houses along a road.", ["house", "tree", "road", "car"], False),
    ("### Caption\nAn airport with two airplanes on the apron.\n\n### Objects\n* airplanes\n"
     "* runway\n* **terminal building**",
     "An airport with two airplanes on the apron.", ["airplane", "runway", "terminal building"], False),
    ("Caption: A harbor with boats. Objects: boats, a pier and storage tanks",
     "A harbor with boats.", ["boat", "pier", "storage tank"], False),
    ("A harbor with *many* boats beside a pier.\nObjects: boats, cranes and containers",
     "A harbor with many boats beside a pier.", ["boat", "crane", "container"], False),
    ("**Caption:** A bare field.\n**Objects:** none",
     "A bare field.", ["field"], True),
]


@pytest.mark.parametrize("answer,caption,objects,fallback", QWEN_ANSWERS)
def test_chat_markdown_answers_split_into_caption_and_objects(answer, caption, objects, fallback):
    d = parse(answer)
    assert (d.caption, d.objects, d.fallback) == (caption, objects, fallback)
    assert d.raw == answer


@pytest.mark.parametrize("answer", ["", "   \n", "**Caption:**\n**Objects:**", "Objects: cars, trees"])
def test_an_answer_without_a_caption_is_none_not_markdown(answer):
    assert parse(answer) is None   # the stage counts it: Skip("no caption") -> describe:no_caption


def test_describer_parses_the_raw_answer_with_its_line_breaks(tiny_vlm, script_vlm):
    cfg = DescribeConfig(model=str(tiny_vlm), batch_size=2, max_new_tokens=8, max_pixels=112 * 112)
    images = [Image.new("RGB", (64, 64), (30 * i, 80, 50)) for i in range(3)]
    stage = Describer(cfg, device="cpu").load()
    script_vlm(stage.captioner, [QWEN_ANSWERS[0][0], QWEN_ANSWERS[1][0], ""])
    first, second, empty = stage(images)
    assert (first.caption, first.objects) == QWEN_ANSWERS[0][1:3]
    assert (second.caption, second.objects) == QWEN_ANSWERS[1][1:3]
    assert isinstance(empty, Skip) and empty.reason == "no caption"
    stage.unload()
