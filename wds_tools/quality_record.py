"""The quality record: the one owner of what the quality filter writes and what its readers decode.

For shard ``X.tar`` the filter writes the sidecar ``X.quality.tar`` (see ``wds_tools.sidecar``),
one member ``<key>.quality.msgpack`` per sample, holding a :class:`QualityRecord`:

- ``scores``: raw measures of the sample (``clip`` is the cosine of its *primary* caption, ``txt``);
- ``composite``: the weighted score the threshold ranks (None after a hard fail);
- ``keep`` / ``reasons``: the verdict; ``pending_global_selection`` means phase 2 has not run yet,
  so nothing is selected (:func:`keep` is False);
- ``source``, ``class``: copied from the sample's metadata, so the selection can count by them
  without reading the image shards again;
- ``captions``: one ``{"source", "clip", "keep"}`` per entry of :func:`sample_captions` (the
  captions Stage 2 draws from, in order): the cosine of that caption and whether it passed its
  floor. Stage 2 draws only among kept captions.

Phase 2 of the filter writes ``selection.json`` (:data:`SELECTION_NAME`) beside its report and
beside the shards: the threshold, kept counts and every finalised sidecar (sorted by shard) with
its sha256 and ``shard_identity``, the size and sha256 of the image shard it scored (also the
sidecar's ``__shard__`` member, see ``wds_tools.shard_identity``).
"""

from __future__ import annotations

import json
import os
import posixpath
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from wds_tools.atomic import write_json
from wds_tools.reader import iter_tar_samples
from wds_tools.remote_output import staged_upload
from wds_tools.shard_identity import identity_problem, mtime_ns, sha256_url
from wds_tools.skips import SkipLog
from wds_tools.urls import is_remote, open_url, sidecar_url, url_exists

SIDECAR = "quality"
MEMBER = f"{SIDECAR}.msgpack"
SELECTION_NAME = "selection.json"
SELECTION_FORMAT = 1
PENDING = "pending_global_selection"


class QualityRecordError(ValueError):
    """A quality member that cannot be decoded into a :class:`QualityRecord`."""


@dataclass(kw_only=True)
class CaptionScore:
    """One caption's CLIP cosine and whether it passed its floor."""

    source: str = "unknown"
    clip: float | None = None
    keep: bool = True


@dataclass(kw_only=True)
class QualityRecord:
    """One sample's quality verdict (the msgpack member of a quality sidecar)."""

    scores: dict = field(default_factory=dict)
    composite: float | None = None
    keep: bool = False
    reasons: list[str] = field(default_factory=list)
    source: str | None = None
    cls: str | None = None
    captions: list[CaptionScore] = field(default_factory=list)

    def to_dict(self) -> dict:
        """The plain dict that is msgpack-encoded into the sidecar."""
        return {"scores": self.scores, "composite": self.composite, "keep": bool(self.keep),
                "reasons": list(self.reasons), "source": self.source, "class": self.cls,
                "captions": [{"source": c.source, "clip": c.clip, "keep": bool(c.keep)} for c in self.captions]}

    @classmethod
    def from_dict(cls, d: dict) -> QualityRecord:
        """Inverse of :meth:`to_dict`; records written before per-caption scores have no ``captions``."""
        if (not isinstance(d, dict) or not isinstance(d.get("keep"), bool)
                or not isinstance(d.get("scores", {}), dict) or not isinstance(d.get("reasons", []), list)):
            raise QualityRecordError(f"not a quality record (a mapping with a bool keep): {str(d)[:120]!r}")
        caps = d.get("captions") or []
        if not isinstance(caps, list) or not all(isinstance(c, dict) for c in caps):
            raise QualityRecordError(f"quality record captions must be a list of mappings, got {caps!r}")
        return cls(scores=d.get("scores", {}), composite=d.get("composite"), keep=d["keep"],
                   reasons=[str(r) for r in d.get("reasons", [])], source=d.get("source"), cls=d.get("class"),
                   captions=[CaptionScore(source=str(c.get("source", "unknown")), clip=c.get("clip"),
                                          keep=bool(c.get("keep", True))) for c in caps])


def encode_record(record: QualityRecord) -> bytes:
    """msgpack bytes of a record (what the sidecar member holds)."""
    return msgpack.packb(record.to_dict(), use_bin_type=True)


def decode_record(data: bytes | dict) -> QualityRecord:
    """A record from member bytes (or an already decoded mapping); :class:`QualityRecordError` if corrupt.

    msgpack is decoded without extension hooks: nothing can execute.
    """
    if isinstance(data, dict):
        return QualityRecord.from_dict(data)
    try:
        value = msgpack.unpackb(data, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError, msgpack.StackError, TypeError) as e:
        raise QualityRecordError(f"undecodable quality member: {e}") from e
    return QualityRecord.from_dict(value)


def keep(record: QualityRecord) -> bool:
    """True iff the sample is selected: kept by a finished selection (never while pending)."""
    return bool(record.keep) and PENDING not in record.reasons


def sample_captions(meta: dict, txt: str | None) -> list[tuple[str, str]]:
    """``(caption, caption_source)`` pairs Stage 2 draws from: the non-empty ``meta["captions"]``
    (sources from the parallel ``meta["caption_sources"]``), else the primary caption ``txt``."""
    caps = meta.get("captions") if isinstance(meta, dict) else None
    srcs = meta.get("caption_sources") if isinstance(meta, dict) else None
    srcs = srcs if isinstance(srcs, list) else []
    out = []
    for i, c in enumerate(caps if isinstance(caps, list) else []):
        if isinstance(c, str) and c.strip():
            src = srcs[i] if i < len(srcs) and isinstance(srcs[i], str) else "unknown"
            out.append((c, src))
    if not out and isinstance(txt, str) and txt.strip():
        out.append((txt, "primary"))
    return out


def kept_caption_indices(record: QualityRecord, n_captions: int) -> list[int] | None:
    """Indices into :func:`sample_captions` that may be drawn; None when the record's caption list
    does not line up with the sample's (``n_captions`` entries). A record without per-caption
    scores (written before they existed) keeps every caption."""
    if not record.captions:
        return list(range(n_captions))
    if len(record.captions) != n_captions:
        return None
    return [i for i, c in enumerate(record.captions) if c.keep]


def drop_unkept_captions(meta: dict, txt: str | None, record: QualityRecord) -> tuple[dict, str | None]:
    """``meta`` and ``txt`` with only the captions the record kept (for a reshard that must train
    the same without its sidecar). Unchanged when the record has no caption list or it does not
    line up; ``txt`` becomes the first kept caption when the primary one was dropped."""
    pairs = sample_captions(meta, txt)
    kept = kept_caption_indices(record, len(pairs))
    if not record.captions or kept is None or len(kept) == len(pairs) or not kept:
        return meta, txt
    caps = [pairs[i] for i in kept]
    out = {**meta, "captions": [c for c, _ in caps], "caption_sources": [s for _, s in caps]}
    return out, txt if txt in out["captions"] else out["captions"][0]


def read_quality_sidecar(shard_url: str, keys: Sequence[str]) -> dict[str, QualityRecord]:
    """Every record of the shard's quality sidecar, checked whole: ``keys`` are the shard's keys.

    A missing, cut or corrupt sidecar, an undecodable member, or keys that differ from the shard's
    (count, names or order) raise :class:`QualityRecordError` naming the sidecar: a damaged sidecar
    is never read as a shorter list.
    """
    url = sidecar_url(shard_url, SIDECAR)
    skips = SkipLog()
    out: dict[str, QualityRecord] = {}
    try:
        for s in iter_tar_samples(url, skips=skips):
            if MEMBER not in s:
                raise QualityRecordError(f"{url}: sample {s['__key__']!r} has no {MEMBER} member")
            out[s["__key__"]] = decode_record(s[MEMBER])
    except FileNotFoundError as e:
        raise QualityRecordError(f"{url}: no quality sidecar") from e
    except QualityRecordError as e:
        raise QualityRecordError(f"{url}: {e}") from e
    if skips.total():
        raise QualityRecordError(f"{url}: cut or corrupt ({skips.as_dict()})")
    if list(out) != list(keys):
        missing = [k for k in keys if k not in out][:3]
        extra = [k for k in out if k not in set(keys)][:3]
        raise QualityRecordError(f"{url}: {len(out)} records for {len(keys)} shard samples, keys differ "
                                 f"(missing {missing}, extra {extra}, or out of order)")
    return out


def _norm(url: str) -> str:
    url = url[len("file://"):] if url.startswith("file://") else url
    return url if is_remote(url) else os.path.abspath(url)


def _dir_of(url: str) -> str:
    return posixpath.dirname(url) if is_remote(url) else os.path.dirname(_norm(url))


def _relative(url: str, base: str) -> str:
    """``url`` relative to ``base``, so the selection file's folder survives a move, or a copy
    from a store to a disk: a local path always; a URL when it lies under ``base`` (other URLs,
    and local paths in a remote folder, as they are)."""
    if not is_remote(url) and not is_remote(base):
        return os.path.relpath(_norm(url), base)
    prefix = base.rstrip("/") + "/"
    return url[len(prefix):] if is_remote(url) and url.startswith(prefix) else url


def write_selection(doc: dict, folder: str) -> str:
    """Write ``doc`` as ``folder/selection.json`` (local atomically; remote in one upload) with its
    entries' paths relative to ``folder``; returns the file's path or URL."""
    rel = {**doc, "sidecars": [{**e, "shard": _relative(e["shard"], folder),
                                "sidecar": _relative(e["sidecar"], folder)} for e in doc["sidecars"]]}
    if not is_remote(folder):
        return str(write_json(Path(folder) / SELECTION_NAME, rel))
    url = f"{folder.rstrip('/')}/{SELECTION_NAME}"
    with staged_upload(url) as local:
        write_json(local, rel)
    return url


def selection_folders(shard_urls: Iterable[str]) -> list[str]:
    """The distinct folders of ``shard_urls``: where ``selection.json`` lives beside the shards."""
    return list(dict.fromkeys(_dir_of(u) for u in shard_urls))


@dataclass(kw_only=True)
class Selection:
    """The finalised sidecars of one or more ``selection.json`` files, by absolute shard URL."""

    files: list[str]
    entries: dict[str, dict]
    docs: list[dict]

    def problems(self, shard_urls: Iterable[str], *, check_hashes: bool = True) -> list[str]:
        """Why each shard is not trainable as selected (empty when all are): no sidecar, sidecar
        not listed (unscored, pending or from an unfinished run), or changed since the selection."""
        out = []
        for url in shard_urls:
            side = sidecar_url(url, SIDECAR)
            entry = self.entries.get(_norm(url))
            if not url_exists(side):
                out.append(f"{url}: no quality sidecar")
            elif entry is None:
                out.append(f"{url}: not in {' or '.join(self.files) or 'any selection.json'} "
                           f"(unscored, pending, or scored by a run that did not finish)")
            elif check_hashes and sha256_url(side) != entry["sha256"]:
                out.append(f"{side}: changed since the selection was made (sha256 differs)")
        return out

    def shard_problems(self, shard_urls: Iterable[str]) -> list[str]:
        """``url: why`` for each listed shard whose bytes are not those its sidecar scored
        (rebuilt, swapped, missing, or listed without a recorded ``shard_identity``)."""
        out = []
        for url in shard_urls:
            entry = self.entries.get(_norm(url))
            if entry is None:
                continue  # unlisted: a problem of :meth:`problems`
            since = mtime_ns(sidecar_url(url, SIDECAR))
            problem = identity_problem(url, entry.get("shard_identity"), unchanged_since_ns=since)
            if problem:
                out.append(f"{url}: {problem}")
        return out

    def kept_by_class(self, shard_urls: Iterable[str]) -> dict[str, int]:
        """Kept samples per class over ``shard_urls`` (listed shards only)."""
        total: Counter = Counter()
        for url in shard_urls:
            total.update((self.entries.get(_norm(url)) or {}).get("kept_by_class", {}))
        return dict(total)

    def kept(self, shard_urls: Iterable[str]) -> int:
        """Kept samples over ``shard_urls`` (listed shards only)."""
        return sum(int((self.entries.get(_norm(u)) or {}).get("kept", 0)) for u in shard_urls)

    def keeps_none(self, shard_url: str) -> bool:
        """True when the selection lists ``shard_url`` and keeps none of its samples."""
        entry = self.entries.get(_norm(shard_url))
        return entry is not None and int(entry.get("kept", 0)) == 0


def read_selection(files: Sequence[str]) -> Selection:
    """Load ``selection.json`` files (paths or URLs); entries resolved against each file's folder."""
    entries: dict[str, dict] = {}
    docs = []
    for f in files:
        with open_url(f, "rb") as fh:
            doc = json.loads(fh.read().decode("utf-8"))
        if not isinstance(doc, dict) or doc.get("format") != SELECTION_FORMAT or "sidecars" not in doc:
            raise QualityRecordError(f"{f}: not a selection.json of format {SELECTION_FORMAT}")
        base = _dir_of(f)
        for e in doc["sidecars"]:
            shard = e["shard"] if is_remote(e["shard"]) or os.path.isabs(e["shard"]) else os.path.join(base, e["shard"])
            entries[_norm(shard)] = e
        docs.append(doc)
    return Selection(files=list(files), entries=entries, docs=docs)


def find_selection(shard_urls: Iterable[str]) -> list[str]:
    """The ``selection.json`` files that exist beside ``shard_urls``."""
    found = []
    for folder in selection_folders(shard_urls):
        url = f"{folder.rstrip('/')}/{SELECTION_NAME}" if is_remote(folder) else os.path.join(folder, SELECTION_NAME)
        if url_exists(url):
            found.append(url)
    return found
