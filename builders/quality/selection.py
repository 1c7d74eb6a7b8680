"""Global selection: hard fails, the synthetic CLIP floor and one threshold over the whole dataset.

The threshold is the composite value of the sample ranked ``ceil(keep_top_percent * n)`` among the
``n`` samples that have a composite and no hard fail (all shards together, synthetic samples below
the floor included, so the threshold describes the whole data set). A sample is kept iff it has no
hard fail, is not a synthetic sample under the floor, and its composite is >= the threshold
(ties at the threshold are kept).
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from builders.quality.composite import composite_score
from builders.quality.config import CompositeConfig, SelectionConfig

PENDING = "pending_global_selection"
BELOW_FLOOR = "below_synthetic_clip_floor"
BELOW_THRESHOLD = "below_global_threshold"
NO_COMPOSITE = "no_composite"
SELECTION_REASONS = frozenset({PENDING, BELOW_FLOOR, BELOW_THRESHOLD, NO_COMPOSITE})


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


def decide(record: dict, *, threshold: float | None, cfg: SelectionConfig) -> dict:
    """Record with final ``keep`` and ``reasons`` (hard reasons first, then selection reasons)."""
    reasons = hard_reasons(record.get("reasons", []))
    clip = record["scores"].get("clip")
    if record.get("source") == "synthetic" and not reasons and (clip is None or clip < cfg.min_clip_score_synthetic):
        reasons.append(BELOW_FLOOR)
    composite = record.get("composite")
    if not hard_reasons(reasons):
        if composite is None:
            reasons.append(NO_COMPOSITE)
        elif threshold is None or composite < threshold:
            reasons.append(BELOW_THRESHOLD)
    return {**record, "keep": not reasons, "reasons": reasons}
