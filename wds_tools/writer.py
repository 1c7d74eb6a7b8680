"""Atomic, deterministic shard writing.

Each shard is written to a temporary name and renamed when complete, so a killed writer never
leaves a truncated tar under a final name; its stats file is written after the rename, so "final tar
plus stats" means finished (builders rely on this to resume). A write that fails (a full disk
raising when the tar is closed, say) removes its temporary file. Tar headers carry fixed metadata
(mtime 0, no owner), so a rerun with the same samples writes byte-identical shards.

A shard written over an existing one deletes that one's sidecars ``X.<name>.tar`` before the
rename: they were computed from other bytes (a rebuild keeps the keys, not the pixels). Callers
that delete a shard before rebuilding it call :func:`remove_sidecars` themselves.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import logging
import os
import tarfile
from collections.abc import Iterable
from pathlib import Path

from wds_tools.atomic import temp_path_for, write_json
from wds_tools.manifest import ShardStats, stats_path
from wds_tools.sample import check_key

log = logging.getLogger("wds_tools")


def shard_name(prefix: str, index: int) -> str:
    """Deterministic shard file name: ``{prefix}-{index:06d}.tar``."""
    if "." in prefix or "/" in prefix:
        raise ValueError(f"shard prefix {prefix!r} must not contain '.' or '/'")
    if index < 0:
        raise ValueError(f"shard index must be >= 0, got {index}")
    return f"{prefix}-{index:06d}.tar"


def is_shard_complete(path: str | Path) -> bool:
    """True when the final tar and its stats file both exist."""
    return Path(path).exists() and stats_path(path).exists()


def shard_problem(path: str | Path, *, verify: bool = False) -> str | None:
    """Why a finished-looking shard does not match its stats file, or None when it does.

    Compares the size (one stat call); with ``verify`` also the sha256 (reads the whole shard).
    """
    path = Path(path)
    try:
        stats = json.loads(stats_path(path).read_text())
        expected, digest = int(stats["bytes"]), str(stats["sha256"])
    except (OSError, ValueError, KeyError, TypeError) as e:
        return f"unreadable stats file {stats_path(path).name} ({type(e).__name__}: {e})"
    size = path.stat().st_size
    if size != expected:
        return f"size {size} bytes, its stats file records {expected}"
    if verify:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != digest:
            return f"sha256 {h.hexdigest()[:12]}..., its stats file records {digest[:12]}..."
    return None


def remove_sidecars(shard: str | Path) -> list[Path]:
    """Delete the sidecars ``X.<name>.tar`` (``<name>`` a plain word) beside shard ``X.tar``;
    returns what was removed. One directory listing."""
    shard = Path(shard)
    stem = shard.name[: -len(".tar")] + "."
    removed = []
    try:
        with os.scandir(shard.parent) as it:
            names = [e.name for e in it if e.name.startswith(stem) and e.name.endswith(".tar")]
    except FileNotFoundError:
        return removed
    for n in names:
        name = n[len(stem): -len(".tar")]
        if name and "." not in name:
            (shard.parent / n).unlink(missing_ok=True)
            removed.append(shard.parent / n)
    if removed:
        log.info("removed %s: computed from the shard %s replaces", ", ".join(p.name for p in removed), shard.name)
    return removed


def _discard(f, tmp: Path) -> None:
    """Close ``f`` (a full disk may fail that too) and delete the temporary file ``tmp``."""
    with contextlib.suppress(OSError):
        f.close()
    tmp.unlink(missing_ok=True)


class _HashingFile(io.RawIOBase):
    """Write-through file wrapper that hashes and counts what passes."""

    def __init__(self, f):
        self._f, self.sha, self.nbytes = f, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, b) -> int:
        self.sha.update(b)
        self.nbytes += len(b)
        return self._f.write(b)


def _tarinfo(name: str, size: int) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = size, 0, 0o444
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    return info


# tarfile builds each header in Python (~90 us); shards hold millions of small members, so
# ordinary names get a ustar header filled into a fixed template instead. The bytes equal
# tarfile's own USTAR header for the same member (tested).
_USTAR_TEMPLATE = bytes(_tarinfo("x", 0).tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))
_MAX_USTAR_SIZE = 8**11 - 1


def member_header(name: str, size: int) -> bytes:
    """The 512-byte tar header of a regular file ``name`` of ``size`` bytes (fixed metadata)."""
    raw = name.encode("utf-8")
    if len(raw) >= 100 or size > _MAX_USTAR_SIZE:
        return _tarinfo(name, size).tobuf(tarfile.GNU_FORMAT, "utf-8", "surrogateescape")
    h = bytearray(_USTAR_TEMPLATE)
    h[0:100] = raw.ljust(100, b"\0")
    h[124:136] = b"%011o\0" % size
    h[148:156] = b"        "
    h[148:155] = b"%06o\0" % sum(h)
    return bytes(h)


class _TarStream:
    """Append-only tar writer over a file object: header, data, padding; end marker on close."""

    def __init__(self, f):
        self._f, self._pos = f, 0

    def add(self, name: str, data: bytes) -> None:
        pad = -len(data) % tarfile.BLOCKSIZE
        chunk = member_header(name, len(data)) + data + b"\0" * pad
        self._f.write(chunk)
        self._pos += len(chunk)

    def close(self) -> None:
        # Two zero blocks end the archive; pad to a whole record as tar tools do.
        end = self._pos + 2 * tarfile.BLOCKSIZE
        end += -end % tarfile.RECORDSIZE
        self._f.write(b"\0" * (end - self._pos))
        self._pos = end


class ShardWriter:
    """Write one shard atomically; use as a context manager.

    >>> with ShardWriter(path=out / "real-train-000000.tar") as w:
    ...     w.write(sample)
    """

    def __init__(self, path: str | Path):
        self.path = Path(path)
        if self.path.suffix != ".tar":
            raise ValueError(f"shard path must end in .tar, got {str(path)!r}")
        self.stats = ShardStats(name=self.path.name)
        self._keys: set[str] = set()
        self._tmp = temp_path_for(self.path)
        self._file = None
        self._tar = None

    def __enter__(self) -> ShardWriter:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp, "wb")
        self._hash = _HashingFile(self._file)
        self._tar = _TarStream(self._hash)
        return self

    def write(self, sample: dict) -> None:
        """Append one sample (``{"__key__": str, ext: bytes, ...}``)."""
        if self._tar is None:
            raise RuntimeError("ShardWriter.write called outside its context")
        key = check_key(sample.get("__key__"))
        if key in self._keys:
            raise ValueError(f"duplicate key {key!r} in shard {self.path.name}")
        self._keys.add(key)
        for ext, value in sample.items():
            if ext.startswith("__"):
                continue
            if isinstance(value, str):
                value = value.encode("utf-8")
            if not isinstance(value, (bytes, bytearray)):
                raise ValueError(f"sample {key!r} member {ext!r} must be bytes, got {type(value).__name__}")
            self._tar.add(f"{key}.{ext}", bytes(value))
        meta = json.loads(sample["json"]) if "json" in sample else {}
        self.stats.count(meta)

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            _discard(self._file, self._tmp)
            return
        try:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self.stats.bytes, self.stats.sha256 = self._hash.nbytes, self._hash.sha.hexdigest()
            if self.path.exists():  # a fresh name has no sidecars: spare the directory listing
                remove_sidecars(self.path)
            os.replace(self._tmp, self.path)
        except BaseException:
            _discard(self._file, self._tmp)
            raise
        write_json(stats_path(self.path), self.stats.to_dict())


def write_shard(path: str | Path, samples: Iterable[dict]) -> ShardStats:
    """Write ``samples`` to the shard ``path`` atomically and return its stats."""
    with ShardWriter(path) as w:
        for s in samples:
            w.write(s)
    return w.stats


def write_tar_members(path: str | Path, members: Iterable[tuple[str, bytes]]) -> tuple[int, str]:
    """Atomically write a plain tar of ``(name, bytes)`` members (sidecars); return (bytes, sha256)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    f = open(tmp, "wb")
    try:
        h = _HashingFile(f)
        tar = _TarStream(h)
        for name, data in members:
            tar.add(name, data)
        tar.close()
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        _discard(f, tmp)
        raise
    return h.nbytes, h.sha.hexdigest()


class RollingShardWriter:
    """Write a stream of samples into numbered shards of at most ``maxcount`` samples each.

    Each shard is an atomic :class:`ShardWriter`; names come from :func:`shard_name`, starting at
    ``start``. Use as a context manager; ``stats`` lists the finished shards.
    """

    def __init__(self, *, output_dir: str | Path, prefix: str, maxcount: int = 1000, start: int = 0):
        if maxcount < 1:
            raise ValueError(f"maxcount must be >= 1, got {maxcount}")
        self.output_dir, self.prefix, self.maxcount = Path(output_dir), prefix, maxcount
        self._index, self._current, self.stats = start, None, []
        shard_name(prefix, start)  # validates the prefix before any work

    def __enter__(self) -> RollingShardWriter:
        return self

    def write(self, sample: dict) -> None:
        if self._current is not None and self._current.stats.samples >= self.maxcount:
            self._close(None)
        if self._current is None:
            self._current = ShardWriter(self.output_dir / shard_name(self.prefix, self._index)).__enter__()
            self._index += 1
        self._current.write(sample)

    def _close(self, exc_type) -> None:
        writer, self._current = self._current, None
        writer.__exit__(exc_type, None, None)
        if exc_type is None:
            self.stats.append(writer.stats)

    def __exit__(self, exc_type, exc, tb) -> None:
        if self._current is not None:
            self._close(exc_type)
