"""The build driver both shard builders share: resume checks, output preparation, plan digest,
units on workers with progress, per-split indexes and the build summary.

A builder describes itself in a :class:`Builder` (its shard prefix, splits, how it plans units,
its unit function and hooks) and calls :func:`run_build`, which runs the one sequence: check and
lock the output, drop killed writers' temp files, plan units (anything with ``name``, ``split``,
``items`` and ``path(out)``), :func:`check_resumable` (refuse a changed recipe),
:func:`check_plan` (refuse a changed input), :func:`prepare_output` (refuse foreign shards),
:func:`save_build_files`, :func:`run_with_progress`, :func:`write_indexes`, the build summary and
the preview. A finished shard (tar + stats) is kept on rerun; ``overwrite`` rebuilds.
"""
from __future__ import annotations

import json
import logging
import re
import shutil
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from builders.common.executors import run_units
from builders.common.inputs import SPLITS
from wds_tools.atomic import write_json
from wds_tools.config import ConfigError, config_to_dict, load_config, path_error, save_config
from wds_tools.manifest import read_stats, write_index
from wds_tools.progress import progress as progress_bar
from wds_tools.quality_record import SELECTION_NAME

log = logging.getLogger(__name__)

CONFIG_NAME = "build_config.yaml"
PLAN_NAME = "build_plan.json"
SPLIT_KEY = "heldout_split"  # build_plan.json: the held-out split the build used (builders.common.split)
PREVIEW_NAME = "preview.png"
SUMMARY_NAME = "build_summary.json"
FAILURES_NAME = "build_failures.json"
# Settings that may change between a partial build and its resumption.
RUN_ONLY = ("overwrite", "executor", "workers", "ray_address", "output", "break_lock")


@dataclass
class UnitResult:
    """What one unit wrote (or found already written)."""

    name: str
    split: str
    source_images: int
    samples: int
    by_kind: dict = field(default_factory=dict)
    skips: dict = field(default_factory=dict)
    resumed: bool = False
    rebuilt: bool = False         # an earlier run's shard did not match its stats file
    extra: dict = field(default_factory=dict)   # a builder's own per-unit tallies
    node: str = ""                # the Ray node that built it (set by the Ray executor)


@dataclass
class UnitFailure:
    """A unit that raised: recorded, and built again by the next run."""

    name: str
    error: str
    exc: BaseException | None = field(default=None, repr=False, compare=False)  # the unit's own exception


def unit_size(unit) -> int:
    """Source images of a unit (a unit may define ``__len__`` when its items are read later)."""
    return len(unit) if hasattr(unit, "__len__") else len(unit.items)


def skips_path(shard: Path) -> Path:
    """``X.tar`` -> ``X.skips.json`` (written only when a shard skipped something)."""
    return shard.with_name(shard.name[: -len(".tar")] + ".skips.json")


def result_from_disk(unit, output: str | Path) -> UnitResult:
    """Result of a shard finished by an earlier run."""
    shard = unit.path(output)
    stats = read_stats(shard)
    sp = skips_path(shard)
    skips = json.loads(sp.read_text()) if sp.exists() else {}
    return UnitResult(unit.name, unit.split, unit_size(unit), stats.samples, dict(stats.by_kind),
                      skips, resumed=True)


def recipe_dict(cfg, run_only: Sequence[str] = RUN_ONLY) -> dict:
    """The config without the settings a resumed run may change."""
    d = config_to_dict(cfg)
    for k in run_only:
        d.pop(k, None)
    return d


def check_resumable(cfg, out: Path, *, run_only: Sequence[str] = RUN_ONLY) -> None:
    """Refuse to mix shards from a different recipe into this output folder."""
    saved = out / CONFIG_NAME
    if cfg.overwrite or not saved.exists():
        return
    before = recipe_dict(load_config(type(cfg), saved), run_only)
    now = recipe_dict(cfg, run_only)
    changed = sorted(k for k in set(before) | set(now) if before.get(k) != now.get(k))
    if changed:
        raise ConfigError(f"{out} was built with different settings ({', '.join(changed)}); "
                          f"rerun with --overwrite to rebuild it")


def check_plan(digest: str, images: int, out: Path, *, overwrite: bool) -> None:
    """Refuse to resume when the input maps to different shards than last time."""
    saved = out / PLAN_NAME
    if overwrite or not saved.exists():
        return
    before = json.loads(saved.read_text())
    if before.get("digest") != digest:
        raise ConfigError(f"the input of {out} changed since it was built ({before.get('images')} -> "
                          f"{images} images, or other keys); rerun with --overwrite to rebuild it")


def classify_output(names_by_split: dict[str, list[str]], planned: set[str], *, prefix: str,
                    overwrite: bool) -> tuple[list[str], list[str], list[str]]:
    """From the file names in each split folder: (killed writers' temp files, files to delete,
    foreign stale shards), paths relative to the output. Deleted with ``overwrite``: this
    builder's shards, their sidecars (quality verdicts of the old pixels) and ``selection.json``."""
    own = re.compile(rf"^{re.escape(prefix)}-(train|val|test)-\d{{6}}\.(tar|stats\.json|skips\.json|result\.json)$")
    sidecar = re.compile(rf"^{re.escape(prefix)}-(train|val|test)-\d{{6}}\.[^.]+\.tar$")
    temps, delete, stale = [], [], []
    for split, names in names_by_split.items():
        for name in names:
            if ".tmp-" in name and name.startswith(f"{prefix}-"):
                temps.append(f"{split}/{name}")  # a killed writer's temp file: never a finished shard
            elif own.match(name):
                if overwrite:
                    delete.append(f"{split}/{name}")
                elif name.split(".", 1)[0] + ".tar" not in planned:
                    stale.append(name)
            elif overwrite and (sidecar.match(name) or name == SELECTION_NAME):
                delete.append(f"{split}/{name}")
    return temps, delete, stale


def refuse_stale(out: str | Path, stale: list[str]) -> None:
    if stale:
        raise ValueError(f"{out} holds shards this input does not produce ({sorted(stale)[:5]}...); "
                         f"rerun with --overwrite to rebuild the folder")


def prepare_output(units: Sequence, out: Path, *, prefix: str, overwrite: bool) -> None:
    """Remove temp leftovers; with overwrite, remove old shards, their sidecars and the split's
    ``selection.json``; refuse foreign stale shards (:func:`classify_output`).

    A shard rebuilt without overwrite drops its own sidecars when it is written
    (``wds_tools.writer``)."""
    names = {split: sorted(p.name for p in (out / split).iterdir())
             for split in SPLITS if (out / split).is_dir()}
    temps, delete, stale = classify_output(names, {Path(u.path(out)).name for u in units},
                                           prefix=prefix, overwrite=overwrite)
    for rel in temps + delete:
        (out / rel).unlink(missing_ok=True)
    if delete:
        log.info("removed %d files of the earlier build in %s (--overwrite): its shards, their "
                 "sidecars and selection files", len(delete), out)
    refuse_stale(out, stale)


def save_build_files(cfg, out: Path, *, digest: str, units: Sequence) -> None:
    """The resolved config and the plan digest (checked by the next run), with the held-out split
    of a config that defines one (``cfg.heldout_split()``)."""
    save_config(cfg, out / CONFIG_NAME)
    plan = {"digest": digest, "images": sum(unit_size(u) for u in units),
            "shards": {u.name: unit_size(u) for u in units}}
    split = getattr(cfg, "heldout_split", None)
    if callable(split):  # the real builder's: what the synthetic builder's inputs.split_from reads
        plan[SPLIT_KEY] = split().to_dict()
    write_json(out / PLAN_NAME, plan)


def run_with_progress(fn: Callable, units: Sequence, *args, executor: str, workers: int,
                      address: str = "", desc: str = "build", progress: bool = True,
                      gpus_per_task: float = 0.0, keep_going: bool = False,
                      preload: Sequence[str] = (), gpus: Sequence[str] | None = None,
                      ) -> tuple[list[UnitResult], list[UnitFailure]]:
    """Run ``fn(unit, *args)`` for every unit with a progress bar; results sorted by name.

    With ``keep_going`` a failing unit is logged and recorded and the others go on. ``preload``:
    modules every local worker starts with; ``gpus``: a local GPU pool's device ids (default:
    the visible ones), see :func:`builders.common.executors.run_units`.
    """
    results: list[UnitResult] = []
    failures: list[UnitFailure] = []
    bar = progress_bar(total=sum(unit_size(u) for u in units), unit="img", desc=desc,
                       disable=not progress)

    def done(r: UnitResult) -> None:
        results.append(r)
        bar.update(r.source_images)
        bar.set_postfix(shards=len(results), samples=sum(x.samples for x in results))

    def failed(unit, exc: BaseException) -> None:
        if path_error(exc) is not None:  # a read-only or full output: every other unit would fail alike
            raise exc
        log.error("unit %s failed: %s: %s", unit.name, type(exc).__name__, exc)
        failures.append(UnitFailure(unit.name, f"{type(exc).__name__}: {exc}", exc))
        bar.update(unit_size(unit))

    try:
        run_units(fn, units, *args, executor=executor, workers=workers, address=address,
                  on_done=done, on_error=failed if keep_going else None,
                  gpus_per_task=gpus_per_task, preload=preload, gpus=gpus)
    finally:
        bar.close()
    return sorted(results, key=lambda r: r.name), sorted(failures, key=lambda f: f.name)


def write_indexes(out: Path, results: list[UnitResult], *, prefix: str, builder: str,
                  resolved: dict, counts: Callable[[Counter], dict], require_tar: bool = True) -> dict:
    """dataset.json + sizes.json per split folder and build_summary.json; returns the summary.

    ``counts(kinds)`` names the builder's own headline counts from the by-kind tally.
    """
    summary: dict = {"splits": {}, "skipped": {}, "source_images": 0}
    total_skips: Counter = Counter()
    for split in SPLITS:
        rs = [r for r in results if r.split == split]
        if not rs:
            continue
        skips: Counter = Counter()
        kinds: Counter = Counter()
        for r in rs:
            skips.update(r.skips)
            kinds.update(r.by_kind)
        named = counts(kinds)
        extra = {**named, "split": split, "source_images": sum(r.source_images for r in rs),
                 "skipped": dict(sorted(skips.items())), "builder": builder, "config": resolved}
        manifest = write_index(out / split, name=f"{prefix}-{split}", extra=extra, require_tar=require_tar)
        summary["splits"][split] = {
            "shards": manifest["num_shards"], "samples": manifest["total_samples"],
            "source_images": extra["source_images"], **named, "skipped": extra["skipped"],
            "by_caption_source": manifest["stats"]["by_caption_source"],
            "classes_per_shard": manifest.get("classes_per_shard")}
        summary["source_images"] += extra["source_images"]
        total_skips.update(skips)
    summary["skipped"] = dict(sorted(total_skips.items()))
    by_node: dict[str, list[str]] = {}
    for r in results:  # shards kept from an earlier run name no node
        if r.node:
            by_node.setdefault(r.node, []).append(r.name)
    if by_node:
        summary["units_by_node"] = by_node
    return summary


def record_failures(out: Path, failures: list[UnitFailure], summary: dict) -> None:
    """Failed units go into the summary and build_failures.json (removed once a run has none)."""
    summary["failed_units"] = {f.name: f.error for f in failures}
    path = out / FAILURES_NAME
    if failures:
        write_json(path, summary["failed_units"])
    else:
        path.unlink(missing_ok=True)


def write_summary(out: Path, summary: dict) -> None:
    write_json(out / SUMMARY_NAME, summary)


@dataclass(frozen=True)
class Builder:
    """What a shard builder plugs into :func:`run_build`; ``cfg`` is its config (with ``input``,
    ``output``, ``overwrite``, ``executor``, ``workers``, ``ray_address``, ``preview`` and
    ``break_lock``)."""

    tool: str                                  # the lock's holder and the index's "builder"
    prefix: str                                # shard names: PREFIX-SPLIT-NNNNNN.tar
    splits: Sequence[str]                      # split folders it may write
    run_only: Sequence[str] | Callable         # config keys a resumed run may change (or run_only(cfg))
    plan: Callable                             # plan(cfg) -> (units, digest)
    unit: Callable                             # unit(u, run_cfg, out, *unit_args(cfg, out)) -> UnitResult
    counts: Callable[[Counter], dict]          # its headline counts from the by-kind tally
    desc: str = "build"
    usage: str = "--input INPUT --output DIR"  # named when input or output is missing
    check: Callable | None = None              # check(cfg) before the output is locked; may raise
    unit_args: Callable = lambda cfg, out: ()
    place: Callable | None = None              # place(cfg) -> RunPlacement (default: workers on CPU)
    preload: Sequence[str] = ()                # modules every local worker imports at start
    keep_going: bool = False                   # record a failing unit and go on
    fatal: tuple[type[BaseException], ...] = ()  # a unit failing with one of these stops the build
    check_results: Callable | None = None      # check_results(cfg, results, units, out) may raise
    add_stats: Callable | None = None          # add_stats(cfg, results, out, summary) before the summary
    preview: Callable | None = None            # preview(cfg, units, out, store) -> path or None
    rebuild: Callable = lambda cfg: cfg.overwrite  # every shard is built again (not resumed)
    verify: Callable = lambda cfg: False       # a resumed shard's sha256 is checked


@dataclass(frozen=True)
class RunPlacement:
    """Where units run: the config the workers get, GPUs per task, the GPU pool and workers."""

    cfg: object
    gpus_per_task: float = 0.0
    gpus: Sequence[str] | None = None
    workers: int = 0


def run_build(b: Builder, cfg, *, progress: bool = True) -> dict:
    """Check, lock and build ``cfg.output`` (a folder, or a URL: see :mod:`builders.common.remote`);
    returns the summary (also in build_summary.json)."""
    from builders.common.output import check_output_dir, lock_output, remove_killed_temps
    from wds_tools.remote_output import Store, StoreLock, fresh_staging, is_url_output

    if not cfg.input or not cfg.output:
        raise ConfigError(f"both input and output must be set ({b.usage})")
    if is_url_output(cfg.output):
        store = Store(cfg.output)
        store.check_access()  # bad credentials: one line now, not after the first unit's work
        if b.check:
            b.check(cfg)
        with StoreLock(store, tool=b.tool, break_foreign=cfg.break_lock):
            staging = fresh_staging(store.url)
            summary = _build_locked(b, cfg, staging, progress=progress, store=store)
            shutil.rmtree(staging, ignore_errors=True)  # all of it is on the store now
            return summary
    out = check_output_dir(cfg.output)
    if b.check:
        b.check(cfg)
    with lock_output(out, tool=b.tool, break_lock=cfg.break_lock):
        remove_killed_temps(out, b.splits)  # e.g. a dataset.json cut by a kill: no one else writes here
        return _build_locked(b, cfg, out, progress=progress)


def _build_locked(b: Builder, cfg, out: Path, *, progress: bool, store=None) -> dict:
    """The build in ``out``: the output folder, or the staging folder of ``store``."""
    from builders.common import remote

    units, digest = b.plan(cfg)
    if store is not None:
        remote.pull_build_files(store, out)
    check_resumable(cfg, out, run_only=b.run_only(cfg) if callable(b.run_only) else b.run_only)
    check_plan(digest, sum(unit_size(u) for u in units), out, overwrite=cfg.overwrite)
    if store is None:
        prepare_output(units, out, prefix=b.prefix, overwrite=cfg.overwrite)
    else:
        remote.prepare_store(units, store, out, prefix=b.prefix, overwrite=cfg.overwrite)
    save_build_files(cfg, out, digest=digest, units=units)
    unit_fn = b.unit
    if store is not None:
        remote.push_build_files(store, out)
        unit_fn = remote.wrap_unit(b.unit, store.url, rebuild=b.rebuild(cfg), verify=b.verify(cfg))
    start = time.perf_counter()
    place = b.place(cfg) if b.place else RunPlacement(cfg, workers=cfg.workers)
    results, failures = run_with_progress(
        unit_fn, units, place.cfg, str(out), *b.unit_args(cfg, out), executor=cfg.executor,
        workers=place.workers, address=cfg.ray_address, desc=b.desc, progress=progress,
        gpus_per_task=place.gpus_per_task, keep_going=b.keep_going, gpus=place.gpus,
        preload=b.preload)
    fatal = [f for f in failures if isinstance(f.exc, b.fatal)] if b.fatal else []
    if fatal:  # not a unit's bad luck: the input itself is wrong
        raise fatal[0].exc
    if store is not None:
        remote.pull_unit_files(units, store, out)
    if b.check_results:
        try:
            b.check_results(cfg, results, units, out)
        except Exception:
            if store is not None:
                remote.remove_units(units, store, out)
            raise
    summary = write_indexes(out, results, prefix=b.prefix, builder=b.tool,
                            resolved=config_to_dict(cfg), counts=b.counts, require_tar=store is None)
    if b.add_stats:
        b.add_stats(cfg, results, out, summary)
    if b.keep_going:
        record_failures(out, failures, summary)
    summary["resumed_shards"] = sum(r.resumed for r in results)
    write_summary(out, summary)
    shown = b.preview(cfg, units, out, store) if (b.preview and cfg.preview) else None
    if shown is not None:
        summary["preview"] = str(shown) if store is None else store.url_of(PREVIEW_NAME)
    if store is not None:
        remote.push_indexes(store, out, b.splits, failures=b.keep_going)
    summary["seconds"] = round(time.perf_counter() - start, 3)
    summary["rebuilt_shards"] = sum(r.rebuilt for r in results)
    return summary
