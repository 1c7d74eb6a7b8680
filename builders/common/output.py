"""Output-folder guards shared by the builders: lock, folder checks, finished-shard checks.

- ``lock_output(out, tool=..., break_lock=...)``: one build per output folder at a time (the lock
  file ``OUT/build.lock`` names its holder; see ``wds_tools.lock``).
- ``remove_killed_temps(out)``: temp files of killed writers (index, summary, plan; shards are
  handled by the builders' own output preparation) in ``out`` and its split folders.
- ``check_output_dir(out)``: an output path that is a file is a clear error, not a traceback.
- ``finished_shard(shard, verify=...)``: a shard left by an earlier run counts as finished only
  when its size (and, with ``verify``, its sha256) matches its stats file; a truncated or edited
  one is removed with its sidecars, and rebuilt.
- ``refuse_empty_build(results, units, out, ...)``: a build in which every input failed is an
  error naming the likely cause, and leaves no empty shard a rerun would keep as finished.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

from wds_tools.lock import OutputLock, remove_stale_temps
from wds_tools.manifest import stats_path
from wds_tools.urls import local_output
from wds_tools.writer import is_shard_complete, remove_sidecars, shard_problem

log = logging.getLogger(__name__)
LOCK_NAME = "build.lock"


class NothingWritten(ValueError):
    """A build ended without writing a single sample."""


def check_output_dir(out: str | Path) -> Path:
    """``out`` as a Path; ValueError when it is a URL, or it or a folder above it is a file."""
    out = local_output(out, "output")
    for p in (out, *out.parents):
        if p.exists():
            if not p.is_dir():
                what = "the output" if p == out else f"a folder above the output {out}"
                raise ValueError(f"{p} is {what} but it is a file; give a folder path")
            break
    return out


def lock_output(out: str | Path, *, tool: str, break_lock: bool = False) -> OutputLock:
    """The (not yet taken) exclusive lock of builder output folder ``out``."""
    return OutputLock(Path(out) / LOCK_NAME, tool=tool, break_foreign=break_lock)


def remove_killed_temps(out: Path, splits: Sequence[str] = ("train", "val", "test")) -> None:
    """Delete ``*.tmp-PID-*`` files of dead pids in ``out`` and its split folders (lock held)."""
    for d in (out, *(out / s for s in splits)):
        remove_stale_temps(d)


def finished_shard(shard: Path, *, verify: bool = False) -> bool:
    """True when ``shard`` and its stats exist and agree; a mismatching pair is removed, logged."""
    if not is_shard_complete(shard):
        return False
    problem = shard_problem(shard, verify=verify)
    if problem is None:
        return True
    log.warning("rebuilding %s: %s", shard, problem)
    # stats first: a kill between the removals must not leave stats beside a missing tar; the
    # sidecars (verdicts of the old bytes) before the tar, which is what says they may exist
    stats_path(shard).unlink(missing_ok=True)
    remove_sidecars(shard)
    shard.unlink(missing_ok=True)
    return False


def nothing_written_hint(items: Iterable, *, image_root: str = "", source: str = "") -> str:
    """Where the first input image was looked for, when it is not there (else '')."""
    for it in items:
        if not os.path.exists(it.path):
            p = Path(it.path)
            root = image_root or (str(Path(source).parent) if source and not Path(source).is_dir() else source)
            hint = f"the first missing image is {p}, resolved against {root or p.parent}"
            if not image_root and source and not Path(source).is_dir():
                hint += (" (the caption file's folder: set image_root=DIR or --image-root DIR if the images "
                         "are elsewhere)")
            return hint
    return ""


def _skips_path(shard: Path) -> Path:
    return shard.with_name(shard.name[: -len(".tar")] + ".skips.json")


def refuse_empty_build(results: Sequence, units: Sequence, out: Path, *, image_root: str = "",
                       source: str = "", build_files: Sequence[str] = ()) -> None:
    """NothingWritten when no unit wrote a sample: the skip counts and the likely cause.

    ``results`` carry ``samples`` and ``skips``; ``units`` carry ``items`` of ``(key, item)`` with
    ``item.path`` and ``path(out)``. The empty shards (and ``build_files`` in ``out``) are removed
    first: they would count as finished, and the rerun after the fix would keep them.
    """
    if any(r.samples for r in results):
        return
    skips: Counter = Counter()
    for r in results:
        skips.update(r.skips)
    counts = ", ".join(f"{k}: {v}" for k, v in sorted(skips.items())) or "no skips recorded"
    items = [it for u in units for _, it in u.items]
    hint = nothing_written_hint(items, image_root=image_root, source=source)
    for u in units:
        shard = u.path(out)
        for p in (stats_path(shard), _skips_path(shard), shard):
            p.unlink(missing_ok=True)
    for name in build_files:
        (out / name).unlink(missing_ok=True)
    raise NothingWritten(f"no sample was written to {out}: every one of the {len(items)} input images "
                         f"failed ({counts})" + (f"; {hint}" if hint else "")
                         + "; nothing was kept, rerun once the input is fixed")
