"""data.kinds: Stage 2 trains only on the chosen sample kinds; the others are counted drops."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.common.loader import TOKENIZER
from tests.training.conftest import TINY_CONFIG, tile
from training.config import Stage2Config
from training.data import LoaderSpec, build_sources, iter_batches, kind_select
from wds_tools.config import ConfigError, load_config
from wds_tools.sample import encode_image, make_sample
from wds_tools.writer import write_shard

# per sample i: the kind its json names (None: no "kind" key, which counts as an original)
KINDS = ["original", "augmented", "zoom_crop", None]


def _kinds_shard(tmp_path, n: int = 8):
    samples = []
    for i in range(n):
        kind = KINDS[i % len(KINDS)]
        meta = {"source": "real", "class": "forest", "captions": [f"forest {i}"], "parent": None}
        if kind is not None:
            meta["kind"] = kind
        samples.append(make_sample(key=f"s{i}", image=encode_image(tile("forest", i, size=16)),
                                   caption=meta["captions"][0], meta=meta))
    shard = tmp_path / "real-000000.tar"
    write_shard(shard, samples)
    return shard


def _spec(shard, kinds) -> LoaderSpec:
    # shuffle_buffer=1: no read-ahead, so each batch's counts are exactly the samples it consumed
    return LoaderSpec(sources=build_sources([str(shard)], [], 0.0), batch_size=3, image_size=16,
                      tokenizer=TOKENIZER, shards_per_chunk=1, shuffle_buffer=1, quality_sidecar=None,
                      kinds=kinds)


def test_loader_trains_only_on_the_chosen_kinds_and_counts_the_rest(tmp_path):
    shard = _kinds_shard(tmp_path)
    batches = [b for _, b in zip(range(4), iter_batches(_spec(shard, ("original", "augmented")), 0))]
    keys = [k for b in batches for k in b["keys"]]
    # two passes over the shard: the zoom crops s2 and s6 never come out; s3 and s7 (no kind) do
    assert Counter(keys) == {f"s{i}": 2 for i in (0, 1, 3, 4, 5, 7)}
    assert [b["counts"].get("kind_dropped", 0) for b in batches] == [1, 1, 1, 1]

    only = [b for _, b in zip(range(2), iter_batches(_spec(shard, ("original",)), 0))]
    assert {k for b in only for k in b["keys"]} == {"s0", "s3", "s4", "s7"}
    assert sum(b["counts"]["kind_dropped"] for b in only) == 6  # s1, s2, s5, s6 and again s1, s2

    every = [b for _, b in zip(range(2), iter_batches(_spec(shard, ()), 0))]
    assert [k for b in every for k in b["keys"]] == [f"s{i}" for i in range(6)]
    assert not any("kind_dropped" in b["counts"] for b in every)


def test_kind_select_passes_unparsable_json_on_and_stops_when_no_sample_has_the_kind():
    raws = [{"__key__": "a", "json": json.dumps({"kind": "zoom_crop"}).encode()},
            {"__key__": "b", "json": b"{not json"},
            {"__key__": "c", "json": json.dumps({"kind": "original"}).encode()},
            {"__key__": "d"}]
    drops = Counter()
    assert [r["__key__"] for r in kind_select(raws, kinds=("original",), drops=drops)] == ["b", "c", "d"]
    assert drops == {"kind_dropped": 1}
    endless = ({"__key__": f"k{i}", "__url__": "x.tar", "json": b'{"kind": "augmented"}'} for i in range(100))
    with pytest.raises(ValueError, match=r"data.kinds=\['zoom_crop'\]: 5 samples in a row.*'augmented' in x.tar"):
        list(kind_select(endless, kinds=("zoom_crop",), drops=Counter(), max_consecutive=5))


def test_config_kinds_are_checked_and_reach_the_loader_spec():
    from training.trainer import _loader_spec

    with pytest.raises((ConfigError, ValueError), match="data.kinds: 'zoom-crop' is not a sample kind"):
        load_config(Stage2Config, TINY_CONFIG, ["data.kinds=[original,zoom-crop]"])
    with pytest.raises((ConfigError, ValueError), match="more than once"):
        load_config(Stage2Config, TINY_CONFIG, ["data.kinds=[original,original]"])
    cfg = load_config(Stage2Config, TINY_CONFIG, ["data.kinds=[original,augmented]"])
    assert cfg.data.kinds == ["original", "augmented"]
    spec = _loader_spec(cfg, {"sources": [], "class_weights": {}}, image_size=16, rank=0, world=1)
    assert spec.kinds == ("original", "augmented")
    assert load_config(Stage2Config, TINY_CONFIG).data.kinds == []
