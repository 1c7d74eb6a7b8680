import pytest

from builders.quality.composite import composite_score, normalise_clip
from builders.quality.config import CompositeConfig, SelectionConfig
from builders.quality.keep_rules import PENDING, decide, global_threshold, rescore


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


def test_caption_floors_mark_captions_and_drop_samples_without_any():
    sel = SelectionConfig(min_clip_score_caption=0.2, caption_floors={"original": 0.0})
    rec = {**rescore(record(0.3), CompositeConfig()),
           "captions": [{"source": "original", "clip": 0.1}, {"source": "vlm", "clip": 0.19},
                        {"source": "m2b_b2c", "clip": 0.25}, {"source": "zoom", "clip": None}]}
    out = decide(rec, threshold=0.0, cfg=sel)
    assert [c["keep"] for c in out["captions"]] == [True, False, True, False]
    assert out["keep"]
    none_kept = {**rec, "captions": [{"source": "vlm", "clip": 0.1}]}
    out = decide(none_kept, threshold=0.0, cfg=sel)
    assert not out["keep"] and out["reasons"] == ["no_kept_caption"]


def _classed(values: dict[str, list[float]]) -> list[dict]:
    return [{"composite": v, "class": c} for c, vs in values.items() for v in vs]


def test_global_per_class_and_min_share_thresholds():
    from builders.quality.keep_rules import class_thresholds
    # "bare" scores low everywhere: the global cut keeps almost none of it
    recs = _classed({"bare": [0.1, 0.2, 0.3, 0.35], "church": [0.6, 0.7, 0.8, 0.9]}) + [{"composite": None}]
    overall, per = class_thresholds(recs, SelectionConfig(keep_top_percent=0.5))
    assert overall == 0.6 and per == {"bare": 0.6, "church": 0.6}
    _, per = class_thresholds(recs, SelectionConfig(keep_top_percent=0.5, per_class=True))
    assert per == {"bare": 0.3, "church": 0.8}  # top half of each class
    _, per = class_thresholds(recs, SelectionConfig(keep_top_percent=0.5, min_class_share=0.25))
    assert per == {"bare": 0.35, "church": 0.6}  # bare keeps at least one of its four


@pytest.mark.parametrize("override, message", [
    ("composite.clip_high=nan", "composite.clip_high: must be a finite number"),
    ("selection.keep_top_percent=.inf", "selection.keep_top_percent: must be a finite number"),
    ("selection.caption_floors.vlm=nan", "caption_floors.vlm: must be a finite number"),
    ("composite.clip_low=-1.5", "composite.clip_low must be in"),
    ("selection.min_class_share=1.5", "selection.min_class_share must be in"),
    ("selection.caption_floors.vlm=2", "selection.caption_floors.vlm must be in"),
    ("image_quality.brightness_high=0.05", "brightness_high"),
    ("image_quality.blur_ref=0", "image_quality.blur_ref must be > 0"),
])
def test_quality_config_rejects_non_finite_and_out_of_range(override, message):
    from builders.quality.config import QualityConfig
    from wds_tools.config import ConfigError, load_config
    with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
        load_config(QualityConfig, None, [override])
