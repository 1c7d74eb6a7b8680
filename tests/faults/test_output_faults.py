"""A read-only, forbidden or full output for every job that writes shards: one line naming the
path, exit status 2, never a traceback.

Tests run as root, whom chmod does not stop, so the file system's answers are simulated in this
process: under a chosen folder, creating or opening for writing fails as on a read-only mount
(EROFS) or a folder without write permission (EACCES), or ``write()`` fails as on a full disk
(ENOSPC, which names no file).
"""

from __future__ import annotations

import builtins
import errno
import io
import os
import sys
from pathlib import Path

import pytest

from builders.quality.__main__ import main as quality_main
from builders.real.__main__ import main as real_main
from builders.synthetic import unit as synthetic_unit
from builders.synthetic.__main__ import main as synthetic_main
from tests.builders.conftest import demo_tree  # noqa: F401 - the builders' own fixture
from tests.common.cli import FILTER, PROG, REAL, SYNTHETIC, error_line, filter_shards
from wds_tools.config import run_main, writing_under
from wds_tools.materialize import main as materialize_main


def _under(path, root: Path) -> bool:
    if not isinstance(path, (str, bytes, os.PathLike)):
        return False  # a file descriptor
    return Path(os.fsdecode(path)).resolve().is_relative_to(root.resolve())


def read_only(monkeypatch, root: Path, code: int) -> None:
    """Creating, or opening for writing, anything under ``root`` fails with ``code``, naming the path."""
    real_open, real_os_open, real_mkdir = builtins.open, os.open, os.mkdir

    def refuse(path):
        raise (PermissionError if code == errno.EACCES else OSError)(code, os.strerror(code), os.fsdecode(path))

    def fake_open(file, mode="r", *args, **kwargs):
        if any(c in mode for c in "wax+") and _under(file, root):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def fake_os_open(path, flags, *args, **kwargs):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT) and _under(path, root):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def fake_mkdir(path, *args, **kwargs):
        if _under(path, root) and not os.path.isdir(path):  # an existing folder: EEXIST, as the kernel says
            refuse(path)
        return real_mkdir(path, *args, **kwargs)

    for module, name, fake in ((builtins, "open", fake_open), (io, "open", fake_open), (os, "open", fake_os_open),
                               (os, "mkdir", fake_mkdir)):
        monkeypatch.setattr(module, name, fake)


class _FullFile:
    """A file whose ``write()`` fails as on a full disk (ENOSPC without a file name, as the kernel says)."""

    def __init__(self, f):
        self._f = f

    def write(self, data):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def disk_full(monkeypatch, root: Path) -> None:
    """Tar files (shards, sidecars) written under ``root`` hit a full disk."""
    real_open = builtins.open

    def fake_open(file, mode="r", *args, **kwargs):
        f = real_open(file, mode, *args, **kwargs)
        if "w" in mode and _under(file, root) and ".tar" in os.path.basename(os.fsdecode(file)):
            return _FullFile(f)
        return f

    monkeypatch.setattr(builtins, "open", fake_open)
    monkeypatch.setattr(io, "open", fake_open)


@pytest.fixture(autouse=True)
def _console_name(monkeypatch):
    monkeypatch.setattr(sys, "argv", [PROG])  # as a console script: prog is its name


CODES = pytest.mark.parametrize("code, reason", [(errno.EROFS, "read-only file system"),
                                                 (errno.EACCES, "permission denied")], ids=["erofs", "eacces"])


def test_run_main_names_the_path_of_a_permission_read_only_or_full_error(capsys):
    cases = [(PermissionError(errno.EACCES, "Permission denied", "/out/a.tar"), "'/out/a.tar': permission denied"),
             (OSError(errno.EROFS, "Read-only file system", "/out"), "'/out': read-only file system"),
             (OSError(errno.ENOSPC, "No space left on device", "/o/x.tmp", None, "/o/x"),  # a rename
              "'/o/x.tmp' -> '/o/x': no space left on device")]
    for error, expected in cases:
        def job(argv, error=error):
            raise error
        assert run_main(job, [], prog=PROG) == 2
        assert error_line(capsys, expected)

    def cut_short(argv):  # write() on a full disk names no file: the job says where it writes
        with writing_under("/data/out"):
            raise RuntimeError("unit failed") from OSError(errno.ENOSPC, "No space left on device")
    assert run_main(cut_short, [], prog=PROG) == 2
    error_line(capsys, "no space left on device while writing under '/data/out'")
    with pytest.raises(OSError, match="Input/output error"):  # not the user's to fix: a traceback
        run_main(lambda argv: (_ for _ in ()).throw(OSError(errno.EIO, "Input/output error")), [], prog=PROG)


@CODES
def test_real_builder_on_a_read_only_output(demo_tree, tmp_path, monkeypatch, capsys, code, reason):  # noqa: F811
    out = tmp_path / "ro" / "real"
    read_only(monkeypatch, tmp_path / "ro", code)
    assert real_main([*REAL, "--input", str(demo_tree), "--output", str(out)]) == 2
    error_line(capsys, str(out), reason)


def test_real_builder_on_a_full_disk(demo_tree, tmp_path, monkeypatch, capsys):  # noqa: F811
    out = tmp_path / "full" / "real"
    disk_full(monkeypatch, tmp_path / "full")
    assert real_main([*REAL, "--input", str(demo_tree), "--output", str(out)]) == 2
    error_line(capsys, "no space left on device", f"writing under {str(out)!r}")


@CODES
def test_filter_with_read_only_shards(tmp_path, monkeypatch, capsys, code, reason):
    shards = filter_shards(tmp_path / "ro" / "shards")  # sidecars go beside the shards
    read_only(monkeypatch, tmp_path / "ro", code)
    assert quality_main([*FILTER, "--input", str(shards), "--output", str(tmp_path / "report")]) == 2
    error_line(capsys, str(shards), reason)


def test_filter_on_a_full_disk(tmp_path, monkeypatch, capsys):
    shards = filter_shards(tmp_path / "full" / "shards")
    disk_full(monkeypatch, tmp_path / "full")
    assert quality_main([*FILTER, "--input", str(shards), "--output", str(tmp_path / "report")]) == 2
    error_line(capsys, "no space left on device while writing under", str(shards))


@CODES
def test_materialize_on_a_read_only_output(shard_dir, tmp_path_factory, monkeypatch, capsys, code, reason):
    root = tmp_path_factory.mktemp("ro")
    read_only(monkeypatch, root, code)
    out = root / "m"
    assert materialize_main(["--input", str(shard_dir), "--output", str(out), "sidecars=[]", "require_keep=[]"]) == 2
    error_line(capsys, str(out), reason)


def test_materialize_on_a_full_disk(shard_dir, tmp_path_factory, monkeypatch, capsys):
    root = tmp_path_factory.mktemp("full")
    disk_full(monkeypatch, root)
    out = root / "m"
    assert materialize_main(["--input", str(shard_dir), "--output", str(out), "sidecars=[]", "require_keep=[]"]) == 2
    error_line(capsys, f"no space left on device while writing under {str(out)!r}")


@CODES
def test_synthetic_builder_on_a_read_only_output(shard_dir, tmp_path_factory, monkeypatch, capsys, code, reason):
    root = tmp_path_factory.mktemp("ro")
    read_only(monkeypatch, root, code)
    out = root / "syn"
    assert synthetic_main([*SYNTHETIC, "--input", str(shard_dir), "--output", str(out)]) == 2
    error_line(capsys, str(out), reason)


def test_synthetic_builder_stops_at_a_full_disk_instead_of_failing_every_unit(shard_dir, tmp_path_factory,
                                                                               monkeypatch, capsys):
    out = tmp_path_factory.mktemp("full") / "syn"
    calls = []

    def full(unit, cfg, skips):  # the first write of a unit's work hits a full disk
        calls.append(unit.name)
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(synthetic_unit, "load_sources", full)
    assert synthetic_main([*SYNTHETIC, "--input", str(shard_dir), "--output", str(out)]) == 2
    error_line(capsys, f"no space left on device while writing under {str(out)!r}")
    assert len(calls) == 1  # the other units were not tried: they would fail alike
