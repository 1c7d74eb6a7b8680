"""Which GPUs a build uses, decided without touching CUDA in the builder's own process.

The builder never calls into the CUDA runtime: ``torch.cuda.is_available()`` alone calls
``cudaGetDeviceCount``, which initialises the driver and fixes the device list of the calling
process (and of anything forked from it). GPUs are counted with NVML, the driver's management
library that nvidia-smi reads, and the ``nvidia-smi`` command when NVML cannot be loaded. Models
run in workers, each pinned to one GPU (see :mod:`builders.common.executors`).
"""
from __future__ import annotations

import ctypes
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)


def _nvml_count() -> int | None:
    """GPUs NVML sees, or None when the library is missing or does not start (no driver)."""
    try:
        lib = ctypes.CDLL("libnvidia-ml.so.1")
    except OSError:
        return None
    if lib.nvmlInit_v2() != 0:
        return None
    try:
        n = ctypes.c_uint(0)
        return n.value if lib.nvmlDeviceGetCount_v2(ctypes.byref(n)) == 0 else None
    finally:
        lib.nvmlShutdown()


def _smi_count() -> int | None:
    """GPUs ``nvidia-smi -L`` lists, or None when it is missing or fails."""
    exe = shutil.which("nvidia-smi")
    if exe is None:
        return None
    try:
        out = subprocess.run([exe, "-L"], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return None
    return sum(line.startswith("GPU ") for line in out.stdout.splitlines())


def gpu_count() -> int:
    """NVIDIA GPUs on this machine (0 without a driver), counted without the CUDA runtime."""
    for count in (_nvml_count, _smi_count):
        n = count()
        if n is not None:
            return n
    return 0


def visible_gpus() -> list[str]:
    """GPU ids this process may hand to workers: CUDA_VISIBLE_DEVICES, else every GPU found."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    return [str(i) for i in range(gpu_count())]


def wants_cuda(device: str) -> bool:
    """``auto``, ``cuda`` and ``cuda:N`` may run on a GPU; ``cpu`` (and ``mps``) never do."""
    return device == "auto" or device.split(":")[0] == "cuda"


def gpus_per_task(device: str, requested: float, *, executor: str, ray_address: str = "",
                  gpus: Sequence[str] | None = None) -> float:
    """GPUs a unit asks for: none on a CPU device or a machine without GPUs (a Ray task asking
    for a GPU no node has would wait forever), unless joining a cluster that may have them.

    ``gpus``: the GPU ids found here (default :func:`visible_gpus`).
    """
    if not wants_cuda(device) or requested == 0:
        return 0.0
    if executor == "ray" and (ray_address or os.environ.get("RAY_ADDRESS")):
        return requested
    found = visible_gpus() if gpus is None else gpus
    return requested if found else 0.0


@dataclass(frozen=True)
class Placement:
    """Where one model's workers run: what the workers are told, and the pool that runs them."""

    device: str                   # the device the workers use (in a pinned worker, "cuda" and
                                  # "auto" mean its one GPU)
    gpus_per_task: float          # 0: a CPU pool
    gpus: list[str] | None        # the local pool's GPU ids; None: the executor's own choice
    workers: int                  # the workers setting to run with


def place_model(device: str, *, workers: int, executor: str, ray_address: str = "",
                gpus: Sequence[str] | None = None, what: str = "model") -> Placement:
    """Place a model that every worker loads: with CUDA, one worker per GPU, each pinned to its
    own; ``cuda:N`` uses GPU N only; ``auto`` with no GPU found runs on the CPU.

    ``gpus``: the GPU ids found here (default :func:`visible_gpus`); ``what`` names the model
    in the log line that says where it runs.
    """
    if not wants_cuda(device):
        return Placement(device, 0.0, None, workers)
    found = visible_gpus() if gpus is None else list(gpus)
    share = gpus_per_task(device, 1.0, executor=executor, ray_address=ray_address, gpus=found)
    if not share and device == "auto":
        log.info("%s on the CPU: no GPU found (NVML, nvidia-smi, CUDA_VISIBLE_DEVICES)", what)
        return Placement("cpu", 0.0, None, workers)
    if not share:  # named CUDA, though none is visible without the runtime: one model copy only
        log.warning("%s on %s, but no GPU was found without the CUDA runtime: one worker, so "
                    "one copy of the model", what, device)
        return Placement(device, 0.0, None, 1)
    pinned = "auto" if device == "auto" else "cuda"  # cuda:N does not exist in a pinned worker
    if executor != "local":
        log.info("%s on CUDA: each task asks for one GPU and is pinned to it", what)
        return Placement(pinned, share, None, workers)
    index = re.fullmatch(r"cuda:(\d+)", device)
    if index:
        n = int(index.group(1))
        if n >= len(found):
            raise ValueError(f"{what} device {device!r} does not exist: GPUs found here: {found}")
        found = found[n:n + 1]
    pool = found[:workers] if workers > 0 else found
    log.info("%s on CUDA: one worker per GPU (%d: CUDA_VISIBLE_DEVICES=%s), each pinned to its own",
             what, len(pool), ",".join(pool))
    return Placement(pinned, share, pool, workers)
