"""One filter run per shard folder at a time, and the leftovers of killed runs.

``guard_outputs(urls, report_dir=..., break_lock=...)`` takes the lock ``quality.lock`` of every
local folder that holds input shards (the filter writes sidecars there) and of the report folder,
then removes the temp files killed runs left there (``X.quality.tar.tmp-PID-*`` of dead pids).
Shards on an object store are not locked: object stores have no atomic create, and their sidecars
are uploaded whole, so a concurrent run there can only overwrite a sidecar with an equal one.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from wds_tools.lock import OutputLock, remove_stale_temps
from wds_tools.urls import is_remote

LOCK_NAME = "quality.lock"


def _local_dir(url: str) -> Path | None:
    if url.startswith("file://"):
        url = url[len("file://"):]
    if is_remote(url) or url.startswith("pipe:"):
        return None
    return Path(url).resolve().parent


@contextlib.contextmanager
def guard_outputs(urls: Sequence[str], *, report_dir: str | Path | None, break_lock: bool = False) -> Iterator[None]:
    """Hold the locks of the shard folders of ``urls`` and of ``report_dir`` while the body runs."""
    dirs = {d for d in map(_local_dir, urls) if d is not None}
    report = Path(report_dir).resolve() if report_dir else None
    with contextlib.ExitStack() as stack:
        for d in sorted(dirs | ({report} if report else set())):
            stack.enter_context(OutputLock(d / LOCK_NAME, tool="builders.quality", break_foreign=break_lock))
        for d in sorted(dirs):
            remove_stale_temps(d, contains=".quality.tar.tmp-")
        if report is not None:
            remove_stale_temps(report, name_prefix="quality_")
        yield
