"""Sidecar shards: extra per-sample members stored beside a shard, joined back by key.

For ``X.tar`` the sidecar ``X.<name>.tar`` holds, for every key of X in X's order, members named
``<key>.<name>.<ext>`` (for example ``<key>.quality.msgpack``). Attaching scores this way never
rewrites image bytes. Records name members either way: ``{"msgpack": ...}`` or
``{"quality.msgpack": ...}`` both write ``<key>.quality.msgpack``; readers return
``"quality.msgpack"``. The quality filter's contract: sidecar ``quality``, member ``quality.msgpack``
= ``{"scores": {...}, "composite": float | None, "keep": bool, "reasons": [str]}``.

A sidecar may open with one metadata member, ``__shard__`` (:data:`SHARD_MEMBER`, JSON): the
identity of the shard bytes it was computed from (``wds_tools.shard_identity``). Readers skip it
like any WebDataset ``__name__`` member; :func:`read_shard_identity` reads it alone.
"""

from __future__ import annotations

import itertools
import json
import tarfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import msgpack

from wds_tools.reader import is_reserved_key, is_unsafe_ext, iter_tar_samples, split_member_name
from wds_tools.remote_output import staged_upload
from wds_tools.sample import check_key
from wds_tools.tar_members import iter_members
from wds_tools.urls import is_remote, open_url, sidecar_url
from wds_tools.writer import write_tar_members

SHARD_MEMBER = "__shard__"


def shard_keys(shard_url: str) -> list[str]:
    """The keys a reader yields from a shard, in order.

    A local shard is read by headers only (no member data); like the reader, a cut tar loses the
    sample the cut went through.
    """
    if is_remote(shard_url) or shard_url.startswith("pipe:"):
        return [s["__key__"] for s in iter_tar_samples(shard_url)]
    keys: list[str] = []
    try:
        with open(shard_url, "rb") as f:
            for member in iter_members(f, with_data=False):
                parts = split_member_name(member.name) if member.is_file else None
                if parts is None or is_reserved_key(parts[0]) or is_unsafe_ext(parts[1]):
                    continue  # the reader skips these members too
                if not keys or keys[-1] != parts[0]:
                    keys.append(parts[0])
    except tarfile.ReadError:
        return keys[:-1]
    return keys


def _member_ext(name: str, ext: str) -> str:
    """Accept both spellings of a member: ``msgpack`` and ``<name>.msgpack``."""
    return ext[len(name) + 1 :] if ext.startswith(f"{name}.") else ext


def _encode(ext: str, value) -> bytes:
    if ext.endswith("msgpack"):
        return msgpack.packb(value, use_bin_type=True)
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    raise ValueError(f"sidecar member {ext!r}: cannot encode {type(value).__name__} (use .msgpack)")


def write_sidecar(
    shard_path: str | Path,
    name: str,
    records: Iterable[tuple[str, dict]],
    *,
    check_against_shard: bool = True,
    known_keys: Sequence[str] | None = None,
    shard_identity: dict | None = None,
) -> Path | str:
    """Atomically write ``X.<name>.tar`` for shard ``X.tar`` from ``(key, {ext: value})`` records.

    ``shard_identity`` (``wds_tools.shard_identity.shard_identity`` of the shard the records were
    computed from) is stored first, as the :data:`SHARD_MEMBER` member.

    ``check_against_shard`` compares the keys with the shard's: ``known_keys`` when the caller has
    just read them (a remote shard is not fetched again), else listed from the shard (headers
    only for local shards).
    Beside a remote shard (``s3://``, ``gs://``, ...) the sidecar is finished in a local temporary
    file and uploaded in one piece, which object stores make visible whole or not at all.
    Returns the sidecar's path (local) or URL (remote).
    """
    shard_path = _local_path(str(shard_path))
    out = sidecar_url(shard_path, name)
    records = list(records)
    keys = [check_key(k) for k, _ in records]
    if check_against_shard:
        expected = list(known_keys) if known_keys is not None else shard_keys(shard_path)
        if keys != expected:
            missing = sorted(set(expected) - set(keys))[:5]
            extra = sorted(set(keys) - set(expected))[:5]
            raise ValueError(
                f"sidecar {name!r} keys do not match shard {shard_path}: "
                f"missing {missing}, extra {extra} (order must match too)"
            )
    members = (
        (f"{key}.{name}.{_member_ext(name, ext)}", _encode(ext, value))
        for key, values in records
        for ext, value in values.items()
    )
    if shard_identity is not None:
        head = json.dumps(shard_identity, sort_keys=True).encode("utf-8")
        members = itertools.chain([(SHARD_MEMBER, head)], members)
    if not is_remote(out):
        write_tar_members(Path(out), members)
        return Path(out)
    with staged_upload(out) as local:
        write_tar_members(local, members)
    return out


def _local_path(url: str) -> str:
    """``file://`` URLs are local paths: written with a local atomic rename, not an upload."""
    return url[len("file://"):] if url.startswith("file://") else url


def read_shard_identity(shard_url: str, name: str) -> dict | None:
    """The :data:`SHARD_MEMBER` record of sidecar ``name`` of ``shard_url``; None when the sidecar
    does not start with one (written before shards were recorded) or it is not a JSON object.
    Reads the sidecar's first member only. A missing sidecar raises FileNotFoundError."""
    with open_url(sidecar_url(shard_url, name), "rb") as f:
        try:
            first = next(iter_members(f), None)
        except tarfile.ReadError:
            return None
    if first is None or first.name != SHARD_MEMBER:
        return None
    try:
        value = json.loads(first.data)
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


def read_sidecar(shard_url: str, name: str) -> dict[str, dict]:
    """``{key: {member: decoded value}}`` of one sidecar (msgpack decoded, nothing unpickled)."""
    out = {}
    for s in iter_tar_samples(sidecar_url(shard_url, name)):
        out[s["__key__"]] = {
            ext: msgpack.unpackb(v, raw=False, strict_map_key=False) if ext.endswith("msgpack") else v
            for ext, v in s.items()
            if not ext.startswith("__")
        }
    return out
