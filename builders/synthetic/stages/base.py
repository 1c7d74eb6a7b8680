"""What every stage shares: the Skip result, the batched runner, device and dtype choice.

A stage never ends a run because of one image. :func:`run_batched` calls a stage's batch
function and turns per-image trouble into a :class:`Skip` with a reason that can be counted:

- out of memory: the batch is halved and retried once the failed call's tensors are freed (the
  exception and its traceback are dropped first); an image that runs out of memory on its own
  is ``Skip("out of memory")``;
- any other exception: the batch is split in two and each half retried, so the one image that
  makes the model raise is isolated and skipped (``Skip("error: TypeName", detail=message)``)
  while the rest of its batch goes on;
- a result holding NaN or inf (tensors, arrays, floats, nested in lists/tuples/dicts or
  dataclasses) becomes ``Skip("non-finite output")``.
"""
from __future__ import annotations

import dataclasses
import gc
import logging
import math
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

OUT_OF_MEMORY = "out of memory"
NON_FINITE = "non-finite output"


@dataclass(frozen=True)
class Skip:
    """One image's result when a stage could not produce one; ``reason`` is what gets counted."""

    reason: str
    detail: str = ""


def is_skip(x: Any) -> bool:
    """True for a :class:`Skip` result."""
    return isinstance(x, Skip)


def is_out_of_memory(exc: BaseException) -> bool:
    """True for CUDA/CPU/MPS allocator failures (torch raises them as RuntimeError subclasses)."""
    try:
        import torch

        if isinstance(exc, torch.cuda.OutOfMemoryError):
            return True
    except ImportError:  # pragma: no cover - torch is a dependency of every stage
        pass
    if not isinstance(exc, (RuntimeError, MemoryError)):
        return False
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or "out of memory" in text or "can't allocate memory" in text


def has_non_finite(x: Any, _depth: int = 0) -> bool:
    """True when ``x`` holds a NaN or inf anywhere a stage result can keep numbers."""
    if _depth > 6 or x is None or isinstance(x, (str, bytes, bool, int)):
        return False
    if isinstance(x, float):
        return not math.isfinite(x)
    mod = type(x).__module__
    if mod.startswith("torch") and hasattr(x, "is_floating_point"):
        return bool(x.is_floating_point() and not x.isfinite().all())
    if mod.startswith("numpy") and hasattr(x, "dtype"):
        import numpy as np

        return bool(np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all())
    if isinstance(x, dict):
        return any(has_non_finite(v, _depth + 1) for v in x.values())
    if isinstance(x, (list, tuple)):
        return any(has_non_finite(v, _depth + 1) for v in x)
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return any(has_non_finite(getattr(x, f.name), _depth + 1) for f in dataclasses.fields(x))
    return False


def free_memory() -> None:
    """Collect garbage and return cached CUDA blocks (after an unload or an out-of-memory)."""
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except ImportError:  # pragma: no cover
        pass


def run_batched(fn: Callable[[list], Sequence], items: Sequence, batch_size: int) -> list:
    """``fn`` over ``items`` in batches of ``batch_size``; one result or :class:`Skip` per item.

    ``fn`` takes a list and returns a list of the same length (it may itself return a Skip for
    an item). Results keep the order of ``items``. After an out-of-memory the rest of the items
    run at the halved batch size (the same size would only fail again).
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    items = list(items)
    state = {"size": batch_size}
    out: list = []
    while len(out) < len(items):
        out += _run_one(fn, items[len(out):len(out) + state["size"]], state)
    return out


@dataclass(frozen=True)
class _Failure:
    """What a retry needs to know about a failed batch call: never the exception itself, whose
    traceback would keep the failed forward's tensors alive through every smaller retry."""

    oom: bool
    name: str
    message: str


def _call(fn: Callable[[list], Sequence], batch: list) -> list | _Failure:
    """``fn(batch)`` as a list, or a :class:`_Failure` once the exception is gone."""
    try:
        return list(fn(batch))
    except Exception as exc:  # noqa: BLE001 - every failure becomes a counted skip, never the run's end
        # Drop the locals of the frames that raised even if something else still holds the
        # exception (its __context__ in a later error, a debugger); this frame is skipped.
        traceback.clear_frames(exc.__traceback__)
        return _Failure(is_out_of_memory(exc), type(exc).__name__, str(exc)[:500])


def _run_one(fn: Callable[[list], Sequence], batch: list, state: dict) -> list:
    results = _call(fn, batch)
    if isinstance(results, _Failure):
        # Out of the except block: the exception and its frames are unreferenced now, so the
        # collection below really returns the failed batch's memory before the retry.
        if results.oom:
            free_memory()
        return _retry_split(fn, batch, results, state)
    if len(results) != len(batch):
        raise ValueError(f"stage returned {len(results)} results for a batch of {len(batch)}")
    return [Skip(NON_FINITE) if not is_skip(r) and has_non_finite(r) else r for r in results]


def _retry_split(fn: Callable[[list], Sequence], batch: list, failure: _Failure, state: dict) -> list:
    oom = failure.oom
    if len(batch) == 1:
        if oom:
            log.warning("out of memory on a single item: skipped")
            return [Skip(OUT_OF_MEMORY)]
        log.warning("stage failed on one item: %s: %s", failure.name, failure.message)
        return [Skip(f"error: {failure.name}", detail=failure.message)]
    step = (len(batch) + 1) // 2
    if oom:
        state["size"] = step = min(state["size"], step)
        log.warning("out of memory on a batch of %d: retrying in batches of %d", len(batch), step)
    out: list = []
    while len(out) < len(batch):
        # After an OOM elsewhere in this batch, later chunks shrink with state["size"] too.
        out += _run_one(fn, batch[len(out):len(out) + (min(step, state["size"]) if oom else step)], state)
    return out


def resolve_file(path: str) -> str:
    """A local file for ``path``: as given, or fetched from ``hf-hub:org/repo/file``."""
    from pathlib import Path

    if path.startswith("hf-hub:"):
        parts = path[len("hf-hub:"):].split("/")
        if len(parts) < 3:
            raise ValueError(f"hub file must be 'hf-hub:<org>/<repo>/<file>', got {path!r}")
        from huggingface_hub import hf_hub_download

        try:
            return hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]))
        except Exception as e:  # noqa: BLE001 - offline, missing repo/file, auth: one clear message
            raise ValueError(f"cannot fetch {path!r} ({type(e).__name__}); give a local file instead") from e
    if not Path(path).is_file():
        raise ValueError(f"weights file not found: {path!r} (give a local file or hf-hub:org/repo/file)")
    return path


def pick_device(device: str = "auto"):
    """``auto`` -> ``cuda`` when available, else ``cpu``; anything else as given."""
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(device, dtype: str = "auto"):
    """``auto`` -> bfloat16 on CUDA, float32 elsewhere (CPU bf16 kernels are slow or missing)."""
    import torch

    if dtype == "auto":
        return torch.bfloat16 if torch.device(device).type == "cuda" else torch.float32
    if dtype not in ("bfloat16", "float16", "float32"):
        raise ValueError(f"dtype must be auto, bfloat16, float16 or float32, got {dtype!r}")
    return getattr(torch, dtype)


def autocast(device, dtype):
    """bf16/fp16 autocast on CUDA for models kept in fp32 (their own fp32 maths stays fp32);
    a no-op context on CPU or for fp32."""
    import torch

    device = torch.device(device)
    if device.type == "cuda" and dtype != torch.float32:
        return torch.autocast("cuda", dtype=dtype)
    return torch.autocast(device.type, enabled=False)


class Stage:
    """The one shape of a stage: ``Stage(cfg, device=...)``, ``load()``, ``stage(items)``, ``unload()``.

    Subclasses set :meth:`_load` (build models, once per worker) and :meth:`_batch` (one batch
    of items -> one result or Skip each). Calling a stage loads it first if needed. Also a
    context manager that unloads on exit.
    """

    _model_attrs: tuple[str, ...] = ("model",)  # what unload() drops

    def __init__(self, cfg, *, device: str = "auto"):
        validate = getattr(cfg, "validate", None)
        if validate is not None:
            validate()
        self.cfg = cfg
        self.device = pick_device(device)
        self.dtype = pick_dtype(self.device, getattr(cfg, "dtype", "auto"))
        self.loaded = False
        for name in self._model_attrs:
            setattr(self, name, None)

    def load(self) -> Stage:
        """Build the models (idempotent)."""
        if not self.loaded:
            self._load()
            self.loaded = True
        return self

    def unload(self) -> None:
        """Drop the models and free their memory."""
        self._unload()
        self.loaded = False
        free_memory()

    def __call__(self, items: Sequence) -> list:
        self.load()
        return run_batched(self._batch, items, self.cfg.batch_size)

    def __enter__(self) -> Stage:
        return self.load()

    def __exit__(self, *exc) -> None:
        self.unload()

    def _load(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _unload(self) -> None:
        for name in self._model_attrs:
            setattr(self, name, None)

    def _batch(self, batch: list) -> list:  # pragma: no cover - abstract
        raise NotImplementedError
