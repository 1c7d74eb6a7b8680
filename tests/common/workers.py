"""Unit functions that builder worker processes run in tests: importable by name from a child
process (a pool pickles them by reference), so they live outside the test modules."""

from __future__ import annotations

import os
import time
from pathlib import Path


def pinned_cuda_check(unit: int, rendezvous: str) -> tuple[int, str | None]:
    """A unit as a stage runs it: torch asks for CUDA (device=auto). Each worker takes one unit
    and waits for the other, so both workers run one."""
    import torch

    torch.cuda.is_available()
    d = Path(rendezvous)
    (d / str(os.getpid())).touch()
    deadline = time.monotonic() + 120
    while len(list(d.iterdir())) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
    return os.getpid(), os.environ.get("CUDA_VISIBLE_DEVICES")


def loaded(module: str) -> bool:
    """Whether ``module`` is imported in this (worker) process."""
    import sys

    return module in sys.modules
