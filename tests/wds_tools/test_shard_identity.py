"""The identity a sidecar records of its shard: content-derived, checked fast when the shard was
not written since, hashed otherwise; ETags on an object store; the ``__shard__`` member."""

from __future__ import annotations

import hashlib
import time
import uuid

import fsspec
import pytest

import wds_tools.shard_identity as si
from wds_tools.quality_record import MEMBER, read_quality_sidecar
from wds_tools.reader import iter_shard
from wds_tools.shard_identity import identity_problem, mtime_ns, shard_identity
from wds_tools.sidecar import SHARD_MEMBER, read_shard_identity, read_sidecar, shard_keys, write_sidecar
from wds_tools.tar_members import iter_members


def _counting_hashes(monkeypatch) -> list[str]:
    hashed: list[str] = []
    real = si.sha256_url
    monkeypatch.setattr(si, "sha256_url", lambda url: hashed.append(url) or real(url))
    return hashed


def test_identity_is_size_and_sha256_of_the_bytes(shard_dir):
    shard = shard_dir / "real-train-000000.tar"
    data = shard.read_bytes()
    assert shard_identity(str(shard)) == {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    assert shard_identity(f"file://{shard}") == shard_identity(str(shard))


def test_unchanged_shard_is_not_read_a_changed_one_is(shard_dir, monkeypatch):
    shard = shard_dir / "real-train-000000.tar"
    recorded = shard_identity(str(shard))
    hashed = _counting_hashes(monkeypatch)
    time.sleep(0.05)  # past the file system's timestamp granularity
    side = shard_dir / "real-train-000000.quality.tar"
    side.write_bytes(b"a sidecar written after the shard")
    later = mtime_ns(str(side))
    assert identity_problem(str(shard), recorded, unchanged_since_ns=later) is None and hashed == []
    assert identity_problem(str(shard), recorded) is None and len(hashed) == 1  # no reference time: hashed
    data = bytearray(shard.read_bytes())
    data[600] ^= 0xFF  # same size, other bytes, written after the sidecar
    shard.write_bytes(bytes(data))
    assert identity_problem(str(shard), recorded, unchanged_since_ns=later).startswith("sha256 ")
    shard.write_bytes(bytes(data[:-512]))
    assert identity_problem(str(shard), recorded) == f"size {len(data) - 512} bytes, scored at {len(data)} bytes"
    shard.unlink()
    assert identity_problem(str(shard), recorded) == "the shard is missing"


@pytest.mark.parametrize("recorded", [None, {}, {"bytes": 3}, {"sha256": "ab"}, "x"])
def test_nothing_recorded_is_a_problem(shard_dir, recorded):
    assert "no size and sha256" in identity_problem(str(shard_dir / "real-train-000000.tar"), recorded)


def test_object_store_with_and_without_etag(shard_dir, monkeypatch):
    fs = fsspec.filesystem("memory")
    url = f"memory:///ids-{uuid.uuid4().hex[:8]}/real-train-000000.tar"
    fs.put_file(str(shard_dir / "real-train-000000.tar"), url[len("memory://"):])
    try:
        plain = shard_identity(url)  # the memory store reports no ETag: hashed
        assert plain == shard_identity(str(shard_dir / "real-train-000000.tar"))
        etags = {"tag": "e1"}
        info = type(fs).info
        monkeypatch.setattr(type(fs), "info", lambda self, path, **kw: {**info(self, path, **kw),
                                                                        "ETag": f'"{etags["tag"]}"'})
        hashed = _counting_hashes(monkeypatch)
        recorded = shard_identity(url)
        assert recorded == {"bytes": plain["bytes"], "etag": "e1"}
        assert identity_problem(url, recorded) is None and hashed == []  # no download
        etags["tag"] = "e2"  # uploaded again
        assert identity_problem(url, recorded) == "ETag e2, scored at ETag e1"
        assert identity_problem(url, plain) is None and len(hashed) == 1  # a local record: hashed
    finally:
        fs.rm(url[len("memory://"):])


def test_sidecar_records_the_shard_first_and_readers_skip_it(shard_dir):
    shard = shard_dir / "real-train-000000.tar"
    keys = shard_keys(str(shard))
    identity = shard_identity(str(shard))
    write_sidecar(shard, "quality", [(k, {MEMBER: {"keep": True}}) for k in keys], shard_identity=identity)
    with open(shard_dir / "real-train-000000.quality.tar", "rb") as f:
        assert next(iter_members(f)).name == SHARD_MEMBER
    assert read_shard_identity(str(shard), "quality") == identity
    assert list(read_sidecar(str(shard), "quality")) == keys
    assert list(read_quality_sidecar(str(shard), keys)) == keys  # no skip counted for it
    assert [s["__key__"] for s in iter_shard(str(shard), sidecars=["quality"])] == keys
    write_sidecar(shard, "quality", [(k, {MEMBER: {"keep": True}}) for k in keys])
    assert read_shard_identity(str(shard), "quality") is None  # a sidecar of an older version
    assert mtime_ns(str(shard_dir / "real-train-000000.quality.tar")) is not None
    assert mtime_ns(str(shard_dir / "gone.tar")) is None and mtime_ns("memory:///x.tar") is None


def test_a_local_copy_of_a_shard_recorded_by_its_etag_is_checked_by_md5(shard_dir):
    """A set filtered on an object store, then copied to disk: S3's single-part ETag is the MD5 of
    the bytes, so the copy is recognised; other ETags, or other bytes, are problems."""
    shard = shard_dir / "real-train-000000.tar"
    data = shard.read_bytes()
    recorded = {"bytes": len(data), "etag": hashlib.md5(data).hexdigest()}
    assert identity_problem(str(shard), recorded) is None
    assert "not an MD5" in identity_problem(str(shard), {**recorded, "etag": "0123abcd-2"})  # multipart
    shard.write_bytes(data[:-1] + bytes([data[-1] ^ 1]))  # same size, other bytes
    assert identity_problem(str(shard), recorded).startswith("MD5 ")
