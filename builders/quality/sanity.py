"""Caption-versus-image sanity checks: object counts and spatial layout against boxes.

A caption makes *claims* ("two buildings", "a river on the left"); each claim is checked against
the sample's boxes (recorded M2B/detector boxes, or regions computed from the pixels). Every
checkable claim scores in [0, 1]; a caption with no claims of a kind gets ``None`` for that kind
(nothing to verify), so it is neither rewarded nor punished by the composite.

Count score: the caption's number word maps to an allowed range ``[lo, hi]`` ("two" -> [2, 2],
"several" -> [3, 7], "many" -> [5, inf)); with ``n`` matching boxes the score is 1 inside the range,
otherwise ``(1 + min(n, b)) / (1 + max(n, b))`` for the nearest bound ``b`` (so 1 vs "three" = 0.5).

Spatial score: each position phrase defines a soft region over box centres (e.g. "left": 1 for
``cx <= 0.35`` falling linearly to 0 at ``cx >= 0.6``); the claim scores the best matching box.
Boxes whose label matches the claimed noun (directly or through ``LABEL_WORDS``, e.g. "shrubs" ->
vegetation) are preferred; when no box label matches, all boxes count. A sample's claims are
gathered from all of its captions (the primary ``txt`` and ``meta["captions"]``).
The count and position words are the shared vocabulary of ``wds_tools.caption_geometry``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from wds_tools.caption_geometry import CENTRE_WORDS, COUNT_RANGES, DOWN_WORDS, UP_WORDS

INF = math.inf

# number word -> allowed count range (the shared vocabulary; the name is kept for callers)
COUNT_WORDS: dict[str, tuple[float, float]] = COUNT_RANGES
_COUNT_RE = re.compile(
    r"\b(" + "|".join(sorted(COUNT_WORDS, key=len, reverse=True)) + r"|\d{1,3})\b"
    r"(?:\s+of)?((?:\s+[a-z]+){1,4})",
    re.IGNORECASE,
)
_STOP_NOUNS = {
    "the", "a", "an", "of", "and", "or", "with", "in", "on", "at", "by", "to", "which", "that", "are",
    "is", "next", "near", "beside", "along", "around", "between", "from", "for", "its", "their",
}

# position phrase -> (axis constraints); each constraint is (axis, kind) with kind low/high/mid
_UP, _DOWN, _MID = "|".join(UP_WORDS), "|".join(DOWN_WORDS), "|".join(CENTRE_WORDS)


def _corner(vert: str, side: str) -> re.Pattern[str]:
    return re.compile(rf"\b(?:{vert})[\s-]+{side}\b|\b{side}[\s-]+(?:{vert})\b")


_POSITIONS: list[tuple[re.Pattern[str], tuple[tuple[str, str], ...]]] = [
    (_corner(_UP, "left"), (("x", "low"), ("y", "low"))),
    (_corner(_UP, "right"), (("x", "high"), ("y", "low"))),
    (_corner(_DOWN, "left"), (("x", "low"), ("y", "high"))),
    (_corner(_DOWN, "right"), (("x", "high"), ("y", "high"))),
    (re.compile(r"\bleft\b"), (("x", "low"),)),
    (re.compile(r"\bright\b(?!\s+(?:angle|next))"), (("x", "high"),)),
    (re.compile(rf"\b(?:{_UP})\b"), (("y", "low"),)),
    (re.compile(rf"\b(?:{_DOWN})\b"), (("y", "high"),)),
    (re.compile(rf"\b(?:{_MID})\b"), (("x", "mid"), ("y", "mid"))),
]


@dataclass(frozen=True)
class CountClaim:
    """A number word with the noun it counts, e.g. ``("two", "building", 2, 2)``."""

    word: str
    noun: str
    lo: float
    hi: float


@dataclass(frozen=True)
class SpatialClaim:
    """A position phrase (e.g. "upper left") with the constraints it implies."""

    phrase: str
    constraints: tuple[tuple[str, str], ...]
    noun: str | None


def _singular(word: str) -> str:
    word = word.lower()
    for suffix, repl in (("ies", "y"), ("sses", "ss"), ("shes", "sh"), ("ches", "ch"), ("xes", "x"),
                         ("ss", "ss"), ("s", "")):
        if word.endswith(suffix) and len(word) > len(suffix) + 2:
            return word[: -len(suffix)] + repl
    return word


def _noun_run(text: str) -> list[str]:
    """Words after a number word up to the first function word or participle."""
    run = []
    for w in text.lower().split():
        if w in _STOP_NOUNS or (run and w.endswith(("ed", "ing"))):
            break
        run.append(w)
    return run


def parse_count_claims(caption: str) -> list[CountClaim]:
    """Find number words and the noun after each ("three large buildings" -> building)."""
    claims = []
    for m in _COUNT_RE.finditer(caption):
        word = m.group(1).lower()
        noun_words = _noun_run(m.group(2))
        if not noun_words:
            continue
        # the counted noun is plural after a count > 1: "three large white tanks" -> tanks
        plural = [w for w in noun_words if w.endswith("s") and not w.endswith("ss")]
        noun = plural[-1] if plural else noun_words[-1]
        if word.isdigit():
            lo = hi = float(int(word))
        else:
            lo, hi = COUNT_WORDS[word]
        claims.append(CountClaim(word, _singular(noun), lo, hi))
    return claims


def _noun_near(caption: str, start: int) -> str | None:
    """The last content word before a position phrase ("a river on the left" -> river)."""
    words = [w for w in re.findall(r"[a-z]+", caption[:start].lower()) if w not in _STOP_NOUNS]
    return _singular(words[-1]) if words else None


def parse_spatial_claims(caption: str) -> list[SpatialClaim]:
    """Find position phrases; corner phrases win over their single-axis parts."""
    text = caption.lower()
    taken: list[tuple[int, int]] = []
    claims = []
    for pattern, constraints in _POSITIONS:
        for m in pattern.finditer(text):
            if any(m.start() < e and s < m.end() for s, e in taken):
                continue
            taken.append((m.start(), m.end()))
            claims.append(SpatialClaim(m.group(0), constraints, _noun_near(text, m.start())))
    return claims


# caption nouns that name an M2B land-cover label (B2C captions say "trees or shrubs", not "vegetation")
LABEL_WORDS: dict[str, frozenset[str]] = {
    "vegetation": frozenset({"vegetation", "tree", "shrub", "grass", "forest", "wood", "crop", "field", "park",
                             "lawn", "greenery"}),
    "water": frozenset({"water", "river", "lake", "sea", "ocean", "pond", "pool", "harbor", "harbour", "canal"}),
    "urban": frozenset({"urban", "building", "house", "roof", "surface", "structure", "settlement", "car"}),
    "road": frozenset({"road", "street", "highway", "freeway", "pavement", "surface", "runway", "lot"}),
    "bare soil": frozenset({"soil", "ground", "dirt", "land"}),
    "sand": frozenset({"sand", "beach", "dune", "ground"}),
    "shadow": frozenset({"shadow"}),
}


def _label_matches(label: str, noun: str) -> bool:
    label = _singular(label)
    return label == noun or label.endswith(" " + noun) or noun in LABEL_WORDS.get(label, ())


def _matching_boxes(boxes: Sequence[dict], noun: str | None) -> list[dict]:
    if noun:
        named = [b for b in boxes if _label_matches(str(b.get("label", "")), noun)]
        if named:
            return named
    return list(boxes)


def count_score(claim: CountClaim, boxes: Sequence[dict]) -> float:
    """1 when the number of matching boxes is inside the claimed range, decaying with the gap."""
    n = len(_matching_boxes(boxes, claim.noun))
    if claim.lo <= n <= claim.hi:
        return 1.0
    bound = claim.lo if n < claim.lo else claim.hi
    return (1.0 + min(n, bound)) / (1.0 + max(n, bound))


def _axis_membership(value: float, kind: str) -> float:
    if kind == "low":
        return min(max((0.6 - value) / 0.25, 0.0), 1.0)
    if kind == "high":
        return min(max((value - 0.4) / 0.25, 0.0), 1.0)
    return min(max((0.35 - abs(value - 0.5)) / 0.2, 0.0), 1.0)


def spatial_score(claim: SpatialClaim, boxes: Sequence[dict]) -> float | None:
    """Best soft membership of a matching box centre in the claimed region; None without boxes."""
    candidates = _matching_boxes(boxes, claim.noun)
    if not candidates:
        return None
    best = 0.0
    for b in candidates:
        x0, y0, x1, y1 = (float(v) for v in b["box"])
        centre = {"x": (x0 + x1) / 2, "y": (y0 + y1) / 2}
        best = max(best, min(_axis_membership(centre[axis], kind) for axis, kind in claim.constraints))
    return best


def has_claims(captions: str | Sequence[str]) -> bool:
    """True when any caption makes a count or position claim (only then are boxes needed)."""
    captions = [captions] if isinstance(captions, str) else captions
    return any(parse_count_claims(c) or parse_spatial_claims(c) for c in captions)


def sanity_scores(captions: str | Sequence[str], boxes: Sequence[dict],
                  verify: dict | None = None) -> dict[str, float | None]:
    """``sanity_count``, ``sanity_spatial`` (means over the claims of all captions) and ``sanity``.

    Any of them is None when no caption makes a claim of that kind (or, for spatial, there are
    no boxes to place); ``sanity`` (the mean of the two) is None only when neither can be checked.
    A synthetic edit's ``verify`` record (the edited object found inside its mask, or gone from
    it, as intended) adds ``sanity_verify`` (1 or 0) to the mean.
    """
    captions = [captions] if isinstance(captions, str) else list(captions)
    counts = [count_score(c, boxes) for cap in captions for c in parse_count_claims(cap)]
    spatial = [s for cap in captions for s in (spatial_score(c, boxes) for c in parse_spatial_claims(cap))
               if s is not None]
    count_v = sum(counts) / len(counts) if counts else None
    spatial_v = sum(spatial) / len(spatial) if spatial else None
    verify_v = float(bool(verify["ok"])) if verify and verify.get("ok") is not None else None
    parts = [v for v in (count_v, spatial_v, verify_v) if v is not None]
    out = {
        "sanity": sum(parts) / len(parts) if parts else None,
        "sanity_count": count_v,
        "sanity_spatial": spatial_v,
    }
    if verify is not None:
        out["sanity_verify"] = verify_v
    return out
