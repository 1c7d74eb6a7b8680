"""Per-source streams: interleaved shards, the shuffle buffer's memory bound and its resume state."""

from __future__ import annotations

import json

import pytest

from tests.common.loader import TOKENIZER, class_sorted_source
from training import streams
from training.data import LoaderSpec, build_sources


def test_interleave_is_round_robin_until_each_ends():
    assert list(streams.interleave([iter("abc"), iter("1"), iter("xy")])) == list("a1xbyc")


def test_shuffle_buffer_bounds_memory_and_resumes_across_chunks(tmp_path, monkeypatch):
    src = class_sorted_source(tmp_path / "sorted", n_shards=4, originals=2, augs=1)  # 4 a shard
    spec = LoaderSpec(sources=build_sources([str(src)], [], 0.0), batch_size=4, image_size=16,
                      tokenizer=TOKENIZER, shards_per_chunk=2, shuffle_buffer=20, quality_sidecar=None)
    pulled = [0]
    real_iter_shard = streams.iter_shard

    def counting(*a, **kw):
        for x in real_iter_shard(*a, **kw):
            pulled[0] += 1
            yield x
    monkeypatch.setattr(streams, "iter_shard", counting)
    out, held = [], []
    for n, item in enumerate(streams.resampled_samples(spec=spec, src_idx=0, worker=0, skips=streams.SkipLog())):
        held.append(pulled[0] - n - 1)
        out.append(item)
        if n == 199:
            break
    assert max(held) <= 20 and max(held) >= 10, held       # bounded by the buffer, and used
    positions = [it["__pos__"] for it in out]
    assert len(set(positions)) == len(positions)            # each raw sample once
    assert len({p[1] for p in positions[:20]}) >= 3          # the buffer spans chunks (8 samples each)
    # Resume from the state after sample 77 equals the uninterrupted stream.
    resumed = streams.resampled_samples(spec=spec, src_idx=0, worker=0, resume=out[77]["__resume__"],
                                     skips=streams.SkipLog())
    again = [next(resumed) for _ in range(100)]
    assert [(it["__key__"], it["__pos__"], it["__resume__"]) for it in again] == \
        [(it["__key__"], it["__pos__"], it["__resume__"]) for it in out[78:178]]
    with pytest.raises(ValueError, match="shuffle_buffer"):
        next(streams.resampled_samples(spec=LoaderSpec(**{**spec.__dict__, "shuffle_buffer": 0}), src_idx=0,
                                    worker=0, skips=streams.SkipLog()))
    with pytest.raises(ValueError, match="older loader"):
        next(streams.resampled_samples(spec=spec, src_idx=0, worker=0, resume=[3, 4], skips=streams.SkipLog()))


def test_shuffle_state_is_named_json_and_older_five_item_lists_still_resume(tmp_path):
    src = class_sorted_source(tmp_path / "sorted", n_shards=2, originals=2, augs=1)
    spec = LoaderSpec(sources=build_sources([str(src)], [], 0.0), batch_size=4, image_size=16,
                      tokenizer=TOKENIZER, shards_per_chunk=2, shuffle_buffer=6, quality_sidecar=None)
    stream = streams.resampled_samples(spec=spec, src_idx=0, worker=0, skips=streams.SkipLog())
    out = [next(stream) for _ in range(30)]
    state = out[11]["__resume__"]
    saved = json.loads(json.dumps(state.to_dict()))   # as a checkpoint stores it
    assert sorted(saved) == ["chunk", "last_key", "last_t", "offset", "t"]
    older = [saved[k] for k in ("chunk", "offset", "t", "last_key", "last_t")]  # the pre-dataclass form
    assert streams.ShuffleState.from_saved(saved) == streams.ShuffleState.from_saved(older) == state
    expected = [it["__key__"] for it in out[12:30]]
    for form in (saved, older):
        resumed = streams.resampled_samples(spec=spec, src_idx=0, worker=0, resume=form, skips=streams.SkipLog())
        assert [next(resumed)["__key__"] for _ in range(18)] == expected
    with pytest.raises(ValueError, match="not a shuffle state"):
        streams.ShuffleState.from_saved({"chunk": 1})
