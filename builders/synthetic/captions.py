"""Caption edits that keep a caption true of an edited image (pure functions, no models).

A *mention* of an object label in a caption is a noun phrase: an optional determiner or count
("a", "three", "12", "the", "several"), up to two modifiers ("white", "small") and the label's
singular or plural noun ("car", "cars", "storage tanks"). The edits:

- :func:`replace_object`: the label's mentions name the new object instead; counts and every other
  word (positions included) stay. When only ``k`` of ``c`` counted instances were replaced the
  phrase becomes "two cars and a truck". A label the caption never mentions gets a clause with
  the new object's position ("..., with a truck in the upper left").
- :func:`remove_object`: the count of each mention drops by the number removed; a mention that
  falls to zero is deleted with its list comma or conjunction, its preposition ("with ...") and a
  position phrase right after it.
- :func:`add_variant`: the source caption plus a variant phrase (img2img).
- :func:`strip_positions`: position phrases removed (text2img, where layout is not kept).

Each returns ``None`` when no true caption is left (the caller counts a skip or picks another mode).
"""
from __future__ import annotations

import re
from dataclasses import dataclass

from wds_tools.caption_geometry import NUMBER_WORDS as _NUMBERS
from wds_tools.caption_geometry import POSITION_PHRASE as _POSITION

_COUNT = {w: i for i, w in enumerate(_NUMBERS)} | {"a": 1, "an": 1, "single": 1, "a single": 1}
_VAGUE = ("the", "some", "several", "many", "multiple", "numerous", "a few", "few", "a couple of",
          "a row of", "rows of", "a group of", "groups of", "a line of", "lots of", "a lot of")
_STOP = {"with", "and", "or", "of", "in", "on", "at", "near", "next", "to", "by", "along", "beside",
         "the", "a", "an", "is", "are", "there", "from", "between", "around", "across", "its",
         "their", "some", "several", "many", "as", "for", "into", "over", "under", "behind",
         "showing", "has", "have", "contains", "where", "which", "that", "while", *_NUMBERS[1:]}
_IRREGULAR = {"person": "people", "man": "men", "woman": "women", "child": "children",
              "leaf": "leaves", "sheep": "sheep", "fish": "fish", "aircraft": "aircraft",
              "bus": "buses", "greenhouse": "greenhouses", "cactus": "cacti"}
_IRREGULAR_SINGULAR = {v: k for k, v in _IRREGULAR.items()}
_DET = "|".join(sorted([re.escape(w) for w in _COUNT] + [re.escape(w) for w in _VAGUE] + [r"\d+"],
                       key=len, reverse=True))
_PREPS = ("with", "of", "near", "beside", "showing", "has", "have", "contains", "including",
          "and", "there is", "there are", "next to", "by")
_POSITION_RE = re.compile(_POSITION, re.I)


def plural(noun: str) -> str:
    """English plural of a (possibly multi-word) noun: the last word is inflected."""
    head, _, last = noun.rpartition(" ")
    low = last.lower()
    if low in _IRREGULAR:
        out = _IRREGULAR[low]
    elif re.search(r"(s|x|z|ch|sh)$", low):
        out = last + "es"
    elif re.search(r"[^aeiou]y$", low):
        out = last[:-1] + "ies"
    else:
        out = last + "s"
    return f"{head} {out}" if head else out


def singular(noun: str) -> str:
    """Inverse of :func:`plural` for the forms it makes (and nouns already singular)."""
    head, _, last = noun.rpartition(" ")
    low = last.lower()
    if low in _IRREGULAR_SINGULAR:
        out = _IRREGULAR_SINGULAR[low]
    elif low.endswith("ies") and len(low) > 4:
        out = last[:-3] + "y"
    elif re.search(r"(ouse|ourse|ase)s$", low):
        out = last[:-1]  # houses, warehouses, golf courses, bases: the singular ends in "e"
    elif re.search(r"(ses|xes|zes|ches|shes)$", low):
        out = last[:-2]
    elif low.endswith("s") and not low.endswith(("ss", "us", "is")):
        out = last[:-1]
    else:
        out = last
    return f"{head} {out}" if head else out


def article(noun: str) -> str:
    return "an" if noun[:1].lower() in "aeiou" else "a"


def count_phrase(n: int, noun: str, *, digits: bool = False) -> str:
    """"a truck", "two trucks", "14 trucks" (digits when asked or past twelve)."""
    if n == 1 and not digits:
        return f"{article(noun)} {noun}"
    word = str(n) if digits or n >= len(_NUMBERS) else _NUMBERS[n]
    return f"{word} {noun if n == 1 else plural(noun)}"


@dataclass
class Mention:
    """One noun phrase naming the label: span, count (None when vague), determiner, modifiers."""

    start: int
    end: int
    det: str
    modifiers: str
    noun: str
    is_plural: bool
    count: int | None
    digits: bool


def _label_re(label: str) -> re.Pattern:
    forms = sorted({singular(label), plural(singular(label))}, key=len, reverse=True)
    nouns = "|".join(re.escape(f).replace(r"\ ", r"\s+") for f in forms)
    mod = r"(?:(?!(?:{})\b)[a-z][a-z-]*\s+)".format("|".join(sorted(_STOP)))
    return re.compile(rf"\b(?:(?P<det>{_DET})\s+)?(?P<mod>{mod}{{0,2}}?)(?P<noun>{nouns})\b", re.I)


def find_mentions(caption: str, label: str) -> list[Mention]:
    """Every noun phrase of ``caption`` that names ``label`` (singular or plural), in order."""
    out = []
    for m in _label_re(label).finditer(caption):
        noun = m.group("noun")
        is_pl = singular(noun).lower() != noun.lower() or noun.lower() in _IRREGULAR_SINGULAR
        det = (m.group("det") or "")
        low = det.lower()
        if low.isdigit():
            count, digits = int(low), True
        elif low in _COUNT:
            count, digits = _COUNT[low], False
        else:
            count, digits = (None if (is_pl or low) else 1), False
        if count == 1 and is_pl:
            count = None  # "a cars": not a claim we can follow
        out.append(Mention(m.start(), m.end(), det, m.group("mod") or "", noun, is_pl, count, digits))
    return out


def _tidy(text: str) -> str:
    text = re.sub(r"\s+", " ", text)
    text = re.sub(r"\s+([,.;:])", r"\1", text)
    text = re.sub(r",\s*([.;:])", r"\1", text)
    text = re.sub(r",\s*,", ",", text)
    text = re.sub(r"^\s*[,;]\s*", "", text).strip()
    return text[:1].upper() + text[1:] if text else text


_FRAGMENT_START = {"in", "on", "at", "near", "next", "to", "by", "along", "beside", "with", "and",
                   "or", "of", "is", "are", "from", "between", "around", "across", "over", "under"}


def _meaningful(text: str) -> bool:
    """At least one content word, and not a bare prepositional fragment ("In the lot.")."""
    words = re.findall(r"[a-z]+", text.lower())
    return bool(words) and words[0] not in _FRAGMENT_START and any(w not in _STOP for w in words)


def _keep_case(original: str, new: str) -> str:
    return new[:1].upper() + new[1:] if original[:1].isupper() else new


def replace_object(caption: str, label: str, new: str, *, replaced: int) -> str | None:
    """``caption`` with ``replaced`` instances of ``label`` now being ``new`` (see module doc).

    Returns None when the caption does not mention ``label`` (use :func:`append_object`).
    """
    mentions = find_mentions(caption, label)
    if not mentions:
        return None
    new = singular(new)
    parts, pos = [], 0
    for m in mentions:
        parts.append(caption[pos:m.start])
        if m.count is None:
            noun = plural(new) if m.is_plural else new
            det = m.det.lower()
            if det in ("a", "an"):
                det = article(new)
            phrase = f"{det} {noun}".strip() if det else noun
        else:
            k = min(replaced, m.count)
            rest = m.count - k
            phrase = count_phrase(k, new, digits=m.digits) if rest == 0 else (
                f"{count_phrase(rest, m.modifiers + singular(m.noun).lower(), digits=m.digits)} and "
                f"{count_phrase(k, new, digits=m.digits)}")
        parts.append(_keep_case(caption[m.start:m.end], phrase))
        pos = m.end
    parts.append(caption[pos:])
    return _tidy("".join(parts))


def append_object(caption: str, new: str, count: int, position: str) -> str:
    """Add a clause for an object the caption did not name: "..., with a truck in the upper left."."""
    body = caption.rstrip().rstrip(".")
    joiner = "and" if re.search(r"\bwith\b", body, re.I) else "with"
    return _tidy(f"{body}, {joiner} {count_phrase(count, singular(new))} {position}.")


def _delete_span(text: str, start: int, end: int) -> str:
    """Remove text[start:end] with the comma, conjunction or preposition that joined it."""
    after = _POSITION_RE.match(text, end + (1 if text[end:end + 1] == " " else 0))
    if after:
        end = after.end()
    left, right = text[:start], text[end:]
    lstrip = left.rstrip()
    if re.match(r"^\s*,\s*", right) and re.search(r"(,|\band)\s*$", lstrip, re.I) is None:
        # "X, B, C": drop B and one of its commas
        if re.search(r"(with|of|showing|including)\s*$", lstrip, re.I):
            return left + re.sub(r"^\s*,\s*", "", right)
        return lstrip + re.sub(r"^\s*,", ",", right, count=1).replace(",", "", 1)
    m = re.search(r"(,\s*and|,|\band)\s*$", lstrip, re.I)
    if m:
        head = lstrip[:m.start()]
        if m.group(1).lower().endswith("and"):
            # "A, B and C" - C -> "A and B"
            clause_start = max(head.rfind(" with "), head.rfind(". "), head.rfind(" of "), 0)
            comma = head.rfind(",")
            if comma > clause_start:
                head = head[:comma] + " and" + head[comma + 1:]
        return head + right
    m = re.match(r"^\s*(and)\s+", right, re.I)
    if m:
        return left + right[m.end():]
    m = re.search(r"(?:,\s*)?\b({})\s*$".format("|".join(p.replace(" ", r"\s+") for p in _PREPS)),
                  lstrip, re.I)
    if m:
        return lstrip[:m.start()] + right
    return left + right


def remove_object(caption: str, label: str, *, removed: int, detected: int) -> str | None:
    """``caption`` after ``removed`` of the ``detected`` instances of ``label`` were filled in.

    Counted mentions drop by ``removed``; vague plurals ("cars", "some cars") follow
    ``detected - removed``. A caption that does not mention the label is returned unchanged; None
    when nothing meaningful is left.
    """
    if removed < 1:
        raise ValueError(f"removed must be >= 1, got {removed}")
    mentions = find_mentions(caption, label)
    if not mentions:
        return caption
    text = caption
    for m in reversed(mentions):  # right to left: earlier spans stay valid
        left_n = (m.count if m.count is not None else max(detected, 2 if m.is_plural else 1)) - removed
        if m.count is None and left_n >= 2 and m.is_plural:
            continue  # "cars" is still true of two or more
        if left_n >= 1:
            noun = m.modifiers + singular(m.noun).lower()
            phrase = count_phrase(left_n, noun, digits=m.digits)
            text = text[:m.start] + _keep_case(text[m.start:m.end], phrase) + text[m.end:]
        else:
            text = _delete_span(text, m.start, m.end)
    text = _tidy(text)
    if not text.endswith((".", "!", "?")) and caption.rstrip().endswith("."):
        text += "."
    return text if _meaningful(text) else None


def add_variant(caption: str, phrase: str) -> str:
    """Source caption plus the img2img variant phrase: "An aerial view of a forest, in winter."."""
    phrase = phrase.strip().rstrip(".")
    if not phrase:
        raise ValueError("variant phrase is empty")
    return _tidy(f"{caption.rstrip().rstrip('.')}, {phrase}.")


def strip_positions(caption: str) -> str | None:
    """``caption`` without position phrases ("in the upper left", "along the bottom", ...)."""
    text = re.sub(r"\s*" + _POSITION, " ", caption, flags=re.I)
    text = re.sub(r"\b(with|and)\s+(and|,|\.)", r"\2", text)
    text = _tidy(text)
    return text if _meaningful(text) else None
