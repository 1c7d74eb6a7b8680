import hashlib

import pytest

from wds_tools.reader import SidecarMismatchError, decode_sample, iter_shard
from wds_tools.sidecar import read_sidecar, shard_keys, write_sidecar


def _quality(keys):
    return [(k, {"msgpack": {"keep": i % 2 == 0, "composite": i / 10}}) for i, k in enumerate(keys)]


def test_join_by_key_and_bytes_untouched(shard_dir):
    shard = shard_dir / "real-train-000000.tar"
    before = hashlib.sha256(shard.read_bytes()).hexdigest()
    write_sidecar(shard, "quality", _quality(shard_keys(str(shard))))
    assert hashlib.sha256(shard.read_bytes()).hexdigest() == before
    got = [decode_sample(s, image=None) for s in iter_shard(str(shard), sidecars=["quality"])]
    assert [g["quality.msgpack"]["keep"] for g in got] == [True, False, True, False]
    assert read_sidecar(str(shard), "quality")["s0001"]["quality.msgpack"]["composite"] == 0.1


def test_writer_refuses_wrong_keys(shard_dir):
    shard = shard_dir / "real-train-000000.tar"
    keys = shard_keys(str(shard))
    with pytest.raises(ValueError, match="do not match"):
        write_sidecar(shard, "quality", _quality(list(reversed(keys))))
    assert not (shard_dir / "real-train-000000.quality.tar").exists()


def test_mismatched_sidecar_is_a_clear_error(shard_dir):
    a, b = shard_dir / "real-train-000000.tar", shard_dir / "real-train-000001.tar"
    # A sidecar made for another shard, put beside the wrong one.
    write_sidecar(b, "quality", _quality(shard_keys(str(b))))
    (shard_dir / "real-train-000001.quality.tar").rename(shard_dir / "real-train-000000.quality.tar")
    with pytest.raises(SidecarMismatchError, match="expected key 's0000', found 's0004'"):
        list(iter_shard(str(a), sidecars=["quality"]))


def test_short_and_long_sidecars(shard_dir):
    shard = shard_dir / "real-train-000000.tar"
    keys = shard_keys(str(shard))
    write_sidecar(shard, "quality", _quality(keys[:3]), check_against_shard=False)
    with pytest.raises(SidecarMismatchError, match="found None"):
        list(iter_shard(str(shard), sidecars=["quality"]))
    write_sidecar(shard, "quality", _quality(keys + ["zz"]), check_against_shard=False)
    with pytest.raises(SidecarMismatchError, match="'zz'"):
        list(iter_shard(str(shard), sidecars=["quality"]))


def test_missing_sidecar_names_it(shard_dir):
    with pytest.raises(FileNotFoundError, match="real-train-000002.quality.tar"):
        list(iter_shard(str(shard_dir / "real-train-000002.tar"), sidecars=["quality"]))


def test_both_member_spellings_and_header_only_keys(shard_dir):
    shard = shard_dir / "real-train-000000.tar"
    keys = shard_keys(str(shard))
    assert keys == ["s0000", "s0001", "s0002", "s0003"]
    assert keys == [s["__key__"] for s in iter_shard(f"file://{shard}")]
    write_sidecar(shard, "quality", [(k, {"quality.msgpack": {"keep": True}}) for k in keys])
    joined = next(iter_shard(str(shard), sidecars=["quality"]))
    assert sorted(k for k in joined if not k.startswith("__")) == ["jpg", "json", "quality.msgpack", "txt"]


def test_known_keys_replace_the_shard_listing(shard_dir, monkeypatch):
    import wds_tools.sidecar as sc

    shard = sorted(shard_dir.glob("*[0-9].tar"))[0]
    keys = shard_keys(str(shard))
    monkeypatch.setattr(sc, "shard_keys", lambda url: pytest.fail("the shard was read again"))
    write_sidecar(shard, "quality", _quality(keys), known_keys=keys)
    assert list(read_sidecar(str(shard), "quality")) == keys
    with pytest.raises(ValueError, match="do not match shard"):
        write_sidecar(shard, "quality", _quality(keys[:-1]), known_keys=keys)
