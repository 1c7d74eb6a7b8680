import hashlib
import json
import os
import signal
import subprocess
import sys
import tarfile
import textwrap

import pytest

from tests.conftest import make_contract_samples
from wds_tools.manifest import read_index, read_stats, write_index
from wds_tools.reader import decode_sample, iter_shard
from wds_tools.writer import ShardWriter, is_shard_complete, shard_name, write_shard


def test_round_trip_of_the_contract(tmp_path):
    samples = make_contract_samples(5, source="synthetic")
    path = tmp_path / shard_name("syn", 0)
    stats = write_shard(path, samples)
    assert stats.samples == 5 and stats.by_source == {"synthetic": 5}
    assert stats.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()
    assert stats.bytes == path.stat().st_size
    got = [decode_sample(s) for s in iter_shard(str(path))]
    assert [g["__key__"] for g in got] == [s["__key__"] for s in samples]
    for g, s in zip(got, samples):
        assert g["txt"] == s["txt"].decode()
        assert g["json"] == json.loads(s["json"])
        assert g["jpg"].size == (32, 32) and g["jpg"].mode == "RGB"
    assert read_stats(path).sha256 == stats.sha256


def test_rewrite_is_byte_identical(tmp_path):
    samples = make_contract_samples(3)
    a, b = write_shard(tmp_path / "a-000000.tar", samples), write_shard(tmp_path / "b-000000.tar", samples)
    assert a.sha256 == b.sha256


def test_index_sizes_and_manifest(shard_dir):
    sizes = json.loads((shard_dir / "sizes.json").read_text())
    assert sizes == {"real-train-000000.tar": 4, "real-train-000001.tar": 4, "real-train-000002.tar": 2}
    manifest = read_index(shard_dir)
    assert manifest["total_samples"] == 10 and manifest["num_shards"] == 3
    assert manifest["stats"]["by_class"] == {"a": 5, "b": 5}
    assert manifest["stats"]["by_caption_source"] == {"original": 10}


def test_failed_writer_leaves_nothing(tmp_path):
    path = tmp_path / "x-000000.tar"
    with pytest.raises(ValueError, match="duplicate key"):
        with ShardWriter(path) as w:
            s = make_contract_samples(1)[0]
            w.write(s)
            w.write(s)
    assert list(tmp_path.iterdir()) == []


def test_killed_writer_leaves_no_final_tar(tmp_path):
    """kill -9 mid-shard: no final tar, no stats; index ignores the leftover temp file."""
    script = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(os.getcwd())!r})
        from tests.conftest import make_contract_samples
        from wds_tools.writer import ShardWriter
        with ShardWriter({str(tmp_path / 'k-000000.tar')!r}) as w:
            for i, s in enumerate(make_contract_samples(50)):
                w.write(s)
                if i == 3:
                    print("WRITING", flush=True)
                    time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "WRITING"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "k-000000.tar").exists()
    assert not is_shard_complete(tmp_path / "k-000000.tar")
    leftovers = list(tmp_path.iterdir())
    assert leftovers and all(".tmp-" in p.name for p in leftovers)
    assert write_index(tmp_path, name="k")["num_shards"] == 0


def test_tar_is_plain_and_deterministic(tmp_path):
    path = tmp_path / "p-000000.tar"
    write_shard(path, make_contract_samples(2))
    with tarfile.open(path) as tar:
        names = tar.getnames()
        assert all(m.mtime == 0 for m in tar.getmembers())
    assert names == ["s0000.jpg", "s0000.txt", "s0000.json", "s0001.jpg", "s0001.txt", "s0001.json"]


def test_bad_prefix():
    with pytest.raises(ValueError, match="'a.b'"):
        shard_name("a.b", 0)


@pytest.mark.parametrize("name, size", [("k.jpg", 0), ("abc_0001.quality.msgpack", 12345), ("x" * 99, 7),
                                        ("y" * 150 + ".txt", 3)])
def test_fast_header_matches_tarfile(name, size):
    from wds_tools.writer import _tarinfo, member_header

    fmt = tarfile.USTAR_FORMAT if len(name) < 100 else tarfile.GNU_FORMAT
    assert member_header(name, size) == _tarinfo(name, size).tobuf(fmt, "utf-8", "surrogateescape")


def test_long_keys_round_trip(tmp_path):
    from wds_tools.reader import iter_shard
    from wds_tools.sample import make_sample

    key = "k" * 180
    path = tmp_path / "long-000000.tar"
    write_shard(path, [make_sample(key=key, image=b"\xff\xd8x", caption="c", meta={"source": "real"})])
    with tarfile.open(path) as tar:
        assert tar.getnames() == [f"{key}.jpg", f"{key}.txt", f"{key}.json"]
    assert [s["__key__"] for s in iter_shard(str(path))] == [key]


def test_a_shard_written_over_another_drops_its_sidecars(tmp_path):
    from wds_tools.writer import remove_sidecars

    path = tmp_path / shard_name("real-train", 0)
    write_shard(path, make_contract_samples(2))
    others = ["real-train-000001.quality.tar", "real-train-000000.tar.tmp-1-0a1b2c3d", "real-train-000000.stats.json"]
    for name in ["real-train-000000.quality.tar", "real-train-000000.clip.tar", *others[:2]]:
        (tmp_path / name).write_bytes(b"x")
    write_shard(path, make_contract_samples(3))  # rebuilt: same name, other bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([path.name, *others])
    assert remove_sidecars(tmp_path / "missing" / "x-000000.tar") == []
