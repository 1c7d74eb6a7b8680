"""Stage 1 writing to a real S3 API server (moto, 127.0.0.1): the real builder, the synthetic
builder, the quality filter and materialize, ``s3://`` to ``s3://``, give the same sample keys and
kept sets as on local disk; a builder killed mid-upload leaves nothing partial under a final name
and its rerun ends equal to an uninterrupted build; bad credentials are one line at start; the
output lock is a conditional put on the store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.builders.conftest import tiny_vlm  # noqa: F401 - the tiny models of the synthetic stages
from tests.builders.synthetic.build_fixtures import REPO, model_overrides  # noqa: F401
from tests.builders.synthetic.conftest import tiny_esrgan, tiny_grounding_dino, tiny_sam, tiny_sd3  # noqa: F401
from tests.store.objects import REAL_ARGS, build_chain, comparable, demo_tiles, local_files, store_files

pytestmark = pytest.mark.slow

def _real_cli(inp, out, *extra, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builders.real", "--config", str(REPO / "configs/build/real.yaml"),
                           "--input", str(inp), "--output", str(out), *REAL_ARGS, *extra],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(REPO))


def test_real_builder_cli_writes_to_s3_as_to_a_local_folder(s3_server, tmp_path):
    tiles = demo_tiles(tmp_path)
    local = tmp_path / "local"
    url = s3_server.url("real")
    done = _real_cli(tiles, local)
    assert done.returncode == 0, done.stderr
    done = _real_cli(tiles, url, "workers=2")  # units upload from the pool's worker processes
    assert done.returncode == 0, done.stderr
    assert not (Path(REPO) / "s3:").exists() and not (tmp_path / "s3:").exists()
    on_store = store_files(s3_server, url)
    assert "build.lock" not in on_store  # released
    assert comparable(on_store) == comparable(local_files(local))
    assert {"train/dataset.json", "val/dataset.json", "build_summary.json"} <= set(on_store)
    again = _real_cli(tiles, url)  # a rerun keeps every finished shard on the store
    assert again.returncode == 0, again.stderr
    assert "6 shards kept from an earlier run" in again.stdout
    assert comparable(store_files(s3_server, url), rerun=True) == comparable(on_store, rerun=True)


def _env(tmp_path: Path) -> dict:
    return {**os.environ, "WDS_STAGING_DIR": str(tmp_path / "staging")}


@pytest.mark.parametrize("when", ["mid", "after"])
def test_a_build_killed_mid_upload_resumes_from_the_store(s3_server, tmp_path, when):
    tiles = demo_tiles(tmp_path)
    whole = s3_server.url("whole")
    assert _real_cli(tiles, whole, env=_env(tmp_path)).returncode == 0
    url = s3_server.url("killed")
    target = "train/real-train-000001.tar"
    killed = subprocess.run([sys.executable, "-m", "tests.store.kill_upload", target, when, "builders.real",
                             "--config", str(REPO / "configs/build/real.yaml"), "--input", str(tiles),
                             "--output", url, *REAL_ARGS], capture_output=True, text=True, timeout=300,
                            env=_env(tmp_path), cwd=str(REPO))
    assert killed.returncode == -9, killed.stderr
    left = store_files(s3_server, url)
    assert "train/real-train-000000.stats.json" in left  # a unit finished before the kill
    assert "train/real-train-000001.stats.json" not in left  # the killed unit is not finished...
    assert (target in left) == (when == "after")  # ...and mid-upload its tar is not visible at all
    assert not any(n.endswith(("dataset.json", "sizes.json", "build_summary.json")) for n in left)
    assert "build.lock" in left  # the dead holder's: taken over by the rerun (its pid is gone)
    rerun = _real_cli(tiles, url, env=_env(tmp_path))
    assert rerun.returncode == 0, rerun.stderr
    assert "shards kept from an earlier run" in rerun.stdout and "(0.0 s, 0 shards" not in rerun.stdout
    assert comparable(store_files(s3_server, url), rerun=True) == comparable(store_files(s3_server, whole),
                                                                                rerun=True)


def test_bad_credentials_are_one_line_at_start(start_s3_server, tmp_path):
    start_s3_server(auth=True)  # a store that knows no keys: every request is refused
    env = {**_env(tmp_path), "AWS_ACCESS_KEY_ID": "wrong", "AWS_SECRET_ACCESS_KEY": "wrong"}
    done = _real_cli(demo_tiles(tmp_path), "s3://shards/real", env=env)
    assert done.returncode == 2
    err = [line for line in done.stderr.splitlines() if "error" in line.lower()]
    assert len(err) == 1 and "s3://shards/real" in err[0] and "AWS_ACCESS_KEY_ID" in err[0], done.stderr
    assert "Traceback" not in done.stderr and "real build" not in done.stderr  # no unit started
    assert not (tmp_path / "staging").exists()


def test_a_missing_bucket_is_one_line_at_start(s3_server, tmp_path):
    done = _real_cli(demo_tiles(tmp_path), "s3://no-such-bucket/real", env=_env(tmp_path))
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert "the bucket 'no-such-bucket' does not exist" in done.stderr.splitlines()[-1]
    assert not (tmp_path / "staging").exists()


def test_the_store_lock_refuses_a_live_holder_and_one_taker_wins_a_stale_one(s3_server, tmp_path):
    import socket
    import time

    from wds_tools.lock import LockHeld, process_start_time
    from wds_tools.remote_output import Store, StoreLock

    store = Store(s3_server.url("locked"))
    live = {"host": socket.gethostname(), "pid": os.getpid(), "start_time": process_start_time(os.getpid()),
            "tool": "builders.real", "time": time.time()}
    s3_server.fs.pipe_file(store.key("build.lock"), json.dumps(live).encode())
    done = _real_cli(demo_tiles(tmp_path), store.url, env=_env(tmp_path))
    assert done.returncode == 2 and "is in use by builders.real pid" in done.stderr, done.stderr
    with pytest.raises(LockHeld):
        StoreLock(store, tool="t").acquire()
    dead = {**live, "host": "a-dead-node", "pid": 1, "time": time.time() - 3600}
    s3_server.fs.pipe_file(store.key("build.lock"), json.dumps(dead).encode())
    with pytest.raises(LockHeld, match="break_lock=true"):
        StoreLock(store, tool="t").acquire()
    s3_server.fs.invalidate_cache()
    stale_etag = s3_server.fs.info(store.key("build.lock"))["ETag"]
    first, second = StoreLock(store, tool="a"), StoreLock(store, tool="b")
    assert first._put(IfMatch=stale_etag)  # both judged the same stale lock: one put wins...
    assert not second._put(IfMatch=stale_etag)  # ...the other's condition fails
    assert not second._create()  # and create-if-absent never overwrites
    assert json.loads(s3_server.fs.cat_file(store.key("build.lock")))["tool"] == "a"
    s3_server.fs.rm_file(store.key("build.lock"))
    with StoreLock(store, tool="t", break_foreign=True) as lock:
        assert json.loads(s3_server.fs.cat_file(store.key("build.lock")))["pid"] == os.getpid()
        assert lock.etag
    s3_server.fs.invalidate_cache()
    assert not s3_server.fs.exists(store.key("build.lock"))  # released


def test_real_synthetic_filter_materialize_on_s3_equal_local(s3_server, tmp_path, model_overrides,  # noqa: F811
                                                             monkeypatch):
    monkeypatch.setenv("WDS_STAGING_DIR", str(tmp_path / "staging"))
    tiles = demo_tiles(tmp_path)
    local = build_chain(str(tmp_path / "local"), tiles, tmp_path / "lr" / "report", model_overrides)
    remote = build_chain(s3_server.url("p"), tiles, tmp_path / "sr" / "report", model_overrides)
    assert local["synthetic"] and local["materialized"] == local["kept_keys"]
    assert 0 < len(local["kept_keys"]) == local["kept"]
    assert remote == local
    on_store = store_files(s3_server, s3_server.url("p"))
    on_disk = local_files(tmp_path / "local")
    for name in ("real/train/dataset.json", "syn/train/dataset.json", "mat/dataset.json", "syn/preview.png"):
        assert name in on_store, name
    # the filter's verdicts beside the s3 shards, as beside the local ones
    sidecars = sorted(n for n in on_disk if n.endswith(".quality.tar") or n.endswith("selection.json"))
    assert sidecars and sorted(n for n in on_store if n in sidecars) == sidecars
    assert not any(n.startswith("syn/work/") for n in on_store)  # intermediates stay local
    assert not (tmp_path / "staging").exists() or not any((tmp_path / "staging").rglob("*.tar"))
