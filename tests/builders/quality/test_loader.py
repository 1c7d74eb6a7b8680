from builders.quality.image_quality import ImageQualityConfig
from builders.quality.loader import ShardPart, batch_samples, plan_parts, prepare_samples, read_parts
from clip_models.config import ModelConfig
from clip_models.loading import load_clip
from tests.builders.quality.conftest import REPO


def test_plan_parts_by_shard_or_striped():
    assert plan_parts(["a", "b", "c"], 2) == [[ShardPart("a"), ShardPart("c")], [ShardPart("b")]]
    assert plan_parts(["a"], 2) == [[ShardPart("a", 0, 2)], [ShardPart("a", 1, 2)]]
    assert plan_parts(["a", "b"], 0) == [[ShardPart("a"), ShardPart("b")]]


def test_striped_parts_cover_a_shard_once(shard_dir):
    url = str(shard_dir / "q-000001.tar")
    seen = []
    for part in range(3):
        items = list(read_parts([ShardPart(url, part, 3)]))
        assert items[-1]["__done__"] == ShardPart(url, part, 3) and items[-1]["error"] is None
        seen += [s["__index__"] for s in items[:-1]]
    assert sorted(seen) == list(range(7))


def test_unreadable_shard_ends_part_with_error(tmp_path):
    missing = str(tmp_path / "gone.tar")
    (marker,) = list(read_parts([ShardPart(missing)]))
    assert marker["error"] and "gone.tar" in marker["error"]


def test_bad_samples_get_reasons_and_still_flow(shard_dir):
    url = str(shard_dir / "q-000001.tar")
    _, _, tok = load_clip(ModelConfig(name=str(REPO / "configs/models/tiny-clip.json"), device="cpu",
                                      precision="fp32"))
    prepared = prepare_samples(read_parts([ShardPart(url)]), clip_size=64, iq_size=64)
    batches = list(batch_samples(prepared, batch_size=3, iq_cfg=ImageQualityConfig(size=64), tokenizer=tok))
    records = [r for b in batches for r in b["records"]]
    reasons = {r["key"]: r["reasons"] for r in records}
    assert reasons["nocap_100"] == ["missing_caption"]
    assert reasons["broken_100"] == ["undecodable_image"]
    assert reasons["noimg_100"] == ["missing_image"]
    assert sum(1 for r in reasons.values() if not r) == 4
    assert sum(len(b["clip_index"]) for b in batches) == 4  # only image + caption go to the model
    assert [m["__done__"].url for b in batches for m in b["done"]] == [url]
    by_key = {r["key"]: r["scores"] for r in records}
    assert by_key["noimg_100"]["quality"] is None and by_key["nocap_100"]["quality"] is not None


def test_score_batches_fills_scores_and_drops_images_on_plain_lists():
    import pickle

    import torch

    from builders.quality.loader import score_batches, scored

    def rec(caption, captions, texts):
        return {"scores": {}, "caption": caption, "texts": texts,
                "captions": [{"source": src, "text": t} for t, src in captions]}

    records = [rec("a", [("a", "original"), ("b", "vlm")], ["a", "b"]),
               rec("", [], []),  # no caption: not scored
               rec("c", [("d", "original"), ("c", "m2b_b2c")], ["c", "d"])]  # primary drawn second
    batch = {"records": records, "clip_index": [0, 2], "text_owner": torch.tensor([0, 0, 1, 1]),
             "clip_images": torch.zeros(2, 3, 8, 8, dtype=torch.uint8), "tokens": torch.zeros(4, 77, dtype=torch.long)}
    seen = {}

    def scorer(images, tokens, owner):
        seen["owner"] = owner.tolist()
        return torch.tensor([0.5, 0.125, -0.25, 0.375])

    out = list(score_batches([batch], scorer=scorer))
    assert seen["owner"] == [0, 0, 1, 1]
    recs = out[0]["records"]
    assert [r["scores"]["clip"] for r in recs] == [0.5, None, -0.25]
    assert recs[0]["captions"] == [{"source": "original", "clip": 0.5}, {"source": "vlm", "clip": 0.125}]
    assert recs[2]["captions"] == [{"source": "original", "clip": 0.375}, {"source": "m2b_b2c", "clip": -0.25}]
    assert all("texts" not in r for r in recs)
    assert out[0]["scored"] and out[0]["clip_images"].numel() == 0 and out[0]["clip_index"] == []
    pickle.dumps(scored(scorer=max))  # the curried stage pickles (DataLoader workers under spawn)
