"""Device and precision choices: device strings from configs checked before any work, and the
autocast of inference (quality filter, evaluation). torch is imported only when needed, so
configs can check a device without it for ``auto`` and ``cpu``."""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

from clip_models.config import PRECISIONS

if TYPE_CHECKING:
    import torch


def _cuda_count() -> int:
    """CUDA devices here. ``torch.cuda.device_count()`` asks NVML first, where
    ``is_available()`` initialises the CUDA runtime in this process (a builder's process hands
    GPUs to its workers and must not fix its own device list)."""
    import torch

    return torch.cuda.device_count()


def _cuda_devices() -> str:
    n = _cuda_count()
    if not n:
        return "this machine has no CUDA device (use auto or cpu)"
    names = ", ".join(f"cuda:{i}" for i in range(n))
    return f"this machine has {n} CUDA device{'s' if n > 1 else ''} ({names})"


def check_device(device: str, *, where: str = "device") -> str:
    """Return ``device`` if it names a device that exists here, else raise ``ValueError``.

    ``auto`` and ``cpu`` are always valid; ``cuda`` / ``cuda:N`` need that CUDA device, ``mps``
    needs Apple's backend. The message names the bad value and the devices that do exist.
    """
    if device in ("auto", "cpu"):
        return device
    import torch

    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"{where} {device!r} is not a device: give auto, cpu, cuda or cuda:N; "
                         f"{_cuda_devices()}") from e
    if dev.type == "cuda":
        count = _cuda_count()
        if (dev.index or 0) >= count:
            raise ValueError(f"{where} {device!r} does not exist: {_cuda_devices()}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{where} {device!r} is not available here; {_cuda_devices()}")
    return device


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; ``ValueError`` for a
    device that does not exist here."""
    import torch

    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(check_device(device, where="model.device"))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``None`` = plain fp32); ``auto`` is bf16 on CUDA only."""
    import torch

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(precision: str, device: torch.device) -> contextlib.AbstractContextManager:
    """An autocast context for ``precision`` on ``device`` (a no-op for fp32)."""
    import torch

    dtype = autocast_dtype(precision, device)
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)
