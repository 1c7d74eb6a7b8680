"""A write that fails on a full disk leaves no temporary file, and a run starts by removing those
a killed run left: shards, sidecars, JSON files and a whole materialize."""

from __future__ import annotations

import builtins
import errno
import io
import os
import subprocess
import sys
from pathlib import Path

import pytest

import wds_tools.atomic as atomic
import wds_tools.writer as writer
from tests.common.quality import score_all
from tests.conftest import make_contract_samples
from wds_tools.atomic import write_json
from wds_tools.lock import LockHeld, OutputLock
from wds_tools.materialize import MaterializeConfig, materialize
from wds_tools.writer import ShardWriter, write_tar_members


class _FullDisk(io.FileIO):
    """A file on a disk with ``room`` bytes left: a write past it raises ENOSPC. Behind a buffer,
    as with a real full disk, the error comes when the buffer is flushed: often only at close."""

    room = 0

    def write(self, b) -> int:
        if len(b) > self.room:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), self.name)
        self.room -= len(b)
        return super().write(b)


LOCK_NAME = "materialize.lock"


def _full_disk_open(room: int):
    def fake_open(path, mode="r", *args, **kwargs):
        if "w" not in mode:
            return builtins.open(path, mode, *args, **kwargs)
        raw = _FullDisk(path, "w")
        raw.room = room
        buffered = io.BufferedWriter(raw)
        return buffered if "b" in mode else io.TextIOWrapper(buffered, encoding=kwargs.get("encoding") or "utf-8")
    return fake_open


def _left(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# room 0: everything fits the write buffer and the disk fills when the tar is closed; 5000: the
# disk fills while samples are still being written
@pytest.mark.parametrize("room", [0, 5000])
def test_shard_write_failing_on_a_full_disk_leaves_no_temp(tmp_path, monkeypatch, room):
    monkeypatch.setattr(writer, "open", _full_disk_open(room), raising=False)
    with pytest.raises(OSError) as e:
        with ShardWriter(tmp_path / "real-train-000000.tar") as w:
            for s in make_contract_samples(6 if room else 1):
                w.write(s)
    assert e.value.errno == errno.ENOSPC
    assert _left(tmp_path) == []


def test_sidecar_and_json_writes_failing_on_a_full_disk_leave_no_temp(tmp_path, monkeypatch):
    monkeypatch.setattr(writer, "open", _full_disk_open(0), raising=False)
    monkeypatch.setattr(atomic, "open", _full_disk_open(0), raising=False)
    with pytest.raises(OSError, match="No space left"):
        write_tar_members(tmp_path / "x-000000.quality.tar", [("k.quality.msgpack", b"\x80")])
    with pytest.raises(OSError, match="No space left"):
        write_json(tmp_path / "dataset.json", {"shards": list(range(100))})
    assert _left(tmp_path) == []


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_materialize_on_a_full_disk_leaves_no_temp_and_the_next_run_cleans_a_killed_ones(
        shard_dir, tmp_path_factory, monkeypatch):
    score_all(shard_dir)
    out = tmp_path_factory.mktemp("reshard") / "filtered"
    cfg = MaterializeConfig(input=[str(shard_dir)], output=str(out), maxcount=3)
    with monkeypatch.context() as m:
        m.setattr(writer, "open", _full_disk_open(0), raising=False)
        with pytest.raises(OSError, match="No space left"):
            materialize(cfg)
    assert not [n for n in _left(out) if ".tmp-" in n] and not (out / LOCK_NAME).exists()
    # what a kill -9 leaves: a shard and an index cut mid-write under temporary names
    dead = _dead_pid()
    for name in (f"filtered-000001.tar.tmp-{dead}-0a1b2c3d", f"dataset.json.tmp-{dead}-0a1b2c3d"):
        (out / name).write_bytes(b"partial")
    manifest = materialize(cfg)
    assert manifest["kept"] == 6
    assert not [n for n in _left(out) if ".tmp-" in n]


def test_materialize_refuses_a_second_run_on_its_output(shard_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reshard") / "filtered"
    score_all(shard_dir)
    with OutputLock(out / LOCK_NAME, tool="wds_tools.materialize"):
        with pytest.raises(LockHeld, match="in use by wds_tools.materialize"):
            materialize(MaterializeConfig(input=[str(shard_dir)], output=str(out)))
