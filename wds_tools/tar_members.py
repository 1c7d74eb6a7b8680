"""A streaming tar member reader for shards: the headers parsed with slices, not ``tarfile``.

``tarfile`` parses every header field of every member in Python (~150 us a member, more than
decoding a small JPEG costs on some machines), and shards hold millions of small members. Shards
need only a member's name, type and size, so this reads those and nothing else.

Formats: ustar and v7 headers, GNU long names (``L``) and long link targets (``K``, read and
dropped: links carry no data) and pax extended headers (``x``, for ``path`` and ``size``), which
covers what ``tarfile``, GNU tar and this package's writer emit.
Other member types (directories, links, devices) are yielded with ``is_file`` False and no data.

Damage raises ``tarfile.ReadError`` (a subclass of it, so callers handle both readers alike):
a header whose checksum fails, a member cut short, or a stream that ends before its end-of-archive
blocks, which is how a cut shard looks.
"""

from __future__ import annotations

import os
import tarfile
from collections.abc import Iterator
from typing import BinaryIO, NamedTuple

BLOCK = tarfile.BLOCKSIZE
_ZERO_BLOCK = bytes(BLOCK)
_FILE_TYPES = (b"0", b"\0", b"7")  # regular, old-style regular, contiguous


class TarCorruptError(tarfile.ReadError):
    """The tar stream is damaged or was cut."""


class TarMember(NamedTuple):
    """One member: its full name, its bytes (``b""`` for non-files) and whether it is a file."""

    name: str
    data: bytes
    is_file: bool


def _read_exact(f: BinaryIO, n: int) -> bytes:
    """``n`` bytes, looping over short reads (pipes and sockets return what they have)."""
    data = f.read(n)
    if len(data) == n or not data:
        return data
    parts = [data]
    got = len(data)
    while got < n:
        more = f.read(n - got)
        if not more:
            break
        parts.append(more)
        got += len(more)
    return b"".join(parts)


def _octal(field: bytes) -> int:
    if field[:1] and field[0] & 0x80:  # GNU base-256 for sizes of 8 GiB and more
        return int.from_bytes(field[1:], "big")
    text = field.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError as e:
        raise TarCorruptError(f"bad number field {field!r}") from e


def _checksum_ok(header: bytes) -> bool:
    stored = _octal(header[148:156])
    # the checksum field counts as eight spaces; some writers summed signed bytes
    unsigned = sum(header[:148]) + sum(header[156:]) + 8 * 32
    if stored == unsigned:
        return True
    signed = unsigned - 256 * sum(1 for b in header[:148] + header[156:] if b > 127)
    return stored == signed


def _name(header: bytes) -> str:
    name = header[:100].split(b"\0", 1)[0]
    if header[257:262] == b"ustar":
        prefix = header[345:500].split(b"\0", 1)[0]
        if prefix:
            name = prefix + b"/" + name
    return name.decode("utf-8", "surrogateescape")


def _pax_records(data: bytes) -> dict[str, str]:
    """``"<len> key=value\\n"`` records of a pax extended header."""
    out, pos = {}, 0
    while pos < len(data):
        space = data.find(b" ", pos)
        if space < 0:
            break
        try:
            length = int(data[pos:space])
        except ValueError as e:
            raise TarCorruptError("bad pax header record") from e
        if length <= 0:
            raise TarCorruptError("bad pax header record length")
        key, _, value = data[space + 1:pos + length - 1].partition(b"=")
        out[key.decode("utf-8", "surrogateescape")] = value.decode("utf-8", "surrogateescape")
        pos += length
    return out


def _payload(f: BinaryIO, size: int, name: str) -> bytes:
    padded = size + (-size % BLOCK)
    data = _read_exact(f, padded)
    if len(data) < size:
        raise TarCorruptError(f"member {name!r} cut short: {len(data)} of {size} bytes")
    if len(data) < padded:
        raise TarCorruptError(f"member {name!r} padding cut short")
    return data[:size] if padded != size else data


def _skip(f: BinaryIO, size: int, total: int, name: str) -> None:
    if f.seek(size + (-size % BLOCK), 1) > total:
        raise TarCorruptError(f"member {name!r} cut short")


def iter_members(f: BinaryIO, *, with_data: bool = True) -> Iterator[TarMember]:
    """Members of an uncompressed tar stream, in order; ``TarCorruptError`` on damage.

    The stream must end with the end-of-archive blocks (two zero blocks): a tar that stops
    without them was cut, even when the cut falls between members. ``with_data=False`` seeks
    over file data instead of reading it (the stream must be a seekable file) and yields
    members with empty data.
    """
    total = os.fstat(f.fileno()).st_size if not with_data else 0
    long_name: str | None = None
    pax: dict[str, str] = {}
    while True:
        header = _read_exact(f, BLOCK)
        if not header:
            raise TarCorruptError("no end-of-archive marker: the tar was cut")
        if len(header) < BLOCK:
            raise TarCorruptError("header cut short")
        if header == _ZERO_BLOCK:
            if _read_exact(f, BLOCK) != _ZERO_BLOCK:
                raise TarCorruptError("no end-of-archive marker: the tar was cut")
            return
        if not _checksum_ok(header):
            raise TarCorruptError("bad header checksum")
        kind = header[156:157]
        size = _octal(header[124:136])
        if kind in (b"L", b"K", b"x", b"g"):
            data = _payload(f, size, "<extended header>")
            if kind == b"L":
                long_name = data.split(b"\0", 1)[0].decode("utf-8", "surrogateescape")
            elif kind == b"x":
                pax = _pax_records(data)
            continue
        name = pax.get("path") or long_name or _name(header)
        if "size" in pax:
            size = int(pax["size"])
        long_name, pax = None, {}
        if kind in _FILE_TYPES:
            if with_data:
                yield TarMember(name, _payload(f, size, name), True)
            else:
                _skip(f, size, total, name)
                yield TarMember(name, b"", True)
        else:
            # links, directories and devices carry no data blocks, except odd writers' sizes
            if size and kind not in (b"1", b"2", b"5"):
                _payload(f, size, name)
            yield TarMember(name.rstrip("/") if kind == b"5" else name, b"", False)
