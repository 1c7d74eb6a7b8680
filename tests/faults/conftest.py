"""Fault tests: hostile inputs and kill -9 at chosen points, each followed by a rerun."""

from __future__ import annotations

import os
import time


def processes_left(pgid: int, *, timeout: float = 15.0) -> list[int]:
    """Pids still in process group ``pgid`` after waiting up to ``timeout`` s for it to empty."""
    deadline = time.monotonic() + timeout
    while True:
        left = []
        for name in os.listdir("/proc"):
            if name.isdigit():
                try:
                    stat = open(f"/proc/{name}/stat").read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                if int(stat[2]) == pgid and stat[0] not in ("Z", "X"):
                    left.append(int(name))
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.2)
