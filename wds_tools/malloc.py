"""Keep glibc's allocator from handing image-sized buffers back to the kernel after every sample.

Pipelines here allocate and free a few megabytes per image (decoded pixels, float copies, masks).
glibc serves blocks over ``M_MMAP_THRESHOLD`` (128 KiB at start) with fresh ``mmap`` pages and
trims freed heap tops back to the kernel, so every image pays for new zeroed pages: page faults
that cost a fresh worker process 10-15% more CPU per image than a warm one (measured on the real
builder, see benchmarks/bench_real_builder.py). Raising both thresholds keeps the freed memory
in the process for the next image. Each process keeps up to ``trim_threshold`` of free memory.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MAX_MMAP_THRESHOLD = 32 << 20  # glibc refuses larger values on 64-bit systems

_done: bool | None = None


def keep_freed_memory(*, mmap_threshold: int = MAX_MMAP_THRESHOLD, trim_threshold: int = 256 << 20) -> bool:
    """Raise glibc's mmap and trim thresholds for this process; False where there is no glibc.

    Idempotent and cheap, so each worker calls it on start (and again harmlessly per task).
    """
    global _done
    if _done is not None:
        return _done
    if not 0 < mmap_threshold <= MAX_MMAP_THRESHOLD:
        raise ValueError(f"mmap_threshold must be in (0, {MAX_MMAP_THRESHOLD}], got {mmap_threshold}")
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
        gnu = libc.gnu_get_libc_version  # musl and others lack it; their mallopt differs
    except (OSError, AttributeError):
        _done = False
        return False
    del gnu
    _done = bool(mallopt(M_MMAP_THRESHOLD, mmap_threshold)) and bool(mallopt(M_TRIM_THRESHOLD, trim_threshold))
    if not _done:
        log.debug("mallopt refused the thresholds; allocator left as it was")
    return _done
