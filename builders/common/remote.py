"""A builder's output on an object store (``--output s3://bucket/set``), for :func:`run_build`.

Units are built into a local staging folder (:func:`wds_tools.remote_output.staging_dir`, the
same path on every worker) and each finished shard is uploaded whole by the worker that built it:
tar, ``.skips.json``, ``.result.json`` (the unit's own tallies), ``.stats.json`` last. A unit whose
stats and tar are on the store (the tar of the size the stats name; with ``verify``, of their
sha256) is done and is not built again, whichever machine built it. The driver uploads the build
files first and the index files last (see ``wds_tools.remote_output``).
"""
from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path

from builders.common.driver import (
    CONFIG_NAME,
    FAILURES_NAME,
    PLAN_NAME,
    PREVIEW_NAME,
    SUMMARY_NAME,
    UnitResult,
    classify_output,
    refuse_stale,
    result_from_disk,
    skips_path,
)
from builders.common.inputs import SPLITS
from wds_tools.manifest import stats_path
from wds_tools.remote_output import Store

log = logging.getLogger(__name__)
INDEX_NAMES = ("dataset.json", "sizes.json")


def result_path(shard: Path) -> Path:
    """``X.tar`` -> ``X.result.json``: a unit's own tallies (``UnitResult.extra``)."""
    return shard.with_name(shard.name[: -len(".tar")] + ".result.json")


def _rel(path: Path, out: Path) -> str:
    return path.relative_to(out).as_posix()


def finished_on_store(store: Store, shard_rel: str, *, verify: bool = False) -> dict | None:
    """The stats of a shard finished on the store, or None (no stats, or a tar that disagrees)."""
    raw = store.read(shard_rel[: -len(".tar")] + ".stats.json")
    if raw is None:
        return None
    stats = json.loads(raw)
    if store.size(shard_rel) != stats.get("bytes"):
        log.warning("rebuilding %s: its size on the store differs from its stats", store.url_of(shard_rel))
        return None
    if verify:
        h = hashlib.sha256()
        with store.fs.open(store.key(shard_rel), "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
        if h.hexdigest() != stats.get("sha256"):
            log.warning("rebuilding %s: its sha256 differs from its stats", store.url_of(shard_rel))
            return None
    return stats


def store_unit(fn: Callable, url: str, rebuild: bool, verify: bool, unit, cfg, output: str,
               *args) -> UnitResult:
    """``fn(unit, cfg, output, *args)`` with ``output`` a staging folder, its shard uploaded to
    ``url``; a shard already finished there is read back instead (unless ``rebuild``)."""
    store, out = Store(url), Path(output)
    shard = Path(unit.path(out))
    rels = [_rel(p, out) for p in (shard, skips_path(shard), result_path(shard), stats_path(shard))]
    # A staging copy on this machine is no evidence: the store says what is done, and a cluster
    # node's staging folder may hold this shard's files from an earlier run (only the driver's is
    # emptied at start), which a resumed unit would otherwise read where the store has none.
    for rel in rels:
        (out / rel).unlink(missing_ok=True)
    if not rebuild and finished_on_store(store, rels[0], verify=verify) is not None:
        for rel in rels[1:]:
            store.download(rel, out / rel)
        r = result_from_disk(unit, out)
        extra = out / rels[2]
        r.extra = json.loads(extra.read_text()) if extra.exists() else {}
        r.extra.pop("stage_seconds", None)  # time spent by the run that built it, not by this one
        return r
    split_dir = rels[0].rsplit("/", 1)[0]
    stem = shard.name[: -len(".tar")]
    sidecars = [f"{split_dir}/{n}" for n in store.list(split_dir)
                if n.startswith(stem + ".") and n.endswith(".tar") and n != shard.name]
    store.remove([rels[3], *sidecars])  # the stats first: from here on the old shard is not finished
    r = fn(unit, cfg, output, *args)
    if r.extra:
        (out / rels[2]).write_text(json.dumps(r.extra, sort_keys=True))
    store.remove([rel for rel in rels[1:3] if not (out / rel).exists()])  # an earlier attempt's
    store.upload_in_order(out, rels)
    (out / rels[0]).unlink(missing_ok=True)  # uploaded: a cluster node's disk keeps no copy
    return r


def wrap_unit(fn: Callable, url: str, *, rebuild: bool, verify: bool) -> Callable:
    """The unit function a worker runs for a store output (picklable: a partial of a module function)."""
    return partial(store_unit, fn, url, rebuild, verify)


def pull_build_files(store: Store, out: Path) -> None:
    """The files the resume checks read, from the store into the staging folder."""
    for name in (CONFIG_NAME, PLAN_NAME):
        store.download(name, out / name)


def prepare_store(units: Sequence, store: Store, out: Path, *, prefix: str, overwrite: bool) -> None:
    """:func:`builders.common.driver.prepare_output` on the store; with overwrite the old index
    files go first, so no reader follows an index to shards being deleted."""
    names = {split: store.list(split) for split in SPLITS}
    _, delete, stale = classify_output(names, {Path(u.path(out)).name for u in units},
                                       prefix=prefix, overwrite=overwrite)
    refuse_stale(store.url, stale)
    if overwrite:
        store.remove([SUMMARY_NAME, FAILURES_NAME, *(f"{s}/{n}" for s in SPLITS for n in INDEX_NAMES)])
    store.remove(delete)


def push_build_files(store: Store, out: Path) -> None:
    store.upload_in_order(out, (CONFIG_NAME, PLAN_NAME))


def pull_unit_files(units: Sequence, store: Store, out: Path) -> None:
    """Stats and skips of every planned shard, for the indexes (a unit run elsewhere left none here)."""
    for u in units:
        shard = Path(u.path(out))
        for p in (stats_path(shard), skips_path(shard)):
            if not p.exists():
                store.download(_rel(p, out), p)


def remove_units(units: Sequence, store: Store, out: Path) -> None:
    """A build that wrote nothing leaves nothing on the store a rerun would keep as finished."""
    rels = []
    for u in units:
        shard = Path(u.path(out))
        rels += [_rel(p, out) for p in (stats_path(shard), skips_path(shard), result_path(shard), shard)]
    store.remove([*rels, CONFIG_NAME, PLAN_NAME])


def shard_for_preview(shard: Path, store: Store, out: Path) -> Path:
    """The shard in staging, fetched back from the store (units delete their copy after upload)."""
    if not shard.exists():
        store.download(_rel(shard, out), shard)
    return shard


def push_indexes(store: Store, out: Path, splits: Sequence[str], *, failures: bool) -> None:
    """Index files after every shard they list; the build summary last. ``failures``: this
    builder records failed units (build_failures.json is uploaded, or removed once none)."""
    store.upload_in_order(out, [f"{s}/{n}" for s in splits for n in ("sizes.json", "dataset.json")])
    if failures and not (out / FAILURES_NAME).exists():
        store.remove([FAILURES_NAME])
    store.upload_in_order(out, (FAILURES_NAME, PREVIEW_NAME, SUMMARY_NAME))
