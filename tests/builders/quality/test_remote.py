"""Shards on an object store (fsspec's in-memory file system): sidecars are uploaded beside them."""

import uuid

import fsspec
import pytest

from builders.quality.run import MEMBER, SIDECAR, run
from tests.builders.quality.conftest import make_shards, tiny_config
from wds_tools.reader import iter_shard
from wds_tools.sidecar import read_sidecar


@pytest.fixture
def bucket(tmp_path):
    """The three test shards uploaded to a fresh ``memory://`` bucket."""
    fs = fsspec.filesystem("memory")
    root = f"/bucket-{uuid.uuid4().hex[:8]}/ds"
    local = make_shards(tmp_path / "local")
    for p in sorted(local.glob("q-*.tar")):
        fs.put_file(str(p), f"{root}/{p.name}")
    yield fs, root
    fs.rm(root.rsplit("/", 1)[0], recursive=True)


def test_remote_shards_get_uploaded_sidecars_and_resume(bucket, tmp_path, monkeypatch):
    import wds_tools.sidecar as sc

    # sidecars are checked against the keys the workers read: no shard is fetched a second time
    monkeypatch.setattr(sc, "shard_keys", lambda url: pytest.fail(f"{url} was fetched again"))
    fs, root = bucket
    url = f"memory://{root}"
    cfg = tiny_config(tmp_path, f"input={url}", "loader.num_workers=2",
                      "selection.min_clip_score_synthetic=0.0")
    before = {p: fs.cat_file(p) for p in fs.ls(root, detail=False)}
    report = run(cfg)
    assert report["shards"]["scored_this_run"] == 3 and report["total"] == 19
    for p, data in before.items():
        assert fs.cat_file(p) == data  # the image shards are untouched
    sides = sorted(p for p in fs.ls(root, detail=False) if p.endswith(".quality.tar"))
    assert [s.rsplit("/", 1)[-1] for s in sides] == [f"q-00000{i}.quality.tar" for i in range(3)]
    for i in range(3):
        shard = f"{url}/q-00000{i}.tar"
        side = read_sidecar(shard, SIDECAR)
        joined = list(iter_shard(shard, sidecars=[SIDECAR]))
        assert [s["__key__"] for s in joined] == list(side)
        assert all("keep" in v[MEMBER] for v in side.values())
    assert (tmp_path / "report" / "quality_report.json").exists()
    again = run(cfg)  # every sidecar exists: nothing is scored twice
    assert again["shards"]["scored_this_run"] == 0 and again["kept"] == report["kept"]


def test_remote_shards_need_a_local_report_directory(bucket, tmp_path):
    _, root = bucket
    cfg = tiny_config(tmp_path, f"input=memory://{root}", "output=")
    with pytest.raises(ValueError, match="local report directory"):
        run(cfg)
