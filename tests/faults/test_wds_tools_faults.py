"""Hostile and corrupt inputs to wds_tools: decompression bombs, self-overwriting reshards, malformed
members, self-including URL lists, GNU long-link headers. Each is a counted skip naming key and URL,
or a clear error, never a crash or silent damage."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from pathlib import Path

import pytest
from PIL import Image

from tests.common.images import png_bomb
from tests.conftest import make_contract_samples
from wds_tools.inspect import inspect_shard
from wds_tools.materialize import main as materialize_main
from wds_tools.reader import decode_sample, iter_shard
from wds_tools.sidecar import write_sidecar
from wds_tools.skips import SkipLog
from wds_tools.tar_members import iter_members
from wds_tools.urls import expand_urls
from wds_tools.writer import shard_name, write_tar_members


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return png_bomb()


def _skip_logged(caplog, reason: str, key: str, url: str) -> bool:
    return any(reason in r.getMessage() and key in r.getMessage() and url in r.getMessage()
               for r in caplog.records)


# --- decompression bombs ---------------------------------------------------------------------------

@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_bomb_is_small_and_has_the_size_it_claims(bomb):
    assert len(bomb) < 100_000
    with Image.open(io.BytesIO(bomb)) as img:
        assert img.size == (12_000, 12_000)


def _uint8(data: bytes):
    from clip_models.preprocess import decode_uint8  # Stage 2's tensor decoder (wds_tools has no torch)

    return decode_uint8(data)


@pytest.mark.parametrize("mode", [_uint8, "pil"])
def test_bomb_member_is_a_counted_skip_before_any_decode(bomb, mode, caplog):
    sample = {"__key__": "bomb0001", "__url__": "shards/x-000000.tar", "png": bomb, "txt": b"a field"}
    skips = SkipLog()
    with caplog.at_level(logging.WARNING, logger="wds_tools"):
        assert decode_sample(sample, image=mode, skips=skips) is None
    assert skips.as_dict() == {"decompression_bomb": 1}
    assert _skip_logged(caplog, "decompression_bomb", "bomb0001", "shards/x-000000.tar")


def test_pixel_limit_is_configurable():
    from wds_tools.images import check_image_pixels

    small = make_contract_samples(1)[0]  # a 32x32 JPEG
    assert check_image_pixels(small["jpg"]) == (32, 32)
    assert decode_sample(small, image=_uint8, max_pixels=32 * 32) is not None
    skips = SkipLog()
    assert decode_sample(small, image=_uint8, max_pixels=32 * 32 - 1, skips=skips) is None
    assert skips.as_dict() == {"decompression_bomb": 1}
    with pytest.raises(Image.DecompressionBombError, match="32x32 = 1024 pixels exceeds the limit of 1000"):
        check_image_pixels(small["jpg"], max_pixels=1000)


# --- materialize -----------------------------------------------------------------------------------

def _scored(shard_dir: Path) -> Path:
    for shard in sorted(shard_dir.glob("real-train-*.tar")):
        keys = [s["__key__"] for s in iter_shard(str(shard))]
        write_sidecar(shard, "quality", [(k, {"msgpack": {"keep": True, "reasons": []}}) for k in keys])
    return shard_dir


def _tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("where", ["same", "inside", "parent"])
def test_materialize_refuses_an_output_overlapping_its_input(shard_dir, where, capsys):
    _scored(shard_dir)
    before = _tree(shard_dir)
    output = {"same": shard_dir, "inside": shard_dir / "filtered", "parent": shard_dir.parent}[where]
    relation = {"same": "is", "inside": "lies inside", "parent": "contains"}[where]
    assert materialize_main(["--input", str(shard_dir), "--output", str(output)]) == 2
    message = capsys.readouterr().err
    assert f"{relation} the input folder" in message and str(shard_dir.resolve()) in message
    assert _tree(shard_dir) == before  # not a byte changed, no index rewritten


def test_materialize_refuses_an_output_that_is_a_file(shard_dir, tmp_path_factory, capsys):
    _scored(shard_dir)
    output = tmp_path_factory.mktemp("out") / "taken"
    output.write_text("not a folder")
    assert materialize_main(["--input", str(shard_dir), "--output", str(output)]) == 2
    assert "is a file, not a folder" in capsys.readouterr().err
    assert output.read_text() == "not a folder"


def _shard_with_bad_json(root: Path) -> Path:
    """A shard of 4 samples: s0001's json member is cut, s0002's is a list (the writer refuses
    both, so the tar is written member by member, as a foreign tool would)."""
    samples = make_contract_samples(4)
    samples[1]["json"] = b'{"source": "real", "captions": ["cut'
    samples[2]["json"] = b'["real", "a list, not an object"]'
    path = root / shard_name("real-train", 0)
    write_tar_members(path, [(f"{s['__key__']}.{ext}", data) for s in samples
                             for ext, data in s.items() if not ext.startswith("__")])
    return path


def test_materialize_counts_malformed_json_members_and_finishes(tmp_path, tmp_path_factory, caplog):
    src = tmp_path / "in"
    shard = _shard_with_bad_json(src)
    _scored(src)
    out = tmp_path_factory.mktemp("out")
    with caplog.at_level(logging.WARNING, logger="wds_tools"):
        assert materialize_main(["--input", str(src), "--output", str(out)]) == 0  # not a crash
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["kept"] == 2
    assert manifest["skipped"] == {"corrupt_json": 1, "json_not_object_list": 1}
    assert _skip_logged(caplog, "corrupt_json", "s0001", str(shard))
    assert _skip_logged(caplog, "json_not_object_list", "s0002", str(shard))
    assert [s["__key__"] for u in expand_urls(str(out)) for s in iter_shard(u)] == ["s0000", "s0003"]


def test_materialize_counts_an_unreadable_sidecar_record(shard_dir, tmp_path_factory):
    shards = sorted(shard_dir.glob("real-train-*.tar"))
    _scored(shard_dir)
    keys = [s["__key__"] for s in iter_shard(str(shards[0]))]
    write_sidecar(shards[0], "quality", [(k, {"msgpack": {"keep": True}}) for k in keys])
    side = shards[0].with_name(shards[0].stem + ".quality.tar")
    members = [(m.name, m.data) for m in iter_members(open(side, "rb"))]
    members[0] = (members[0][0], b"\xc1 not msgpack")  # 0xc1 is never valid msgpack
    write_tar_members(side, members)
    out = tmp_path_factory.mktemp("out")
    assert materialize_main(["--input", str(shard_dir), "--output", str(out)]) == 0
    manifest = json.loads((out / "dataset.json").read_text())
    assert manifest["skipped"] == {"corrupt_sidecar_record": 1} and manifest["kept"] == 9


# --- inspect ---------------------------------------------------------------------------------------

def test_inspect_counts_malformed_json_and_msgpack_members(tmp_path, caplog):
    shard = _shard_with_bad_json(tmp_path)
    keys = [s["__key__"] for s in iter_shard(str(shard))]
    write_sidecar(shard, "quality", [(k, {"msgpack": {"keep": True, "composite": 0.5}}) for k in keys])
    side = shard.with_name(shard.stem + ".quality.tar")
    members = [(m.name, m.data) for m in iter_members(open(side, "rb"))]
    members[3] = (members[3][0], b"\x93\x01")  # a cut msgpack array
    write_tar_members(side, members)
    with caplog.at_level(logging.WARNING, logger="wds_tools"):
        report = inspect_shard(str(shard))
    assert report["samples"] == 4
    assert report["skipped"] == {"corrupt_json": 1, "json_not_object_list": 1, "corrupt_quality.msgpack": 1}
    assert report["sources"] == {"real": 2, "None": 2}
    assert report["scores"]["quality.composite"]["n"] == 3
    assert _skip_logged(caplog, "json_not_object_list", "s0002", str(shard))


# --- URL lists -------------------------------------------------------------------------------------

def test_url_list_that_includes_itself_is_a_clear_error(shard_dir):
    lst = shard_dir / "loop.txt"
    lst.write_text(f"{shard_name('real-train', 0)}\nloop.txt\n")
    with pytest.raises(ValueError, match=r"URL list .*loop\.txt' includes itself"):
        expand_urls(str(lst))


def test_url_lists_that_include_each_other_name_the_chain(shard_dir):
    (shard_dir / "a.txt").write_text("sub/../b.txt\n")
    (shard_dir / "sub").mkdir()
    (shard_dir / "b.txt").write_text(f"{shard_name('real-train', 1)}\na.txt\n")
    with pytest.raises(ValueError) as e:
        expand_urls(str(shard_dir / "a.txt"))
    assert "includes itself" in str(e.value) and "a.txt" in str(e.value) and "b.txt" in str(e.value)
    # a list named twice side by side is no loop
    (shard_dir / "twice.txt").write_text("c.txt\nc.txt\n")
    (shard_dir / "c.txt").write_text(shard_name("real-train", 2) + "\n")
    assert len(expand_urls(str(shard_dir / "twice.txt"))) == 2


# --- tar headers -----------------------------------------------------------------------------------

def test_gnu_long_link_header_is_not_a_member():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for name in ("s0000.txt", "s0001.txt"):
            info = tarfile.TarInfo(name)
            info.size = 2
            tar.addfile(info, io.BytesIO(b"hi"))
            if name == "s0000.txt":
                link = tarfile.TarInfo("s0000.jpg")
                link.type, link.linkname = tarfile.SYMTYPE, "target/" + "x" * 150  # > 100: a 'K' header
                tar.addfile(link)
    raw = buf.getvalue()
    assert b"././@LongLink" in raw
    members = list(iter_members(io.BytesIO(raw)))
    assert [(m.name, m.is_file) for m in members] == [
        ("s0000.txt", True), ("s0000.jpg", False), ("s0001.txt", True)]


def test_quality_filter_refuses_a_bomb_before_decoding(bomb, caplog):
    from builders.quality.loader import prepare_samples

    sample = {"__key__": "bomb0001", "__url__": "shards/x-000000.tar", "__index__": 0, "png": bomb,
              "txt": b"a field", "json": json.dumps({"source": "synthetic"}).encode()}
    with caplog.at_level(logging.WARNING):
        (out,) = prepare_samples([sample], clip_size=32, iq_size=32, compute_boxes=False, sanity=False)
    assert out["reasons"] == ["undecodable_image"] and out["clip_image"] is None  # a hard fail
    assert any("bomb0001" in r.getMessage() and "shards/x-000000.tar" in r.getMessage()
               and "exceeds the limit" in r.getMessage() for r in caplog.records)
