"""Which bytes of a shard a sidecar describes: its size and sha256 (or an object store's ETag).

A sidecar (quality verdicts, say) was computed from one exact version of its shard; a shard
rebuilt under the same name with other pixels keeps its keys, so only its bytes tell the two apart.
:func:`shard_identity` records that version and :func:`identity_problem` says why the shard on
disk now differs from a recorded one. The record is derived from content only, so it survives a
copy of the folder (a sidecar stays byte-identical across identical shards):

- a local shard: ``{"bytes", "sha256"}``, the sha256 by a streaming read (1 MiB blocks);
- an object-store shard: ``{"bytes", "etag"}`` when the store reports an ETag (no download; S3
  gives a new ETag to every upload of other bytes), else ``{"bytes", "sha256"}``. A local copy of
  such a shard is checked by its MD5 when the ETag is one (S3's single-part uploads); any other
  ETag (multipart, some encryption, other stores) cannot be checked off the store: rescore the copy.

Cost, and the fast pre-check: a sha256 reads the whole shard (about 1 GB/s a core). A local shard
of the recorded size whose status-change time (ctime) is older than ``unchanged_since_ns`` (the
mtime of the sidecar that recorded it) is taken as unchanged without being read: writing to,
renaming onto, copying onto or ``touch``-ing the shard all set its ctime to now, so a shard rebuilt
or swapped after its sidecar was written is always hashed. What this cannot see: an old sidecar
copied in *after* a same-size shard changed (its mtime is then new); rescoring on purpose
(``rescore=true`` in the filter) covers that. A shard of another size is never read.
"""

from __future__ import annotations

import hashlib
import os

import fsspec

from wds_tools.urls import is_remote, open_url


def _local(url: str) -> str | None:
    """The local path of ``url`` (``file://`` URLs included), None for an object store."""
    if url.startswith("file://"):
        return url[len("file://"):]
    return None if is_remote(url) else url


def sha256_url(url: str) -> str:
    """sha256 of a local or remote file, read in 1 MiB blocks."""
    h = hashlib.sha256()
    with open_url(url, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _remote_info(url: str) -> tuple[int, str | None]:
    fs, path = fsspec.core.url_to_fs(url)
    info = fs.info(path)
    etag = info.get("ETag") or info.get("etag")
    return int(info["size"]), (str(etag).strip('"') if etag else None)


def shard_identity(url: str) -> dict:
    """The record of the shard's current bytes (see the module docstring)."""
    path = _local(url)
    if path is None:
        size, etag = _remote_info(url)
        return {"bytes": size, "etag": etag} if etag else {"bytes": size, "sha256": sha256_url(url)}
    before = os.stat(path)
    digest = sha256_url(path)
    after = os.stat(path)
    if (before.st_size, before.st_mtime_ns, before.st_ino) != (after.st_size, after.st_mtime_ns, after.st_ino):
        raise ValueError(f"{path} changed while it was being hashed: is a builder still writing it?")
    return {"bytes": after.st_size, "sha256": digest}


def mtime_ns(url: str) -> int | None:
    """A local file's mtime in ns (the ``unchanged_since_ns`` of a sidecar); None when it is remote
    or missing."""
    path = _local(url)
    try:
        return None if path is None else os.stat(path).st_mtime_ns
    except OSError:
        return None


def is_identity(recorded) -> bool:
    """True for a record :func:`shard_identity` could have made."""
    return (isinstance(recorded, dict) and isinstance(recorded.get("bytes"), int)
            and (isinstance(recorded.get("sha256"), str) or isinstance(recorded.get("etag"), str)))


def _md5_etag(etag: str) -> bool:
    """True for an ETag that is the MD5 of the object's bytes (an S3 single-part upload's: 32 hex
    digits; a multipart one ends in ``-<parts>``)."""
    return len(etag) == 32 and all(c in "0123456789abcdef" for c in etag.lower())


def _copy_problem(path: str, etag: str) -> str | None:
    """A local copy of a shard recorded on a store by an MD5 ETag: None when its MD5 is that ETag."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return None if h.hexdigest() == etag.lower() else f"MD5 {h.hexdigest()}, scored at ETag {etag}"


def identity_problem(url: str, recorded, *, unchanged_since_ns: int | None = None) -> str | None:
    """Why the shard at ``url`` is not the version ``recorded`` describes, or None when it is.

    ``unchanged_since_ns``: see the module docstring (the fast pre-check of a local shard).
    """
    if not is_identity(recorded):
        return "no size and sha256 of the shard were recorded (written by an older version)"
    path = _local(url)
    try:
        if path is None:
            size, etag = _remote_info(url)
        else:
            st = os.stat(path)
            size, etag = st.st_size, None
    except FileNotFoundError:
        return "the shard is missing"
    if size != recorded["bytes"]:
        return f"size {size} bytes, scored at {recorded['bytes']} bytes"
    if path is None and recorded.get("etag") and etag == recorded["etag"]:
        return None
    if "sha256" not in recorded:  # recorded on an object store by its ETag
        if path is None:
            return f"ETag {etag}, scored at ETag {recorded['etag']}"
        if _md5_etag(recorded["etag"]):
            return _copy_problem(path, recorded["etag"])
        return (f"a local copy of a shard scored on an object store by ETag {recorded['etag']}, "
                f"which is not an MD5 and cannot be checked off the store: rescore the copy")
    if path is not None and unchanged_since_ns is not None and st.st_ctime_ns < unchanged_since_ns:
        return None  # not written, renamed onto or touched since the recording was made
    digest = sha256_url(url)
    if digest != recorded["sha256"]:
        return f"sha256 {digest[:12]}..., scored at {recorded['sha256'][:12]}..."
    return None
