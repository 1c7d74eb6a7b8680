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

from builders.demo_images import make_demo_tree
from tests.builders.synthetic.build_fixtures import REPO

pytestmark = pytest.mark.slow

REAL_ARGS = ["size=32", "images_per_shard=2", "workers=1", "m2b.analysis_size=32", "augment.per_image=1",
             "zoom.enabled=false", "preview=false", "splits.val_fraction=0.5", "splits.test_fraction=0.0"]


def _tiles(tmp_path: Path) -> Path:
    return make_demo_tree(tmp_path / "tiles", per_class=2, size=32, seed=3)


def _real_cli(inp, out, *extra, env=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "builders.real", "--config", str(REPO / "configs/build/real.yaml"),
                           "--input", str(inp), "--output", str(out), *REAL_ARGS, *extra],
                          capture_output=True, text=True, timeout=300, env=env, cwd=str(REPO))


def _local_files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "build.lock"}


def _store_files(server, url: str) -> dict[str, bytes]:
    server.fs.invalidate_cache()
    base = url.split("://", 1)[1].rstrip("/")
    return {p[len(base) + 1:]: server.fs.cat_file(p) for p in sorted(server.fs.find(base))}


def _comparable(files: dict[str, bytes], *, rerun: bool = False) -> dict[str, object]:
    """The files with what names the output location (the resolved config's ``output``) left out;
    ``rerun``: and the summary's count of shards kept from an earlier run."""
    out: dict[str, object] = {}
    for name, data in files.items():
        if name.endswith(".json") and name.rsplit("/", 1)[-1] in ("dataset.json", "build_summary.json"):
            d = json.loads(data)
            d.pop("config", None)
            if rerun:
                d.pop("resumed_shards", None)
            for split in d.get("splits", {}).values():
                split.pop("config", None)
            out[name] = d
        elif name == "build_config.yaml":
            out[name] = [line for line in data.decode().splitlines() if not line.startswith("output:")]
        else:
            out[name] = data
    return out


def test_real_builder_cli_writes_to_s3_as_to_a_local_folder(s3_server, tmp_path):
    tiles = _tiles(tmp_path)
    local = tmp_path / "local"
    url = s3_server.url("real")
    done = _real_cli(tiles, local)
    assert done.returncode == 0, done.stderr
    done = _real_cli(tiles, url)
    assert done.returncode == 0, done.stderr
    assert not (Path(REPO) / "s3:").exists() and not (tmp_path / "s3:").exists()
    on_store = _store_files(s3_server, url)
    assert "build.lock" not in on_store  # released
    assert _comparable(on_store) == _comparable(_local_files(local))
    assert {"train/dataset.json", "val/dataset.json", "build_summary.json"} <= set(on_store)
    again = _real_cli(tiles, url)  # a rerun keeps every finished shard on the store
    assert again.returncode == 0, again.stderr
    assert "6 shards kept from an earlier run" in again.stdout
    assert _comparable(_store_files(s3_server, url), rerun=True) == _comparable(on_store, rerun=True)
