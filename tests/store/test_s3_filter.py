"""The quality filter over shards on a real S3 API server (moto, 127.0.0.1): its sidecars and
``selection.json`` are uploaded beside the shards, and Stage 2's selection check finds and
accepts them there (sha256 of each sidecar read back from the store)."""

from __future__ import annotations

import pytest

from builders.quality.run import MEMBER, SIDECAR, run
from tests.builders.quality.conftest import make_shards, tiny_config
from training.quality_gate import check_mix_selection
from wds_tools.reader import iter_shard
from wds_tools.urls import expand_urls

pytestmark = pytest.mark.slow


def test_filter_writes_sidecars_and_selection_beside_s3_shards(s3_server, tmp_path):
    url = s3_server.upload(make_shards(tmp_path / "local"), "ds")
    before = {p: s3_server.fs.cat_file(p) for p in s3_server.fs.ls(url, detail=False)}
    report = run(tiny_config(tmp_path, f"input={url}", "loader.num_workers=2",
                             "selection.min_clip_score_synthetic=0.0"))
    assert report["shards"]["scored_this_run"] == 3
    s3_server.fs.invalidate_cache()
    after = sorted(p.rsplit("/", 1)[-1] for p in s3_server.fs.ls(url, detail=False))
    assert [n for n in after if n.endswith(".quality.tar")] == [f"q-00000{i}.quality.tar" for i in range(3)]
    assert "selection.json" in after
    assert all(s3_server.fs.cat_file(p) == data for p, data in before.items())  # shards untouched
    urls = expand_urls(url)
    mix = check_mix_selection(urls, files=[], require=True)
    assert mix.problems == [] and mix.selection.files == [f"{url}/selection.json"]
    assert mix.kept == report["kept"]
    joined = [s for u in urls for s in iter_shard(u, sidecars=[SIDECAR])]
    assert joined and all(MEMBER in s for s in joined)
