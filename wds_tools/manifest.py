"""Per-shard stats, ``sizes.json`` and the dataset manifest ``dataset.json``."""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

from wds_tools.atomic import write_json

STATS_SUFFIX = ".stats.json"
COUNT_FIELDS = ("by_source", "by_caption_source", "by_class", "by_kind")


@dataclass
class ShardStats:
    """What one shard holds; written as ``<stem>.stats.json`` beside it."""

    name: str
    samples: int = 0
    bytes: int = 0
    sha256: str = ""
    by_source: dict = field(default_factory=dict)
    by_caption_source: dict = field(default_factory=dict)
    by_class: dict = field(default_factory=dict)
    by_kind: dict = field(default_factory=dict)

    def count(self, meta: dict) -> None:
        """Add one sample's metadata to the counts."""
        self.samples += 1
        _bump(self.by_source, meta.get("source"))
        for src in meta.get("caption_sources") or []:
            _bump(self.by_caption_source, src)
        _bump(self.by_class, meta.get("class"))
        _bump(self.by_kind, meta.get("kind"))

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> ShardStats:
        known = {k: d[k] for k in cls.__dataclass_fields__ if k in d}
        return cls(**known)


def _bump(counts: dict, value: object) -> None:
    if value is not None:
        counts[str(value)] = counts.get(str(value), 0) + 1


def stats_path(shard_path: str | Path) -> Path:
    """``X.tar`` -> ``X.stats.json``."""
    p = Path(shard_path)
    return p.with_name(p.name[: -len(".tar")] + STATS_SUFFIX)


def read_stats(shard_path: str | Path) -> ShardStats:
    return ShardStats.from_dict(json.loads(stats_path(shard_path).read_text()))


def list_shard_stats(output_dir: str | Path, *, require_tar: bool = True) -> list[ShardStats]:
    """Stats of every finished shard in ``output_dir`` (sidecars have no stats), sorted by name.

    ``require_tar=False``: the stats alone say a shard is finished (a staging folder whose tars
    were uploaded to a store and removed here)."""
    out = []
    for p in sorted(Path(output_dir).glob(f"*{STATS_SUFFIX}")):
        stem = p.name[: -len(STATS_SUFFIX)]
        if "." in stem or (require_tar and not (p.parent / f"{stem}.tar").exists()):
            continue
        out.append(ShardStats.from_dict(json.loads(p.read_text())))
    return out


def classes_per_shard(by_class: list[dict]) -> dict:
    """Distinct classes per shard: min, median, max over shards (how well shards mix classes)."""
    counts = sorted(len(c) for c in by_class)
    if not counts:
        return {"min": 0, "median": 0, "max": 0}
    mid = len(counts) // 2
    median = counts[mid] if len(counts) % 2 else (counts[mid - 1] + counts[mid]) / 2
    return {"min": counts[0], "median": median, "max": counts[-1]}


def write_index(output_dir: str | Path, *, name: str, extra: dict | None = None,
                require_tar: bool = True) -> dict:
    """Write ``sizes.json`` (open_clip's trainer reads it) and ``dataset.json`` for ``output_dir``."""
    output_dir = Path(output_dir)
    shards = list_shard_stats(output_dir, require_tar=require_tar)
    totals = {f: Counter() for f in COUNT_FIELDS}
    for s in shards:
        for f in COUNT_FIELDS:
            totals[f].update(getattr(s, f))
    manifest = {
        "name": name,
        "total_samples": sum(s.samples for s in shards),
        "total_bytes": sum(s.bytes for s in shards),
        "num_shards": len(shards),
        "stats": {f: dict(sorted(c.items())) for f, c in totals.items()},
        "classes_per_shard": classes_per_shard([s.by_class for s in shards]),
        "shards": [
            {"name": s.name, "samples": s.samples, "bytes": s.bytes, "sha256": s.sha256,
             "classes": len(s.by_class), "by_class": dict(sorted(s.by_class.items()))} for s in shards
        ],
        **(extra or {}),
    }
    write_json(output_dir / "sizes.json", {s.name: s.samples for s in shards})
    write_json(output_dir / "dataset.json", manifest)
    return manifest


def read_index(dir_or_url: str | Path) -> dict:
    """Read ``dataset.json`` from a local directory or a remote prefix (fsspec)."""
    from wds_tools.urls import open_url

    base = str(dir_or_url).rstrip("/")
    if base.endswith(".json"):
        url = base
    else:
        url = f"{base}/dataset.json"
    with open_url(url, "rb") as f:
        return json.loads(f.read())
