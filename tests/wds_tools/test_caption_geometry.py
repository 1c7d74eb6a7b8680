"""The shared caption-geometry vocabulary: rewrites are group actions and both stages agree."""
import re

import pytest

from wds_tools.caption_geometry import (
    COUNT_RANGES,
    DIRECTION_FAMILIES,
    NUMBER_WORDS,
    POSITION_PHRASE,
    mirror_caption,
    rewrite_positions,
)

# "upper"/"lower" alone turn into "left"/"right", which turn on as side words ("top"), so four
# turns of a bare "upper" give "top": they are checked inside corners, where they round-trip.
_ALL_WORDS = sorted({w for fam in DIRECTION_FAMILIES.values() for w in fam} - {"upper", "lower"})


@pytest.mark.parametrize("word", _ALL_WORDS)
def test_four_quarter_turns_and_two_flips_are_the_identity(word):
    text = f"a pond {word} the lake, a road in the north-west, trees in the Upper Left"
    once = rewrite_positions(text, flip=False, rot90=1)
    assert once != text
    turned = text
    for _ in range(4):
        turned = rewrite_positions(turned, flip=False, rot90=1)
    assert turned == text
    assert mirror_caption(mirror_caption(text)) == text


@pytest.mark.parametrize("text,out", [
    ("a river in the west of a road on the left", "a river in the east of a road on the right"),
    ("a lake in the South-East corner", "a lake in the South-West corner"),
    ("a road to the left of the river, a horizontal bridge", "a road to the right of the river, a horizontal bridge"),
    ("WEST FIELD", "EAST FIELD"),
    ("north of the dam, at the top", "north of the dam, at the top"),
])
def test_mirror_caption_is_the_build_time_flip(text, out):
    assert mirror_caption(text) == out
    assert mirror_caption(text) == rewrite_positions(text, flip=True, rot90=0)


def test_count_and_position_vocabulary():
    assert [COUNT_RANGES[w] for w in NUMBER_WORDS[2:]] == [(i, i) for i in range(2, 13)]
    assert COUNT_RANGES["one"] == (1, 1) and COUNT_RANGES["many"][1] == float("inf")
    phrase = re.compile(POSITION_PHRASE, re.I)
    assert phrase.search("a marina in the north-west of the image").group(0) == "in the north-west of the image"
    assert phrase.search("a shed along the far left edge").group(0) == "along the far left edge"
    assert phrase.search("a shed beside the road") is None
