"""Device strings from configs, checked before any work (torch is imported only when needed)."""

from __future__ import annotations


def _cuda_devices() -> str:
    import torch

    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
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
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if (dev.index or 0) >= count:
            raise ValueError(f"{where} {device!r} does not exist: {_cuda_devices()}")
    elif dev.type == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"{where} {device!r} is not available here; {_cuda_devices()}")
    return device
