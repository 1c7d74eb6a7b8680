"""Stage 2 trains on exactly what the quality filter selected: selection checks, kept counts,
per-caption keep flags, and evaluation on original captions only."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.common.loader import TOKENIZER
from tests.training.conftest import TINY_CONFIG, make_source, write_test_selection
from training.config import DataConfig, Stage2Config
from training.data import LoaderSpec, build_sources, iter_batches
from training.evaluate import load_eval_set
from training.losses import rare_class_weights
from training.quality_gate import SelectionError, check_mix_selection, select_mix
from wds_tools.config import load_config
from wds_tools.quality_record import MEMBER, SIDECAR
from wds_tools.sidecar import read_sidecar, write_sidecar

REPO = Path(__file__).resolve().parents[2]


def _train_cfg(shards: Path, out: Path, *extra: str) -> Stage2Config:
    return load_config(Stage2Config, TINY_CONFIG, [
        f"data.real=[{shards}]", "data.synthetic=[]", f"train.output={out}", "train.max_steps=2",
        "eval.before=false", "eval.after=false", "data.num_workers=0", *extra])


def test_interrupted_filter_then_train_is_a_clear_error(tmp_path):
    from builders.quality.run import run, score_shards
    from tests.builders.quality.conftest import tiny_config
    from training.trainer import train

    shards = make_source(tmp_path / "real", source="real", n_shards=3, per_shard=4,
                         classes=["airport", "forest"], selection=False)
    urls = sorted(str(p) for p in shards.glob("real-*[0-9].tar"))
    fcfg = tiny_config(tmp_path, f"input={shards}", "loader.num_workers=0", "selection.min_clip_score_caption=-1")
    score_shards(fcfg, urls[:1])  # what a run killed in phase 1 leaves: one pending sidecar, no selection
    with pytest.raises(SelectionError) as e:
        train(_train_cfg(shards, tmp_path / "out"))
    msg = str(e.value)
    assert "3 of 3 shards" in msg and "builders.quality" in msg and "data.use_quality=false" in msg
    assert not (tmp_path / "out" / "training_log.json").exists()

    run(fcfg)  # the filter finishes: training proceeds, weighted from the kept counts
    log = train(_train_cfg(shards, tmp_path / "out"))
    saved = json.loads((tmp_path / "out" / "training_log.json").read_text())
    assert saved["summary"]["class_counts_from"] == "quality selection (kept samples)"
    selection = json.loads((shards / "selection.json").read_text())
    assert saved["summary"]["class_counts"] == selection["kept_by_class"]
    assert log

    score_shards(fcfg, urls[1:2])  # a later rescoring run killed in phase 1: that sidecar is pending again
    with pytest.raises(SelectionError, match="changed since the selection"):
        train(_train_cfg(shards, tmp_path / "out2"))
    # training unfiltered on purpose still works
    train(_train_cfg(shards, tmp_path / "out3", "data.use_quality=false"))


def test_missing_sidecars_warn_when_selection_is_not_required(tmp_path, caplog):
    shards = make_source(tmp_path / "real", source="real", n_shards=2, per_shard=4, classes=["forest"], selection=False)
    urls = sorted(str(p) for p in shards.glob("real-*[0-9].tar"))
    with pytest.raises(SelectionError, match="2 of 2 shards .*no selection.json beside the shards"):
        check_mix_selection(urls, files=[], require=True)
    sel = check_mix_selection(urls, files=[], require=False)
    assert sel.selection is None and sel.problems
    assert any("require_selection=false" in r.message for r in caplog.records)


def test_rare_class_weights_come_from_kept_counts(tmp_path):
    shards = make_source(tmp_path / "s", source="real", n_shards=3, per_shard=8, classes=["beach", "forest", "river"])
    # the filter kept 1 of the 8 river samples: uniform in the manifests, rare after the cut
    for shard in sorted(shards.glob("real-*[0-9].tar")):
        side = read_sidecar(str(shard), SIDECAR)
        recs = []
        for key, v in side.items():
            rec = dict(v[MEMBER])
            if rec["class"] == "river" and key != "real_0_2":
                rec.update(keep=False, reasons=["below_global_threshold"])
            recs.append((key, {MEMBER: rec}))
        write_sidecar(shard, SIDECAR, recs)
    write_test_selection(shards, sorted(shards.glob("real-*[0-9].tar")))
    sources = build_sources([str(shards)], [], 0.0)
    manifests = {"by_class": {"beach": 8, "forest": 8, "river": 8}, "total_samples": 24}
    _, counts = select_mix(DataConfig(), sources, manifests)
    assert counts["by_class"] == {"beach": 8, "forest": 8, "river": 1} and counts["total_samples"] == 17
    weights = rare_class_weights(counts["by_class"], rare_weight=2.0, threshold=0.5)
    assert weights == {"beach": 1.0, "forest": 1.0, "river": 2.0}
    assert rare_class_weights(manifests["by_class"], rare_weight=2.0, threshold=0.5)["river"] == 1.0
    _, off = select_mix(DataConfig(use_quality=False), sources, manifests)
    assert off["by_class"] == manifests["by_class"]


def test_a_source_the_selection_keeps_nothing_of_is_a_clear_error(tmp_path):
    real = make_source(tmp_path / "real", source="real", n_shards=2, per_shard=4, classes=["beach", "forest"])
    syn = make_source(tmp_path / "syn", source="synthetic", n_shards=2, per_shard=4, classes=["beach", "forest"])
    for shard in sorted(syn.glob("*[0-9].tar")):  # the filter dropped every synthetic sample
        recs = [(k, {MEMBER: {**v[MEMBER], "keep": False, "reasons": ["below_global_threshold"]}})
                for k, v in read_sidecar(str(shard), SIDECAR).items()]
        write_sidecar(shard, SIDECAR, recs)
    write_test_selection(syn, sorted(syn.glob("*[0-9].tar")))
    manifests = {"by_class": {"beach": 8, "forest": 8}, "total_samples": 16}
    with pytest.raises(ValueError, match="keeps no sample of the synthetic source .2 shards"):
        select_mix(DataConfig(), build_sources([str(real)], [str(syn)], 0.8), manifests)
    # without the synthetic source the same selection is fine
    assert select_mix(DataConfig(), build_sources([str(real)], [], 0.0), manifests)[1]["total_samples"] == 8


def test_shards_the_selection_keeps_nothing_of_leave_every_rank_something_to_stream(tmp_path, caplog):
    real = make_source(tmp_path / "real", source="real", n_shards=2, per_shard=4, classes=["beach", "forest"])
    syn = make_source(tmp_path / "syn", source="synthetic", n_shards=2, per_shard=4, classes=["beach", "forest"])
    empty = sorted(syn.glob("*[0-9].tar"))[1]  # the filter dropped every sample of the second shard
    recs = [(k, {MEMBER: {**v[MEMBER], "keep": False, "reasons": ["below_global_threshold"]}})
            for k, v in read_sidecar(str(empty), SIDECAR).items()]
    write_sidecar(empty, SIDECAR, recs)
    write_test_selection(syn, sorted(syn.glob("*[0-9].tar")))
    manifests = {"by_class": {"beach": 8, "forest": 8}, "total_samples": 16}
    given = build_sources([str(real)], [str(syn)], 0.8)
    with caplog.at_level("INFO", logger="training.quality_gate"):
        sources, counts = select_mix(DataConfig(), given, manifests)
    assert [len(s.urls) for s in sources] == [2, 1] and str(empty) not in sources[1].urls
    assert counts["total_samples"] == 8 + 4
    assert any("1 of 2 shards keep no sample" in r.message for r in caplog.records)
    # with two ranks, rank 1's slice of the synthetic shards was the empty shard alone: it streams now
    for rank in (0, 1):
        spec = LoaderSpec(sources=sources, batch_size=4, image_size=32, tokenizer=TOKENIZER, rank=rank,
                          world_size=2, shards_per_chunk=2, shuffle_buffer=4)
        batch = next(iter_batches(spec, 0))
        assert len(batch["keys"]) == 4 and not set(batch["keys"]) & {k for k, _ in recs}


def _caption_flags(shards: Path, flags: list[bool]) -> None:
    for shard in sorted(shards.glob("real-*[0-9].tar")):
        recs = [(k, {MEMBER: {**v[MEMBER], "captions": [{"source": s, "clip": 0.3 if f else 0.0, "keep": f}
                                                        for s, f in zip(("original", "vlm"), flags)]}})
                for k, v in read_sidecar(str(shard), SIDECAR).items()]
        write_sidecar(shard, SIDECAR, recs)


@pytest.mark.parametrize("random_caption", [True, False])
def test_a_dropped_caption_is_never_drawn(tmp_path, random_caption):
    shards = make_source(tmp_path / "c", source="real", n_shards=2, per_shard=6, classes=["forest", "beach"])
    spec = LoaderSpec(sources=build_sources([str(shards)], [], 0.0), batch_size=8, image_size=32,
                      tokenizer=TOKENIZER, shards_per_chunk=2, random_caption=random_caption)
    # sample captions: [0] "an aerial image of a X" (original), [1] "a X seen from above, sample i" (vlm)
    _caption_flags(shards, [False, True])  # the primary caption is the dropped one
    it = iter_batches(spec, 0)
    drawn = Counter(c.startswith("an aerial") for _ in range(40) for c in next(it)["captions"])
    assert drawn == {False: 320}  # 320 draws, never the dropped caption
    _caption_flags(shards, [True, False])
    it = iter_batches(spec, 0)
    assert Counter(c.startswith("an aerial") for _ in range(40) for c in next(it)["captions"]) == {True: 320}
    _caption_flags(shards, [True, True])
    it = iter_batches(spec, 0)
    both = Counter(c.startswith("an aerial") for _ in range(40) for c in next(it)["captions"])
    assert (both[True] > 100 and both[False] > 100) if random_caption else both == {True: 320}


def test_caption_flags_that_do_not_line_up_are_counted_skips(tmp_path):
    shards = make_source(tmp_path / "m", source="real", n_shards=1, per_shard=6, classes=["forest"])
    shard = next(shards.glob("real-*[0-9].tar"))
    recs = [(k, {MEMBER: {**v[MEMBER], "captions": [{"source": "original", "clip": 0.3, "keep": True}]}})
            for k, v in read_sidecar(str(shard), SIDECAR).items()]
    write_sidecar(shard, SIDECAR, recs[:3] + [(k, {MEMBER: {**read_sidecar(str(shard), SIDECAR)[k][MEMBER]}})
                                              for k, _ in recs[3:]])
    spec = LoaderSpec(sources=build_sources([str(shards)], [], 0.0), batch_size=3, image_size=32,
                      tokenizer=TOKENIZER, shards_per_chunk=1)
    it = iter_batches(spec, 0)
    batches = [next(it) for _ in range(4)]
    keys = {k for b in batches for k in b["keys"]}
    assert keys == {recs[i][0] for i in range(3, 6)}
    assert sum(b["counts"].get("skip_quality_captions_mismatch", 0) for b in batches) >= 3


def test_eval_on_original_captions_only(shard_dirs):
    every = load_eval_set([str(shard_dirs["val"])], size=32)
    original = load_eval_set([str(shard_dirs["val"])], size=32, caption_sources=["original"])
    assert all(len(c) == 2 for c in every.captions)
    assert all(len(c) == 1 and c[0].startswith("an aerial image") for c in original.captions)
    with pytest.raises(ValueError, match="no evaluable samples"):
        load_eval_set([str(shard_dirs["val"])], size=32, caption_sources=["zoom"])
    cfg = load_config(Stage2Config, TINY_CONFIG, ["eval.caption_sources=[original]"])
    assert cfg.eval.caption_sources == ["original"]
