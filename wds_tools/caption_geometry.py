"""One vocabulary for the geometry in captions: position words, count words and their rewrites.

Both stages read and write captions that say where things are ("in the upper left", "west of
the lake") and how many there are ("three tanks"). The words, the directions they stand for and
the rewrites that keep a caption true of a flipped or turned image live here, so the build-time
augmentation (``builders/real/augment.py``), the captioner (``builders/real/b2c.py``), the
synthetic caption edits (``builders/synthetic/captions.py``), the sanity check
(``builders/quality/sanity.py``) and the training-time flip (``training/augment.py``) agree.

Geometry: a horizontal flip, then ``rot90`` quarter turns counter-clockwise (aerial images have
no "up"). Directions are (dx, dy) with x to the right and y downwards (image coordinates).
"""
from __future__ import annotations

import re

# --- position words ---------------------------------------------------------------------------
# Each family is one way of naming the four directions; a rewrite stays inside its family.
DIRECTION_FAMILIES: dict[str, dict[str, tuple[int, int]]] = {
    "side": {"left": (-1, 0), "right": (1, 0), "top": (0, -1), "bottom": (0, 1)},
    "adj": {"left": (-1, 0), "right": (1, 0), "upper": (0, -1), "lower": (0, 1)},
    "compass": {"west": (-1, 0), "east": (1, 0), "north": (0, -1), "south": (0, 1)},
    "rel": {"to the left of": (-1, 0), "to the right of": (1, 0), "above": (0, -1), "below": (0, 1)},
}
WORD_FAMILY: dict[str, str] = {
    "left": "side", "right": "side", "top": "side", "bottom": "side",
    "upper": "adj", "lower": "adj", "west": "compass", "east": "compass",
    "north": "compass", "south": "compass", "above": "rel", "below": "rel",
    "to the left of": "rel", "to the right of": "rel"}
# Axis words swap under a quarter turn and stay under a flip.
AXIS_SWAP: dict[str, str] = {"horizontal": "vertical", "vertical": "horizontal",
                             "horizontally": "vertically", "vertically": "horizontally"}
UP_WORDS = ("upper", "top")
DOWN_WORDS = ("lower", "bottom")
CENTRE_WORDS = ("center", "centre", "middle")
# Rows and columns of a 3 x 3 grid of the image, as the captioner names them.
ROW_WORDS = ("top", "middle", "bottom")
COLUMN_WORDS = ("left", "center", "right")
ROW_ADJECTIVES = ("upper", None, "lower")
# Words that may follow "in/on/at/along ... the" in a position phrase.
POSITION_WORDS = ("upper", "lower", "top", "bottom", "middle", "center", "centre", "left", "right",
                  "north", "south", "east", "west", "northern", "southern", "eastern", "western",
                  "far", "image", "half", "side", "edge", "corner", "part", "border",
                  "foreground", "background")
POSITION_PHRASE = (r"(?:scattered\s+)?(?:in|on|at|along|across|down|near|to|toward|towards)\s+the\s+"
                   r"(?:(?:" + "|".join(POSITION_WORDS) + r")\b[ -]?){1,3}"
                   r"(?:of\s+the\s+(?:image|tile|scene|picture))?")

# --- count words ------------------------------------------------------------------------------
NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
                "eleven", "twelve")
# A count word -> the range of counts it claims (vague words claim a range).
COUNT_RANGES: dict[str, tuple[float, float]] = {
    "one": (1, 1), "single": (1, 1), "lone": (1, 1),
    **{w: (i, i) for i, w in enumerate(NUMBER_WORDS) if i >= 2},
    "pair": (2, 2), "couple": (2, 3), "few": (2, 4), "several": (3, 7), "some": (2, 8),
    "multiple": (2, float("inf")), "many": (5, float("inf")), "numerous": (5, float("inf")),
    "lots": (5, float("inf")), "dozens": (12, float("inf")), "dozen": (10, 14),
}

# --- rewrites ---------------------------------------------------------------------------------
_CORNER = re.compile(r"\b(upper|lower|top|bottom|north|south)([ -]?)(left|right|west|east)\b", re.I)
_SINGLE = re.compile(r"\b(" + "|".join(["to the left of", "to the right of", "left", "right", "top",
                                        "bottom", "upper", "lower", "north", "south", "east", "west",
                                        "above", "below", *AXIS_SWAP]) + r")\b", re.I)


def move(vec: tuple[int, int], flip: bool, rot90: int) -> tuple[int, int]:
    """Direction ``vec`` after a horizontal flip (when ``flip``) and ``rot90`` CCW quarter turns."""
    dx, dy = vec
    if flip:
        dx = -dx
    for _ in range(rot90 % 4):
        dx, dy = dy, -dx  # a quarter turn counter-clockwise: right -> top -> left -> bottom
    return dx, dy


def _word_for(vec: tuple[int, int], family: str) -> str:
    return next(w for w, v in DIRECTION_FAMILIES[family].items() if v == vec)


def _match_case(new: str, old: str) -> str:
    if len(old) > 1 and old.isupper():
        return new.upper()
    return new[0].upper() + new[1:] if old[:1].isupper() else new


def _corner(m: re.Match, flip: bool, rot90: int) -> str:
    vert, sep, hor = m.group(1).lower(), m.group(2), m.group(3).lower()
    compass = vert in ("north", "south")
    vfam = "compass" if compass else ("adj" if vert in ("upper", "lower") else "side")
    hfam = "compass" if compass else "side"
    vy = DIRECTION_FAMILIES[vfam][vert][1]
    hx = DIRECTION_FAMILIES["compass" if hor in ("west", "east") else "side"][hor][0]
    nx, ny = move((hx, 0), flip, rot90)
    mx, my = move((0, vy), flip, rot90)
    dx, dy = nx + mx, ny + my
    # Each part keeps its own case: "South-East" -> "South-West".
    return (_match_case(_word_for((0, dy), vfam), m.group(1)) + sep
            + _match_case(_word_for((dx, 0), hfam), m.group(3)))


def _single(m: re.Match, flip: bool, rot90: int) -> str:
    word = m.group(0).lower()
    if word in AXIS_SWAP:
        return _match_case(AXIS_SWAP[word] if rot90 % 2 else word, m.group(0))
    fam = WORD_FAMILY[word]
    return _match_case(_word_for(move(DIRECTION_FAMILIES[fam][word], flip, rot90), fam), m.group(0))


def rewrite_positions(text: str, *, flip: bool, rot90: int) -> str:
    """Rewrite position words in ``text`` for a horizontal flip followed by ``rot90`` CCW turns."""
    if not flip and rot90 % 4 == 0:
        return text
    # Corners first, protected from the single-word pass by a placeholder.
    corners: list[str] = []

    def stash(m: re.Match) -> str:
        corners.append(_corner(m, flip, rot90))
        return f"\x00{len(corners) - 1}\x00"

    out = _CORNER.sub(stash, text)
    out = _SINGLE.sub(lambda m: _single(m, flip, rot90), out)
    out = re.sub("\x00(\\d+)\x00", lambda m: corners[int(m.group(1))], out)
    # Sides and ends take different prepositions: "on the left", "at the top".
    out = re.sub(r"\b([Aa])t the (left|right)\b",
                 lambda m: ("On" if m.group(1) == "A" else "on") + f" the {m.group(2)}", out)
    return re.sub(r"\b([Oo])n the (top|bottom)\b",
                  lambda m: ("At" if m.group(1) == "O" else "at") + f" the {m.group(2)}", out)


def mirror_caption(caption: str) -> str:
    """``caption`` for the image flipped left to right (sides, corners and compass words)."""
    return rewrite_positions(caption, flip=True, rot90=0)
