"""A pool task that allocates on its worker's device and says which device that is.

Kept apart from the acceptance script so that a worker importing it (the local executor's fork
server preloads the task's module) imports nothing that could touch CUDA before the worker pins
its device: torch is imported inside the task, after ``CUDA_VISIBLE_DEVICES`` is set.
"""
from __future__ import annotations

import os
import time


def probe(unit: int, hold_s: float) -> dict:
    """Allocate about 1 GiB on this worker's device (a small tensor on a CPU), hold it for
    ``hold_s`` seconds so the other workers take the other tasks, and report where it lives."""
    import torch

    info = {"unit": unit, "pid": os.getpid(), "pinned": os.environ.get("CUDA_VISIBLE_DEVICES")}
    if torch.cuda.is_available():
        x = torch.ones(256, 1024, 1024, device="cuda")
        torch.cuda.synchronize()
        dev = torch.cuda.current_device()
        props = torch.cuda.get_device_properties(dev)
        info.update(device_count=torch.cuda.device_count(), current_device=dev, tensor_device=str(x.device),
                    uuid=str(getattr(props, "uuid", "")), name=props.name,
                    allocated_gib=round(torch.cuda.memory_allocated() / 2 ** 30, 2))
    else:
        x = torch.ones(1024, 1024)
        info.update(device_count=0, current_device=None, tensor_device=str(x.device), uuid=None, name="cpu",
                    allocated_gib=round(x.numel() * x.element_size() / 2 ** 30, 4))
    time.sleep(hold_s)
    del x
    return info
