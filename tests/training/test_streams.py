"""Per-source streams: interleaved shards, the shuffle buffer's memory bound and its resume state."""

from __future__ import annotations

import pytest

from tests.training.test_data import TOKENIZER, _class_sorted_source
from training import streams
from training.data import LoaderSpec, build_sources


def test_interleave_is_round_robin_until_each_ends():
    assert list(streams.interleave([iter("abc"), iter("1"), iter("xy")])) == list("a1xbyc")


def test_shuffle_buffer_bounds_memory_and_resumes_across_chunks(tmp_path, monkeypatch):
    src = _class_sorted_source(tmp_path / "sorted", n_shards=4, originals=2, augs=1)  # 4 a shard
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
