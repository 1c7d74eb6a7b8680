"""Keep rules of the quality filter (its config section ``selection``): hard fails, the synthetic CLIP
floor and one threshold over the whole dataset, deciding the verdicts that ``selection.json`` records.

The threshold is the composite value of the sample ranked ``ceil(keep_top_percent * n)`` among the
``n`` samples that have a composite and no hard fail (all shards together, synthetic samples below
the floor included, so the threshold describes the whole data set). A sample is kept iff it has no
hard fail, is not a synthetic sample under the floor, and its composite is >= the threshold
(ties at the threshold are kept), and at least one of its captions passed its CLIP floor.

Per caption: every caption of a sample has its own cosine (``captions[i].clip``) and is kept iff
the cosine is >= the floor of its caption source. The composite (and so the threshold) uses the
primary caption's cosine (``scores.clip``) only; a sample whose captions all fail is dropped with
``no_kept_caption``.

Class-aware options (off by default): ``per_class`` computes the threshold within each class;
``min_class_share`` lowers a class's threshold until it keeps that share of its eligible samples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from builders.quality.composite import composite_score
from builders.quality.config import CompositeConfig, SelectionConfig
from wds_tools.quality_record import PENDING

BELOW_FLOOR = "below_synthetic_clip_floor"
BELOW_THRESHOLD = "below_global_threshold"
NO_COMPOSITE = "no_composite"
NO_KEPT_CAPTION = "no_kept_caption"
SELECTION_REASONS = frozenset({PENDING, BELOW_FLOOR, BELOW_THRESHOLD, NO_COMPOSITE, NO_KEPT_CAPTION})
NO_CLASS = "(no class)"


def hard_reasons(reasons: Iterable[str]) -> list[str]:
    """The reasons that come from the data itself (decode failures etc.), not from selection."""
    return [r for r in reasons if r not in SELECTION_REASONS]


def global_threshold(composites: Iterable[float | None], keep_top_percent: float) -> float | None:
    """Composite value at rank ``ceil(keep_top_percent * n)`` (descending); None when n == 0."""
    values = sorted((c for c in composites if c is not None), reverse=True)
    if not values:
        return None
    k = max(1, math.ceil(keep_top_percent * len(values) - 1e-9))
    return values[min(k, len(values)) - 1]


def rescore(record: dict, cfg: CompositeConfig) -> dict:
    """Record with the composite recomputed from its raw scores (None after a hard fail)."""
    failed = bool(hard_reasons(record.get("reasons", [])))
    return {**record, "composite": None if failed else composite_score(record["scores"], cfg)}


def class_key(record: dict) -> str:
    """The class a record is counted (and, with ``per_class``, selected) under."""
    cls = record.get("class")
    return NO_CLASS if cls in (None, "") else str(cls)


def class_thresholds(records: Iterable[dict], cfg: SelectionConfig) -> tuple[float | None, dict[str, float | None]]:
    """The global threshold and the threshold each class is cut at (see the module docstring).

    ``records`` carry ``composite`` (None = not eligible) and ``class``.
    """
    by_class: dict[str, list[float]] = {}
    for r in records:
        if r.get("composite") is not None:
            by_class.setdefault(class_key(r), []).append(r["composite"])
    overall = global_threshold((c for v in by_class.values() for c in v), cfg.keep_top_percent)
    out: dict[str, float | None] = {}
    for cls, values in by_class.items():
        t = global_threshold(values, cfg.keep_top_percent) if cfg.per_class else overall
        if cfg.min_class_share > 0:
            t_min = global_threshold(values, cfg.min_class_share)
            t = t_min if t is None else min(t, t_min)
        out[cls] = t
    return overall, out


def decide_captions(record: dict, cfg: SelectionConfig) -> list[dict]:
    """The record's captions with ``keep`` set by each caption's floor (no cosine: not kept)."""
    return [{**c, "keep": c.get("clip") is not None and c["clip"] >= cfg.caption_floor(c.get("source", ""))}
            for c in record.get("captions") or []]


def decide(record: dict, *, threshold: float | None, cfg: SelectionConfig) -> dict:
    """Record with final ``keep``, ``reasons`` (hard reasons first, then selection reasons) and
    per-caption ``keep``."""
    reasons = hard_reasons(record.get("reasons", []))
    clip = record["scores"].get("clip")
    if record.get("source") == "synthetic" and not reasons and (clip is None or clip < cfg.min_clip_score_synthetic):
        reasons.append(BELOW_FLOOR)
    captions = decide_captions(record, cfg)
    composite = record.get("composite")
    if not hard_reasons(reasons):
        if composite is None:
            reasons.append(NO_COMPOSITE)
        elif threshold is None or composite < threshold:
            reasons.append(BELOW_THRESHOLD)
        if captions and not any(c["keep"] for c in captions):
            reasons.append(NO_KEPT_CAPTION)
    return {**record, "keep": not reasons, "reasons": reasons, "captions": captions}
