"""The quality record contract: typed record, keep(), strict sidecar reads, selection.json."""

from __future__ import annotations

import json
import uuid

import msgpack
import pytest

from wds_tools.quality_record import (
    MEMBER,
    PENDING,
    SIDECAR,
    CaptionScore,
    QualityRecord,
    QualityRecordError,
    decode_record,
    encode_record,
    find_selection,
    keep,
    kept_caption_indices,
    read_quality_sidecar,
    read_selection,
    sample_captions,
    sha256_url,
    write_selection,
)
from wds_tools.sample import make_sample
from wds_tools.sidecar import write_sidecar
from wds_tools.urls import sidecar_url
from wds_tools.writer import write_shard


def _record(**kw) -> QualityRecord:
    base = dict(scores={"clip": 0.3}, composite=0.5, keep=True, reasons=[], source="real", cls="beach",
                captions=[CaptionScore(source="original", clip=0.3, keep=True),
                          CaptionScore(source="vlm", clip=0.01, keep=False)])
    return QualityRecord(**{**base, **kw})


def test_round_trip_and_keep():
    rec = _record()
    back = decode_record(encode_record(rec))
    assert back == rec and keep(back)
    assert not keep(_record(keep=False, reasons=["below_global_threshold"]))
    # a pending record is never selected, whatever its keep flag says
    assert not keep(_record(keep=True, reasons=[PENDING]))
    # records written before per-caption scores: every caption may be drawn
    old = decode_record(msgpack.packb({"scores": {}, "composite": 0.2, "keep": True, "reasons": []}))
    assert old.captions == [] and kept_caption_indices(old, 3) == [0, 1, 2]
    assert kept_caption_indices(rec, 2) == [0] and kept_caption_indices(rec, 3) is None


@pytest.mark.parametrize("data", [b"\xc1 not msgpack", msgpack.packb([1, 2]), msgpack.packb({"keep": "yes"}),
                                  msgpack.packb({"keep": True, "captions": [1]})])
def test_corrupt_members_raise(data):
    with pytest.raises(QualityRecordError):
        decode_record(data)


def test_sample_captions_follow_the_meta_with_sources():
    meta = {"captions": ["a", "", "c"], "caption_sources": ["original", "vlm", "m2b_b2c"]}
    assert sample_captions(meta, "a") == [("a", "original"), ("c", "m2b_b2c")]
    assert sample_captions({}, "only txt") == [("only txt", "primary")]
    assert sample_captions({"captions": ["x"]}, None) == [("x", "unknown")]


def _shard(folder, n=5):
    folder.mkdir(exist_ok=True)
    shard = folder / "real-000000.tar"
    write_shard(shard, [make_sample(key=f"k{i}", image=b"\xff\xd8", image_ext="jpg", caption=f"c{i}",
                                    meta={"source": "real"}) for i in range(n)])
    write_sidecar(shard, SIDECAR, [(f"k{i}", {MEMBER: _record().to_dict()}) for i in range(n)])
    return shard, [f"k{i}" for i in range(n)]


def test_strict_sidecar_read_refuses_cut_and_mismatched(tmp_path):
    shard, keys = _shard(tmp_path)
    assert list(read_quality_sidecar(str(shard), keys)) == keys
    with pytest.raises(QualityRecordError, match="keys differ"):
        read_quality_sidecar(str(shard), keys + ["k9"])
    side = tmp_path / "real-000000.quality.tar"
    data = side.read_bytes()
    side.write_bytes(data[: len(data) // 2])
    with pytest.raises(QualityRecordError, match="cut or corrupt"):
        read_quality_sidecar(str(shard), keys)
    side.unlink()
    with pytest.raises(QualityRecordError, match="no quality sidecar"):
        read_quality_sidecar(str(shard), keys)


def test_selection_file_lists_and_checks_sidecars(tmp_path):
    shard, _ = _shard(tmp_path / "shards")
    other = tmp_path / "shards" / "real-000001.tar"
    write_shard(other, [make_sample(key="z0", image=b"\xff\xd8", image_ext="jpg", caption="z",
                                    meta={"source": "real"})])
    side = sidecar_url(str(shard), SIDECAR)
    entry = {"shard": str(shard), "sidecar": side, "sha256": sha256_url(side), "samples": 5, "kept": 5,
             "kept_by_class": {"beach": 5}}
    # written in a report folder elsewhere: paths are stored relative and resolve back
    report = tmp_path / "report"
    path = write_selection({"format": 1, "sidecars": [entry]}, str(report))
    assert not json.loads(open(path).read())["sidecars"][0]["shard"].startswith("/")
    sel = read_selection([path])
    assert sel.problems([str(shard)]) == []
    assert sel.kept_by_class([str(shard)]) == {"beach": 5} and sel.kept([str(shard), str(other)]) == 5
    problems = sel.problems([str(shard), str(other)])
    assert len(problems) == 1 and "no quality sidecar" in problems[0]
    write_sidecar(other, SIDECAR, [("z0", {MEMBER: _record().to_dict()})])
    assert "not in" in sel.problems([str(other)])[0]
    write_sidecar(shard, SIDECAR, [(f"k{i}", {MEMBER: _record(keep=False).to_dict()}) for i in range(5)])
    assert "changed since the selection" in sel.problems([str(shard)])[0]
    assert find_selection([str(shard)]) == []
    write_selection({"format": 1, "sidecars": [entry]}, str(shard.parent))
    assert find_selection([str(shard), str(other)]) == [str(shard.parent / "selection.json")]


def test_a_selection_beside_store_shards_lists_them_relative_and_survives_a_copy_to_disk(tmp_path):
    """The filter writes selection.json beside ``s3://`` shards; copied to disk with them, it must
    still cover the copies: entries under its folder are written relative to it."""
    import fsspec

    store = f"memory://sel-{uuid.uuid4().hex[:8]}"
    entry = {"shard": f"{store}/real-000000.tar", "sidecar": f"{store}/real-000000.quality.tar",
             "sha256": "0" * 64, "kept": 2, "kept_by_class": {"beach": 2}}
    elsewhere = {**entry, "shard": "memory://other/real-000009.tar", "sidecar": "memory://other/x.quality.tar"}
    url = write_selection({"format": 1, "sidecars": [entry, elsewhere]}, store)
    fs = fsspec.filesystem("memory")
    try:
        doc = json.loads(fs.cat_file(url[len("memory://"):]))
        assert [e["shard"] for e in doc["sidecars"]] == ["real-000000.tar", "memory://other/real-000009.tar"]
        assert read_selection([url]).kept([entry["shard"]]) == 2  # resolved against the store folder
        copy = tmp_path / "copy"
        copy.mkdir()
        (copy / "selection.json").write_bytes(fs.cat_file(url[len("memory://"):]))
        assert read_selection([str(copy / "selection.json")]).kept_by_class([str(copy / "real-000000.tar")]) == {
            "beach": 2}
    finally:
        fs.rm(store[len("memory://"):], recursive=True)
