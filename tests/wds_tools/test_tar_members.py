import io
import random
import shutil
import subprocess
import tarfile

import pytest

from wds_tools.tar_members import TarCorruptError, iter_members
from wds_tools.writer import write_tar_members

LONG = "a/" + "very_long_directory_name_" * 6 + "/s0001.jpg"  # > 100 bytes: needs prefix, L or pax


def _tar_bytes(fmt: int, members: list[tuple[str, bytes]], *, with_dir: bool = True) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        if with_dir:
            d = tarfile.TarInfo("a")
            d.type = tarfile.DIRTYPE
            tar.addfile(d)
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("a/link.jpg")
        link.type, link.linkname = tarfile.SYMTYPE, "s0000.jpg"
        tar.addfile(link)
    return buf.getvalue()


def _by_tarfile(data: bytes) -> list[tuple[str, bytes, bool]]:
    out = []
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for m in tar:
            out.append((m.name, tar.extractfile(m).read() if m.isfile() else b"", m.isfile()))
    return out


MEMBERS = [("s0000.jpg", b"\xff\xd8" + bytes(range(256)) * 3), ("s0000.txt", b"a caption"),
           ("s0000.json", b""), (LONG, b"x" * 513), ("caf\u00e9/s0002.txt", "\u00e9t\u00e9".encode())]


@pytest.mark.parametrize("fmt", [tarfile.GNU_FORMAT, tarfile.PAX_FORMAT, tarfile.USTAR_FORMAT])
def test_members_agree_with_tarfile(fmt):
    members = MEMBERS if fmt != tarfile.USTAR_FORMAT else [m for m in MEMBERS if "caf" not in m[0]]
    data = _tar_bytes(fmt, members)
    got = [tuple(m) for m in iter_members(io.BytesIO(data))]
    assert got == _by_tarfile(data)
    assert [m[0] for m in got if m[2]] == [n for n, _ in members]


def test_pax_size_record_wins_over_header_size():
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("k.bin")
        info.size, info.pax_headers = 5, {"size": "5", "comment": "x" * 300}
        tar.addfile(info, io.BytesIO(b"12345"))
    assert list(iter_members(io.BytesIO(buf.getvalue()))) == [("k.bin", b"12345", True)]


@pytest.mark.skipif(shutil.which("tar") is None, reason="no tar command")
@pytest.mark.parametrize("fmt", ["gnu", "posix", "ustar"])
def test_members_of_gnu_tar_archives(tmp_path, fmt):
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    (src / "d" / "s0000.jpg").write_bytes(b"\xff\xd8" * 700)
    (src / "d" / "s0000.txt").write_text("two buildings")
    archive = tmp_path / "x.tar"
    subprocess.run(["tar", f"--format={fmt}", "-cf", str(archive), "-C", str(src), "d"], check=True)
    data = archive.read_bytes()
    assert [tuple(m) for m in iter_members(io.BytesIO(data))] == _by_tarfile(data)


def test_own_writer_long_names(tmp_path):
    path = tmp_path / "w-000000.tar"
    write_tar_members(path, MEMBERS)
    with open(path, "rb") as f:
        assert [(m.name, m.data) for m in iter_members(f)] == MEMBERS
    with open(path, "rb") as f:
        assert [(m.name, m.data) for m in iter_members(f, with_data=False)] == [(n, b"") for n, _ in MEMBERS]


class _Trickle(io.RawIOBase):
    """A pipe-like stream that hands out at most a few bytes per read."""

    def __init__(self, data: bytes):
        self.data, self.pos, self.rng = data, 0, random.Random(0)

    def read(self, n=-1):
        n = min(n if n >= 0 else len(self.data), self.rng.randint(1, 700))
        out = self.data[self.pos:self.pos + n]
        self.pos += len(out)
        return out


def test_short_reads_are_reassembled():
    data = _tar_bytes(tarfile.GNU_FORMAT, MEMBERS)
    assert [tuple(m) for m in iter_members(_Trickle(data))] == _by_tarfile(data)


def test_every_cut_raises_and_yields_only_whole_members():
    data = _tar_bytes(tarfile.GNU_FORMAT, MEMBERS, with_dir=False)
    whole = _by_tarfile(data)
    end = len(data.rstrip(b"\0"))  # tarfile pads the archive; cuts inside the padding are harmless
    for cut in range(0, end + 1024, 37):
        got = []
        with pytest.raises(TarCorruptError):
            for m in iter_members(io.BytesIO(data[:cut])):
                got.append(tuple(m))
        assert got == whole[:len(got)], cut


def test_bad_checksum_is_an_error():
    data = bytearray(_tar_bytes(tarfile.USTAR_FORMAT, MEMBERS[:2], with_dir=False))
    data[10] ^= 0xFF  # inside the first member's name
    with pytest.raises(TarCorruptError, match="checksum"):
        list(iter_members(io.BytesIO(bytes(data))))
    assert issubclass(TarCorruptError, tarfile.ReadError)  # callers handle both readers alike
