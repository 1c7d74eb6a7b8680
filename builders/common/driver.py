"""The build driver both shard builders share: resume checks, output preparation, plan digest,
units on workers with progress, per-split indexes and the build summary.

A builder plans its input into units (anything with ``name``, ``split``, ``items`` and
``path(out)``), then calls, in order: :func:`check_resumable` (refuse a changed recipe),
:func:`check_plan` (refuse a changed input), :func:`prepare_output` (drop a killed writer's temp
files, refuse foreign shards), :func:`save_build_files`, :func:`run_with_progress` and
:func:`write_indexes`. A finished shard (tar + stats) is kept on rerun; ``overwrite`` rebuilds.
"""
from __future__ import annotations

import json
import logging
import re
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
RUN_ONLY = ("overwrite", "executor", "workers", "ray_address", "output")


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


def prepare_output(units: Sequence, out: Path, *, prefix: str, overwrite: bool) -> None:
    """Remove temp leftovers; with overwrite, remove old shards, their sidecars (quality verdicts
    of the old pixels) and the split's ``selection.json``; refuse foreign stale shards.

    A shard rebuilt without overwrite drops its own sidecars when it is written
    (``wds_tools.writer``)."""
    own = re.compile(rf"^{re.escape(prefix)}-(train|val|test)-\d{{6}}\.(tar|stats\.json|skips\.json)$")
    sidecar = re.compile(rf"^{re.escape(prefix)}-(train|val|test)-\d{{6}}\.[^.]+\.tar$")
    planned = {u.path(out).name for u in units}
    stale = []
    for split in SPLITS:
        d = out / split
        if not d.is_dir():
            continue
        for p in d.iterdir():
            if ".tmp-" in p.name and p.name.startswith(f"{prefix}-"):
                p.unlink()  # a killed writer's temp file: never a finished shard
            elif own.match(p.name):
                tar_name = p.name.split(".", 1)[0] + ".tar"
                if overwrite:
                    p.unlink()
                elif tar_name not in planned:
                    stale.append(p.name)
            elif overwrite and (sidecar.match(p.name) or p.name == SELECTION_NAME):
                p.unlink()
                log.info("removed %s: it describes the shards --overwrite rebuilds", p)
    if stale:
        raise ValueError(f"{out} holds shards this input does not produce ({sorted(stale)[:5]}...); "
                         f"rerun with --overwrite to rebuild the folder")


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
        failures.append(UnitFailure(unit.name, f"{type(exc).__name__}: {exc}"))
        bar.update(unit_size(unit))

    try:
        run_units(fn, units, *args, executor=executor, workers=workers, address=address,
                  on_done=done, on_error=failed if keep_going else None,
                  gpus_per_task=gpus_per_task, preload=preload, gpus=gpus)
    finally:
        bar.close()
    return sorted(results, key=lambda r: r.name), sorted(failures, key=lambda f: f.name)


def write_indexes(out: Path, results: list[UnitResult], *, prefix: str, builder: str,
                  resolved: dict, counts: Callable[[Counter], dict]) -> dict:
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
        manifest = write_index(out / split, name=f"{prefix}-{split}", extra=extra)
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
