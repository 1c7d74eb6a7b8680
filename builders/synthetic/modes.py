"""The four generation modes: which mode, object, prompt and caption each variant gets.

Everything here is decided before any pixel is generated, from (seed, parent key, variant
number), the describe caption, the grounded boxes and the parent's own captions, so a rerun makes
the same plan. How each caption stays true of the new image:

- ``inpaint_replace``: every box of one grounded label is inpainted as another object of the
  same vocabulary group (similar footprint); each caption's noun phrase for the label names the
  new object with the same count and every other word, positions included, kept. A caption that
  never named the label gets a clause with the new object's position.
- ``inpaint_remove``: ``remove_count`` instances of one label are filled with their surroundings;
  each caption's count for the label drops by that many, a phrase falling to zero is deleted.
- ``img2img``: the whole tile re-rendered at ``strength`` as a season, lighting or sensor variant;
  caption = source caption plus the variant phrase (colour-region captions are dropped: colours
  change).
- ``text2img``: a new image from the enriched caption (describe caption + B2C layout caption);
  the layout is not kept, so the stored captions have their position phrases removed.

Grounded labels are reduced to the vocabulary noun they end in ("white car", "parked cars" ->
"car"), so an object the VLM named with an adjective is still editable. An inpaint mode that
cannot apply falls back to ``modes.fallback`` and the reason is counted: ``no_boxes``,
``not_in_vocabulary``, ``box_too_large`` or ``no_caption_left``.
"""
from __future__ import annotations

import hashlib
import random
from collections import Counter
from dataclasses import dataclass, field

from builders.real.b2c import spatial_phrase
from builders.synthetic.captions import (
    add_variant,
    append_object,
    count_phrase,
    find_mentions,
    plural,
    remove_object,
    replace_object,
    singular,
    strip_positions,
)
from builders.synthetic.config import MODES, ModesConfig


@dataclass
class VariantPlan:
    """One synthetic sample to generate."""

    key: str
    parent: str
    variant: int
    mode: str
    seed: int
    prompt: str
    negative_prompt: str
    strength: float
    steps: int
    guidance: float
    captions: list[str]
    caption_sources: list[str]
    boxes: list[dict] = field(default_factory=list)    # the sample's boxes after the edit
    mask_boxes: list[int] = field(default_factory=list)  # indexes into the source boxes
    label: str | None = None        # the edited object's label
    new_label: str | None = None    # inpaint_replace: what it became
    fallback: str | None = None     # why the drawn mode was replaced, if it was

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def _styled(text: str, cfg) -> str:
    """The style words first: without T5 (``text_encoder_3=None``) SD3 reads 77 CLIP tokens, and a
    long caption should lose its tail, not the style."""
    return f"{cfg.prompt_style}, {text.rstrip('.')}"


def variant_seed(seed: int, key: str, variant: int) -> int:
    """Deterministic 31-bit seed from (seed, key, variant)."""
    h = hashlib.sha256(f"{seed}:{key}:{variant}".encode()).digest()
    return int.from_bytes(h[:4], "little") & 0x7FFFFFFF


def norm_label(label: str) -> str:
    return singular(" ".join(str(label).lower().split()))


def vocabulary_noun(label: str, vocab: dict[str, list[str]]) -> str | None:
    """The vocabulary noun that ends ``label`` (singular or plural), its modifiers dropped:
    "white car", "parked cars" -> "car"; "small storage tanks" -> "storage tank"; None when
    ``label`` ends in no vocabulary noun. Only the last words count: English puts the head noun
    last, so a "car park" is not a car and a "house roof" is not a house."""
    words = norm_label(label).split()
    nouns = {norm_label(n) for ns in vocab.values() for n in ns}
    return next((tail for i in range(len(words)) if (tail := " ".join(words[i:])) in nouns), None)


def vocab_label(label: str, vocab: dict[str, list[str]]) -> str:
    """``label`` as grounding and editing use it: its vocabulary noun when it ends in one (so a
    "white car" can be edited as a car), else the label normalised."""
    return vocabulary_noun(label, vocab) or norm_label(label)


def draw_mode(rng: random.Random, cfg: ModesConfig) -> str:
    weights = [getattr(cfg.mix, m) for m in MODES]
    return rng.choices(MODES, weights=weights, k=1)[0]


def _group_of(label: str, vocab: dict[str, list[str]]) -> list[str]:
    for nouns in vocab.values():
        if label in (norm_label(n) for n in nouns):
            return nouns
    return []


def pick_replacement(label: str, rng: random.Random, vocab: dict[str, list[str]]) -> str:
    """Another object of ``label``'s vocabulary group (any object when it has no group)."""
    group = [n for n in _group_of(label, vocab) if norm_label(n) != label]
    if not group:
        group = sorted({n for ns in vocab.values() for n in ns if norm_label(n) != label})
    return rng.choice(group)


def _union(boxes: list[dict]) -> list[float]:
    return [min(b["box"][0] for b in boxes), min(b["box"][1] for b in boxes),
            max(b["box"][2] for b in boxes), max(b["box"][3] for b in boxes)]


def _labels(boxes: list[dict]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for i, b in enumerate(boxes):
        out.setdefault(norm_label(b["label"]), []).append(i)
    return out


def _area(b: dict) -> float:
    x0, y0, x1, y1 = b["box"]
    return max(x1 - x0, 0.0) * max(y1 - y0, 0.0)


def editable_boxes(boxes: list[dict], cfg: ModesConfig) -> list[int]:
    """Boxes an inpaint mode may edit: objects of the vocabulary (not scene nouns such as
    "beach" or "farmland", whose box is the whole tile) no larger than ``max_box_area``."""
    return [i for i, b in enumerate(boxes)
            if vocabulary_noun(b["label"], cfg.vocabulary) and 0 < _area(b) <= cfg.max_box_area]


def not_editable_reason(boxes: list[dict], cfg: ModesConfig) -> str:
    """Why no box of ``boxes`` is editable (the counted reason of an inpaint mode's fallback)."""
    if not boxes:
        return "no_boxes"                  # nothing grounded (or every mask came out empty)
    if not any(vocabulary_noun(b["label"], cfg.vocabulary) for b in boxes):
        return "not_in_vocabulary"         # only scene nouns or objects modes.vocabulary lacks
    return "box_too_large"                 # vocabulary objects, each over modes.max_box_area


def _pick_label(boxes: list[dict], captions: list[str], rng: random.Random) -> str | None:
    """A grounded label, preferring ones the captions name (their edit is what keeps them true)."""
    by_label = _labels(boxes)
    if not by_label:
        return None
    named = [lab for lab in sorted(by_label) if any(find_mentions(c, lab) for c in captions)]
    return rng.choice(named or sorted(by_label))


def _dedupe(caps: list[str], srcs: list[str]) -> tuple[list[str], list[str]]:
    seen, oc, os_ = set(), [], []
    for c, s in zip(caps, srcs):
        if c and c.lower() not in seen:
            seen.add(c.lower())
            oc.append(c)
            os_.append(s)
    return oc, os_


@dataclass
class SourceText:
    """What the planner knows of one source image besides its pixels."""

    key: str
    describe: str | None            # the describe stage's caption (None: skipped)
    captions: list[str]             # the parent's own captions
    caption_sources: list[str]
    b2c: str | None = None          # layout caption of the source (M2B/B2C)


def _texts(src: SourceText) -> tuple[list[str], list[str]]:
    """The parent's own captions first (human captions beat a VLM's), then the describe caption."""
    caps = list(src.captions) + ([src.describe] if src.describe else [])
    srcs = list(src.caption_sources) + (["vlm"] if src.describe else [])
    return _dedupe(caps, srcs)


def _replace(src: SourceText, boxes: list[dict], rng: random.Random, cfg: ModesConfig):
    caps, srcs = _texts(src)
    ok = editable_boxes(boxes, cfg)
    label = _pick_label([boxes[i] for i in ok], caps, rng)
    if label is None:
        return not_editable_reason(boxes, cfg)
    idx = [i for i in ok if norm_label(boxes[i]["label"]) == label]
    new = norm_label(pick_replacement(label, rng, cfg.vocabulary))
    out_c, out_s = [], []
    for c, s in zip(caps, srcs):
        edited = replace_object(c, label, new, replaced=len(idx))
        out_c.append(edited or c)
        out_s.append("synthetic_edit" if edited else s)
    if "synthetic_edit" not in out_s and out_c:
        # no caption named the object: the first one gains a clause for the new one
        out_c[0] = append_object(out_c[0], new, len(idx),
                                 spatial_phrase(_union([boxes[j] for j in idx])))
        out_s[0] = "synthetic_edit"
    order = sorted(range(len(out_c)), key=lambda i: out_s[i] != "synthetic_edit")
    obj = count_phrase(len(idx), new)
    prompt = _styled(cfg.replace_prompt.format(object=obj), cfg)
    new_boxes = [({**b, "label": new, "edited": True} if i in idx else b) for i, b in enumerate(boxes)]
    return dict(captions=[out_c[i] for i in order], caption_sources=[out_s[i] for i in order],
                prompt=prompt, negative_prompt=f"{cfg.negative_prompt}, {plural(label)}",
                boxes=new_boxes, mask_boxes=idx, label=label, new_label=new)


def _remove(src: SourceText, boxes: list[dict], rng: random.Random, cfg: ModesConfig):
    caps, srcs = _texts(src)
    ok = editable_boxes(boxes, cfg)
    label = _pick_label([boxes[i] for i in ok], caps, rng)
    if label is None:
        return not_editable_reason(boxes, cfg)
    idx = [i for i in ok if norm_label(boxes[i]["label"]) == label]
    gone = sorted(idx, key=lambda j: (-float(boxes[j].get("score", 0.0)), j))[:cfg.remove_count]
    out_c, out_s = [], []
    for c, s in zip(caps, srcs):
        edited = remove_object(c, label, removed=len(gone), detected=len(idx))
        if edited is not None:
            out_c.append(edited)
            out_s.append("synthetic_edit" if edited != c else s)
    if not out_c:
        return "no_caption_left"
    order = sorted(range(len(out_c)), key=lambda i: out_s[i] != "synthetic_edit")
    out_c, out_s = [out_c[i] for i in order], [out_s[i] for i in order]
    return dict(captions=out_c, caption_sources=out_s,
                prompt=_styled(out_c[0], cfg),
                negative_prompt=f"{cfg.negative_prompt}, {plural(label)}",
                boxes=[b for j, b in enumerate(boxes) if j not in gone], mask_boxes=gone,
                label=label)


def _img2img(src: SourceText, boxes: list[dict], rng: random.Random, cfg: ModesConfig):
    caps, srcs = _texts(src)
    keep = [c for c, s in zip(caps, srcs) if s != "m2b_b2c"] or caps[:1]
    if not keep:
        return "no_caption"
    phrase = rng.choice(cfg.variants)
    out = [add_variant(c, phrase) for c in keep]
    return dict(captions=out, caption_sources=["synthetic_edit"] * len(out),
                # the variant is what the edit must show: right after the style, ahead of the
                # caption, so a 77-token cut drops the caption's tail rather than the variant
                prompt=_styled(f"{phrase.strip().rstrip('.')}, {keep[0]}", cfg),
                negative_prompt=cfg.negative_prompt, boxes=list(boxes), label=None)


def _join(parts) -> str:
    seen, out = set(), []
    for p in parts:
        if p and p.lower() not in seen:
            seen.add(p.lower())
            out.append(p.strip().rstrip("."))
    return ". ".join(out) + "." if out else ""


def _text2img(src: SourceText, boxes: list[dict], rng: random.Random, cfg: ModesConfig):
    first = next((c for c, s in zip(src.captions, src.caption_sources) if s != "m2b_b2c"), None)
    if not (first or src.describe):
        return "no_caption"
    prompt = _join([first, src.describe, src.b2c])   # the enriched caption: VLM + B2C
    caps, srcs = [], []
    for text, source in ((_join([first, src.b2c]), "synthetic_edit"), (src.describe, "vlm")):
        stripped = strip_positions(text) if text else None
        if stripped:
            caps.append(stripped)
            srcs.append(source)
    caps, srcs = _dedupe(caps, srcs)
    if not caps:
        return "no_caption_left"
    return dict(captions=caps, caption_sources=srcs,
                prompt=_styled(prompt, cfg),
                negative_prompt=cfg.negative_prompt, boxes=[], label=None)


_PLANNERS = {"inpaint_replace": _replace, "inpaint_remove": _remove, "img2img": _img2img,
             "text2img": _text2img}


def plan_variants(src: SourceText, boxes: list[dict], cfg: ModesConfig, *, seed: int,
                  out_key, tally: Counter | None = None) -> tuple[list[VariantPlan], list[str]]:
    """Plans for ``cfg.per_image`` variants of one source, and the reasons of the ones skipped.

    ``out_key(parent, variant)`` names each synthetic sample. ``tally``, when given, counts each
    drawn mode (``drawn:<mode>``) and each inpaint mode that could not apply
    (``unapplied:<mode>:<reason>``), whether it then fell back or was skipped.
    """
    plans, skips = [], []
    tally = Counter() if tally is None else tally
    boxes = [{**b, "label": vocab_label(b["label"], cfg.vocabulary)} for b in boxes]
    for v in range(cfg.per_image):
        s = variant_seed(seed, src.key, v)
        rng = random.Random(s)
        mode = draw_mode(rng, cfg)
        tally[f"drawn:{mode}"] += 1
        got = _PLANNERS[mode](src, boxes, rng, cfg)
        fallback = None
        if isinstance(got, str) and mode.startswith("inpaint"):
            tally[f"unapplied:{mode}:{got}"] += 1
        if isinstance(got, str) and mode.startswith("inpaint") and cfg.fallback:
            fallback = f"{mode}:{got}"
            mode = cfg.fallback
            got = _PLANNERS[mode](src, boxes, rng, cfg)
        if isinstance(got, str):
            skips.append(f"{mode}:{got}")
            continue
        ms = getattr(cfg, mode)
        plans.append(VariantPlan(key=out_key(src.key, v), parent=src.key, variant=v, mode=mode,
                                 seed=s, strength=ms.strength, steps=ms.steps,
                                 guidance=ms.guidance, fallback=fallback, **got))
    return plans, skips
