import pytest

from builders.quality.composite import composite_score, normalise_clip
from builders.quality.config import CompositeConfig, SelectionConfig
from builders.quality.selection import PENDING, decide, global_threshold, rescore


def test_composite_normalises_and_renormalises_weights():
    cfg = CompositeConfig()
    assert normalise_clip(0.25, cfg) == pytest.approx(0.5)
    assert normalise_clip(-1.0, cfg) == 0.0 and normalise_clip(0.9, cfg) == 1.0
    full = composite_score({"clip": 0.40, "sanity": 0.0, "quality": 1.0}, cfg)
    assert full == pytest.approx(0.5 * 1.0 + 0.25 * 0.0 + 0.25 * 1.0)
    # no sanity claim: the sanity weight is left out, not counted as 0 or 1
    assert composite_score({"clip": 0.25, "sanity": None, "quality": 1.0}, cfg) == pytest.approx(
        (0.5 * 0.5 + 0.25 * 1.0) / 0.75)
    assert composite_score({"clip": None, "sanity": None, "quality": None}, cfg) is None


def test_global_threshold_keeps_top_fraction():
    vals = [0.1 * i for i in range(10)]
    thr = global_threshold(vals + [None], 0.7)
    assert thr == pytest.approx(0.3)
    assert sum(v >= thr for v in vals) == 7
    assert global_threshold([None], 0.7) is None


def record(clip, source="real", reasons=(), quality=1.0):
    return {"scores": {"clip": clip, "sanity": None, "quality": quality}, "source": source,
            "reasons": list(reasons), "composite": None, "keep": False}


def test_decide_applies_floor_threshold_and_hard_fails():
    sel, comp = SelectionConfig(), CompositeConfig()
    synth_low = rescore(record(0.2, "synthetic", [PENDING]), comp)
    out = decide(synth_low, threshold=0.0, cfg=sel)
    assert not out["keep"] and out["reasons"] == ["below_synthetic_clip_floor"]
    real_low = decide(rescore(record(0.2), comp), threshold=0.9, cfg=sel)
    assert real_low["reasons"] == ["below_global_threshold"]
    broken = rescore(record(None, reasons=["undecodable_image", PENDING]), comp)
    assert broken["composite"] is None
    assert decide(broken, threshold=0.0, cfg=sel)["reasons"] == ["undecodable_image"]
    kept = decide(rescore(record(0.3, "synthetic"), comp), threshold=0.5, cfg=sel)
    assert kept["keep"] and kept["reasons"] == []
