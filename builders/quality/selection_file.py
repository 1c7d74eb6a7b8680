"""What phase 2 records in ``selection.json``: the thresholds, kept counts, finalised sidecars.

The file format is owned by ``wds_tools.quality_record`` (Stage 2 reads it there); this module
fills it from the filter's final records.
"""

from __future__ import annotations

from collections import Counter, defaultdict

from builders.quality.config import QualityConfig
from builders.quality.keep_rules import class_key
from wds_tools.quality_record import SELECTION_FORMAT, SIDECAR, sha256_url
from wds_tools.urls import sidecar_url


def finalised_entries(records: list[dict], identities: dict[str, dict]) -> list[dict]:
    """One entry per sidecar of ``records``, sorted by shard (the order shards finished scoring in
    must not change the file): shard, its ``shard_identity`` (from ``identities``, what the sidecar
    records), sidecar, its sha256 as written now, samples, kept and kept by class."""
    by_url: dict[str, list[dict]] = defaultdict(list)
    for r in records:
        by_url[r["url"]].append(r)
    entries = []
    for url, recs in sorted(by_url.items()):
        side = sidecar_url(url, SIDECAR)
        entries.append({"shard": url, "shard_identity": identities.get(url), "sidecar": side,
                        "sha256": sha256_url(side), "samples": len(recs),
                        "kept": sum(r["keep"] for r in recs),
                        "kept_by_class": dict(Counter(class_key(r) for r in recs if r["keep"]))})
    return entries


def caption_counts(records: list[dict]) -> dict[str, dict[str, int]]:
    """Per caption source: captions scored, kept (passed the floor, of kept samples) and total."""
    out: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        for c in r.get("captions") or []:
            src = c.get("source", "unknown")
            out[src]["total"] += 1
            out[src]["kept"] += bool(r["keep"] and c.get("keep"))
            out[src]["passed_floor"] += bool(c.get("keep"))
    return {s: dict(c) for s, c in sorted(out.items())}


def selection_doc(*, selected: dict, entries: list[dict], cfg: QualityConfig, urls: list[str]) -> dict:
    """The whole ``selection.json`` document (entry paths are made relative when written)."""
    records = selected["records"]
    kept = [r for r in records if r["keep"]]
    listed = {e["shard"] for e in entries}
    return {
        "format": SELECTION_FORMAT,
        "threshold": selected["threshold"],
        "class_thresholds": selected["class_thresholds"],
        "keep_top_percent": cfg.selection.keep_top_percent,
        "per_class": cfg.selection.per_class,
        "min_class_share": cfg.selection.min_class_share,
        "total": len(records),
        "kept": len(kept),
        "total_by_class": dict(Counter(class_key(r) for r in records)),
        "kept_by_class": dict(Counter(class_key(r) for r in kept)),
        "kept_by_source": dict(Counter(str(r.get("source")) for r in kept)),
        "captions_by_source": caption_counts(records),
        "not_selected": [u for u in urls if u not in listed],
        "sidecars": entries,
    }
