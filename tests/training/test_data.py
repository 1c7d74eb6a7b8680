"""The streaming weighted mix: ratio, stratification, quality drops, splitting, resume position."""

from __future__ import annotations

import logging
from collections import Counter

import numpy as np
import pytest
import torch

from clip_models.text_tower import tokenizer_spec
from tests.common.loader import TOKENIZER, class_sorted_source
from training.data import (
    LoaderSpec,
    LoaderState,
    build_sources,
    iter_batches,
    make_loader,
    mirror_caption,
    mix_plan,
    random_resized_crop,
    read_manifests,
)


def _spec(shard_dirs, **kw) -> LoaderSpec:
    sources = build_sources([str(shard_dirs["real"])], [str(shard_dirs["synthetic"])], kw.pop("ratio", 0.8))
    return LoaderSpec(sources=sources, batch_size=kw.pop("batch_size", 4), image_size=32, tokenizer=TOKENIZER,
                      shards_per_chunk=2, **kw)


def _take(it, n):
    return [next(it) for _ in range(n)]


def test_mix_plan_independent_and_stratified():
    rng = np.random.default_rng(0)
    draws = np.concatenate([mix_plan(rng, [0.2, 0.8], 32, False) for _ in range(200)])
    assert (draws == 1).mean() == pytest.approx(0.8, abs=0.02)
    for _ in range(20):
        plan = mix_plan(rng, [0.2, 0.8], 10, True)
        assert Counter(plan.tolist()) == {0: 2, 1: 8}
    assert Counter(mix_plan(rng, [1, 1, 1], 4, True).tolist()) == {0: 2, 1: 1, 2: 1}


def test_batches_are_uint8_tokenised_and_quality_filtered(shard_dirs):
    batches = _take(iter_batches(_spec(shard_dirs, class_weights={"airport": 2.0}), 0), 12)
    b = batches[0]
    assert b["images"].dtype == torch.uint8 and b["images"].shape == (4, 3, 32, 32)
    assert b["text"].shape == (4, 77) and b["text"].dtype == torch.long
    keys = [k for b in batches for k in b["keys"]]
    synth_idx = [int(k.rsplit("_", 1)[1]) for k in keys if k.startswith("synthetic")]
    assert synth_idx and all(i % 4 != 3 for i in synth_idx)  # keep=False samples never come out
    assert sum(b["counts"].get("quality_dropped", 0) for b in batches) > 0
    for batch in batches:
        for key, src, w, cap in zip(batch["keys"], batch["sources"], batch["weights"], batch["captions"]):
            assert key.startswith(src)
            idx = int(key.rsplit("_", 1)[1])
            assert w.item() == (2.0 if key.startswith("real") and idx % 6 == 0 else 1.0)  # airport is rare
            assert cap in (f"a {c} seen from above, sample {idx}" for c in ("airport", "forest", "river", "beach")) \
                or cap.startswith("an aerial image of a")
    caps = Counter(c.startswith("an aerial") for b in batches for c in b["captions"])
    assert caps[True] > 0 and caps[False] > 0  # a random one of meta["captions"] per sample
    share = Counter(s for b in batches for s in b["sources"])["synthetic"] / 48
    assert 0.6 < share < 0.95


def test_streams_differ_by_rank_and_worker_and_repeat_by_seed(shard_dirs):
    def keys(**kw):
        return [b["keys"] for b in _take(iter_batches(_spec(shard_dirs, num_workers=2, world_size=2, **kw),
                                                      kw.pop("worker", 0)), 4)]
    assert keys(rank=0) == keys(rank=0)
    assert keys(rank=0) != keys(rank=1)
    spec = _spec(shard_dirs, num_workers=2)
    assert [b["keys"] for b in _take(iter_batches(spec, 0), 3)] != [b["keys"] for b in _take(iter_batches(spec, 1), 3)]


def test_stratified_batches_have_exact_proportions(shard_dirs):
    for batch in _take(iter_batches(_spec(shard_dirs, batch_size=5, stratified=True), 0), 6):
        assert Counter(batch["sources"]) == {"synthetic": 4, "real": 1}


def test_loader_resume_continues_the_sequence(shard_dirs):
    spec = _spec(shard_dirs, num_workers=2)
    full = [b["keys"] for b in _take(iter(make_loader(spec)), 7)]
    state = LoaderState(num_workers=2)
    for b in _take(iter(make_loader(spec)), 3):
        state.update(b)
    # prefetching more batches ahead changes when they are made, never which
    loader = make_loader(spec, state.to_dict(), prefetch_factor=6)
    assert loader.prefetch_factor == 6
    resumed = [b["keys"] for b in _take(iter(loader), 4)]
    assert resumed == full[3:]
    assert state.to_dict()["next_worker"] == 1 and state.batches == 3


def test_single_source_warns_and_bad_ratio_raises(shard_dirs, caplog):
    with caplog.at_level(logging.WARNING):
        sources = build_sources([str(shard_dirs["real"])], [], 0.8)
    assert [s.name for s in sources] == ["real"]
    assert "100% real" in caplog.text
    with pytest.raises(ValueError, match="synthetic_ratio must be in"):
        build_sources([str(shard_dirs["real"])], [], 1.5)
    with pytest.raises(ValueError, match="no data"):
        build_sources([], [], 0.8)


def test_manifests_give_class_counts(shard_dirs):
    m = read_manifests([str(shard_dirs["real"]), str(shard_dirs["synthetic"])])
    assert m["total_samples"] == 4 * 6 + 3 * 8
    assert m["by_class"] == {"airport": 4, "forest": 20, "river": 12, "beach": 12}


def test_random_resized_crop_is_seeded():
    img = torch.randint(0, 256, (3, 40, 60), dtype=torch.uint8)
    a, _ = random_resized_crop(img, size=16, scale_min=0.5, hflip=True, rng=np.random.default_rng(5))
    b, _ = random_resized_crop(img, size=16, scale_min=0.5, hflip=True, rng=np.random.default_rng(5))
    assert a.shape == (3, 16, 16) and a.dtype == torch.uint8 and torch.equal(a, b)
    flips = {random_resized_crop(img, size=16, scale_min=1.0, hflip=True, rng=np.random.default_rng(i))[1]
             for i in range(20)}
    assert flips == {True, False}


def test_flipped_images_get_mirrored_captions():
    assert mirror_caption("trees on the left, water in the Right corner; bright roofs") == \
        "trees on the right, water in the Left corner; bright roofs"


def test_training_flip_rewrites_compass_words_like_the_build_time_flip():
    # The build-time flip (builders/real/augment.py) turns west into east; the training-time
    # flip once swapped left/right only, leaving "a river in the west" false of the image.
    assert mirror_caption("a river in the west of a road on the left") == \
        "a river in the east of a road on the right"
    assert mirror_caption("FIELDS TO THE LEFT, a lake north-west") == "FIELDS TO THE RIGHT, a lake north-east"


def test_tokenizer_spec_of_tiny_model():
    from clip_models.loading import register_model_config

    register_model_config("configs/models/tiny-clip.json")
    assert tokenizer_spec("tiny-clip") == TOKENIZER


def test_corrupt_images_and_quality_members_are_counted_skips(tmp_path):
    from tests.training.conftest import tile
    from wds_tools.sample import encode_image, make_sample
    from wds_tools.sidecar import write_sidecar
    from wds_tools.writer import write_shard

    samples, records = [], []
    for i in range(6):
        image = b"not an image" if i == 1 else encode_image(tile("forest", i))
        samples.append(make_sample(key=f"s{i}", image=image, caption=f"forest {i}", meta={"source": "real"}))
        records.append((f"s{i}", {"msgpack": b"not a mapping" if i == 2 else {"keep": True}}))
    shard = tmp_path / "real-000000.tar"
    write_shard(shard, samples)
    write_sidecar(shard, "quality", records)
    sources = build_sources([str(shard)], [], 0.8)
    spec = LoaderSpec(sources=sources, batch_size=4, image_size=32, tokenizer=TOKENIZER, shards_per_chunk=1)
    batches = _take(iter_batches(spec, 0), 3)
    keys = {k for b in batches for k in b["keys"]}
    assert keys == {"s0", "s3", "s4", "s5"}
    counts = Counter()
    for b in batches:
        counts.update(b["counts"])
    assert counts["skip_corrupt_jpg"] >= 1 and counts["skip_corrupt_quality.msgpack"] >= 1
    assert "quality_dropped" not in counts


def test_batches_from_class_sorted_shards_hold_many_classes(tmp_path):
    src = class_sorted_source(tmp_path / "sorted")
    sources = build_sources([str(src)], [], 0.0)
    spec = LoaderSpec(sources=sources, batch_size=8, image_size=16, tokenizer=TOKENIZER,
                      shards_per_chunk=8, shuffle_buffer=48, quality_sidecar=None)
    batches = _take(iter_batches(spec, 0), 12)
    classes = [len({k.split("_")[0] for k in b["keys"]}) for b in batches]
    assert [b["mix"]["classes"] for b in batches] == classes
    assert np.mean(classes) >= 5, classes            # of 8 classes, 8 samples a batch
    one_shard = LoaderSpec(sources=sources, batch_size=8, image_size=16, tokenizer=TOKENIZER,
                           shards_per_chunk=1, shuffle_buffer=1, quality_sidecar=None)
    assert {b["mix"]["classes"] for b in _take(iter_batches(one_shard, 0), 6)} <= {1, 2}  # the failure mode
    for b in batches:  # same-source pairs and the ids the loss masks by
        groups = [k.split("_aug_")[0] for k in b["keys"]]
        assert b["mix"]["same_source_pairs"] == sum(groups.count(g) * (groups.count(g) - 1) // 2
                                                    for g in set(groups))
        same = [(i, j) for i in range(8) for j in range(8) if groups[i] == groups[j]]
        assert all(b["groups"][i] == b["groups"][j] for i, j in same)
        assert len(set(b["groups"].tolist())) == len(set(groups))
        caps = b["captions"]
        assert len(set(b["caption_ids"].tolist())) == len(set(caps))
