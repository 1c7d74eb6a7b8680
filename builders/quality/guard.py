"""One filter run per shard folder at a time, and the leftovers of killed runs.

``guard_outputs(urls, report_dir=..., break_lock=...)`` takes the lock ``quality.lock`` of every
local folder that holds input shards (the filter writes sidecars there) and of the report folder,
then removes the temp files killed runs left there (``X.quality.tar.tmp-PID-*`` and
``selection.json.tmp-PID-*`` of dead pids).
Shards whose builder still runs (its ``build.lock`` is live) are refused.
Shards on an object store are not locked: object stores have no atomic create, and their sidecars
are uploaded whole, so a concurrent run there can only overwrite a sidecar with an equal one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from builders.common.output import LOCK_NAME as BUILD_LOCK
from builders.common.output import check_output_dir
from wds_tools.lock import LockHeld, OutputLock, describe_holder, live_holder, remove_stale_temps
from wds_tools.quality_record import SELECTION_NAME
from wds_tools.urls import is_remote

LOCK_NAME = "quality.lock"


def _local_dir(url: str) -> Path | None:
    if url.startswith("file://"):
        url = url[len("file://"):]
    if is_remote(url) or url.startswith("pipe:"):
        return None
    return Path(url).resolve().parent


def check_not_building(shard_dir: Path) -> None:
    """LockHeld when a builder still writes the shards of ``shard_dir`` (its lock is in that
    folder or, for a split folder, in the one above)."""
    for path in (shard_dir / BUILD_LOCK, shard_dir.parent / BUILD_LOCK):
        holder = live_holder(path)
        if holder:
            raise LockHeld(f"the shards in {shard_dir} are still being written by {describe_holder(holder)} "
                           f"(lock file {path}); score them once that build has finished", holder)


@contextlib.contextmanager
def guard_outputs(urls: Sequence[str], *, report_dir: str | Path | None, break_lock: bool = False) -> Iterator[None]:
    """Hold the locks of the shard folders of ``urls`` and of ``report_dir`` while the body runs."""
    dirs = {d for d in map(_local_dir, urls) if d is not None}
    for d in sorted(dirs):
        check_not_building(d)
    report = check_output_dir(report_dir).resolve() if report_dir else None
    with contextlib.ExitStack() as stack:
        for d in sorted(dirs | ({report} if report else set())):
            stack.enter_context(OutputLock(d / LOCK_NAME, tool="builders.quality", break_foreign=break_lock))
        for d in sorted(dirs):
            remove_stale_temps(d, contains=".quality.tar.tmp-")
            remove_stale_temps(d, name_prefix=f"{SELECTION_NAME}.tmp-")
        if report is not None:
            remove_stale_temps(report, name_prefix="quality_")
            remove_stale_temps(report, name_prefix=f"{SELECTION_NAME}.tmp-")
        yield
