"""The composite score: a weighted mean of three terms, each normalised to [0, 1].

- clip: raw cosine similarity mapped linearly, ``clamp((cos - clip_low) / (clip_high - clip_low), 0, 1)``
  (defaults 0.10 -> 0, 0.40 -> 1: the range where CLIP scores of real pairs mostly fall);
- sanity: the mean of the count and spatial checks, already in [0, 1] (see ``sanity.py``);
- quality: the image-quality product, already in [0, 1] (see ``image_quality.py``).

A term that cannot be computed (no count/position claim in the caption -> no sanity) is left out
and the remaining weights are renormalised, so such a sample is neither helped nor hurt.
"""

from __future__ import annotations

from builders.quality.config import CompositeConfig


def normalise_clip(cosine: float, cfg: CompositeConfig) -> float:
    """Raw CLIP cosine -> [0, 1] by the linear map documented above."""
    return min(max((cosine - cfg.clip_low) / (cfg.clip_high - cfg.clip_low), 0.0), 1.0)


def composite_score(scores: dict, cfg: CompositeConfig) -> float | None:
    """Weighted mean of the available normalised terms; ``None`` when none is available."""
    clip = scores.get("clip")
    terms = [
        (cfg.clip_weight, None if clip is None else normalise_clip(clip, cfg)),
        (cfg.sanity_weight, scores.get("sanity")),
        (cfg.image_quality_weight, scores.get("quality")),
    ]
    present = [(w, v) for w, v in terms if v is not None and w > 0]
    if not present:
        return None
    return sum(w * v for w, v in present) / sum(w for w, _ in present)
