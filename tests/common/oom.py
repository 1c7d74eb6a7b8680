"""A stand-in for CUDA running out of memory, for tests of the batch-halving retry."""

from __future__ import annotations

import torch


class FakeOOM:
    """Wraps a batch function: raises CUDA's OOM error for batches above ``limit`` items, or for
    any batch holding a ``hog`` item (an image too large even on its own)."""

    def __init__(self, fn, *, limit: int, hog=None):
        self.fn, self.limit, self.hog, self.sizes = fn, limit, hog, []

    def __call__(self, batch):
        self.sizes.append(len(batch))
        if len(batch) > self.limit or (self.hog is not None and self.hog in batch):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.fn(batch)
