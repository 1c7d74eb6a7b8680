import io
import pickle
import tarfile

import pytest

from tests.conftest import make_contract_samples
from wds_tools.reader import SkipLog, decode_sample, decoded, iter_shard, samples_from_shards
from wds_tools.sidecar import shard_keys
from wds_tools.writer import write_tar_members


class _Boom:
    def __reduce__(self):
        return (exec, ("open('PWNED','w').write('x')",))


def _members(samples):
    for s in samples:
        for ext, v in s.items():
            if not ext.startswith("__"):
                yield f"{s['__key__']}.{ext}", v


def test_pickle_members_are_skipped_and_counted(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    samples = make_contract_samples(2)
    samples[0]["pyd"] = pickle.dumps(_Boom())
    samples[1]["pth"] = pickle.dumps(_Boom())
    write_tar_members(tmp_path / "evil-000000.tar", _members(samples))
    skips = SkipLog()
    got = [decode_sample(s, skips=skips) for s in iter_shard(str(tmp_path / "evil-000000.tar"), skips=skips)]
    assert [sorted(k for k in g if not k.startswith("__")) for g in got] == [["jpg", "json", "txt"]] * 2
    assert skips.as_dict() == {"unsafe_member_pyd": 1, "unsafe_member_pth": 1}
    assert not (tmp_path / "PWNED").exists()


def test_corrupt_image_is_a_counted_skip(tmp_path):
    samples = make_contract_samples(3)
    samples[1]["jpg"] = b"\xff\xd8not a jpeg"
    write_tar_members(tmp_path / "c-000000.tar", _members(samples))
    skips = SkipLog()
    src = iter_shard(str(tmp_path / "c-000000.tar"))
    keys = [s["__key__"] for s in decoded(skips=skips)(src)]
    assert keys == ["s0000", "s0002"]
    assert skips.as_dict() == {"corrupt_jpg": 1}


def _member_ends(path):
    with tarfile.open(path) as tar:
        return [m.offset_data + -(-m.size // 512) * 512 for m in tar.getmembers()]


@pytest.mark.parametrize("where", ["mid_member", "member_boundary", "sample_boundary", "end_marker"])
def test_truncated_tar_is_counted_and_never_yields_a_partial_sample(tmp_path, where):
    samples = make_contract_samples(6)
    path = tmp_path / "t-000000.tar"
    write_tar_members(path, _members(samples))
    ends, data = _member_ends(path), path.read_bytes()
    cut = {"mid_member": ends[7] - 300, "member_boundary": ends[7], "sample_boundary": ends[8],
           "end_marker": ends[-1] + 512}[where]
    path.write_bytes(data[:cut])
    skips = SkipLog()
    got = list(iter_shard(str(path), skips=skips))
    assert skips.counts["corrupt_tar"] == 1
    assert all(sorted(k for k in g if not k.startswith("__")) == ["jpg", "json", "txt"] for g in got)
    assert len(got) == {"mid_member": 2, "member_boundary": 2, "sample_boundary": 2, "end_marker": 5}[where]
    assert shard_keys(str(path)) == [g["__key__"] for g in got]  # header-only listing agrees


def test_complete_tar_from_another_writer_is_not_flagged(tmp_path):
    """Python's own tarfile (seekable, no stream padding) still ends with the two zero blocks."""
    path = tmp_path / "plain-000000.tar"
    with tarfile.open(path, "w") as tar:
        for name, value in _members(make_contract_samples(2)):
            info = tarfile.TarInfo(name)
            info.size = len(value)
            tar.addfile(info, io.BytesIO(value))
    skips = SkipLog()
    assert len(list(iter_shard(str(path), skips=skips))) == 2 and skips.total() == 0


def test_decompression_bomb_limit_stays_on(tmp_path):
    from PIL import Image

    assert Image.MAX_IMAGE_PIXELS is not None
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    big = io.BytesIO()
    Image.new("1", (20000, 20000)).save(big, format="PNG")  # 400 MP > 2x the default limit
    skips = SkipLog()
    out = decode_sample({"__key__": "bomb", "png": big.getvalue()}, skips=skips)
    assert out is None and skips.as_dict() == {"decompression_bomb": 1}


def test_uint8_decode_and_pipeline_stage(shard_dir):
    from clip_models.preprocess import decode_uint8

    urls = [{"url": str(p)} for p in sorted(shard_dir.glob("real-train-*.tar"))]
    out = list(decoded(image=decode_uint8)(samples_from_shards()(urls)))
    assert len(out) == 10
    img = out[0]["jpg"]
    assert tuple(img.shape) == (3, 32, 32) and str(img.dtype) == "torch.uint8"


def test_bad_decode_mode():
    with pytest.raises(ValueError, match="'float'"):
        from wds_tools.reader import _decode_image

        _decode_image(b"", "float")


def test_stages_are_picklable_and_work_on_plain_lists():
    stage = pickle.loads(pickle.dumps(decoded(image=None)))
    out = list(stage([{"__key__": "a", "txt": b"hi", "json": b"{}"}]))
    assert out == [{"__key__": "a", "txt": "hi", "json": {}}]
