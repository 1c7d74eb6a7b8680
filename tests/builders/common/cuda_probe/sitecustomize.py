"""Test probe (put this folder first on PYTHONPATH of a test's subprocess): when CUDA_PROBE_LOG
names a file, every call of the CUDA runtime's device count (``torch._C._cuda_getDeviceCount``,
which ``torch.cuda.is_available()`` calls and which initialises the CUDA driver) appends one JSON
line {"pid", "visible": CUDA_VISIBLE_DEVICES at that moment} to that file.

Python imports ``sitecustomize`` when every interpreter starts, so spawned workers and fork
servers carry the probe too, and forked children inherit it.
"""
from __future__ import annotations

import importlib.abc
import importlib.util
import json
import os
import sys

LOG = os.environ.get("CUDA_PROBE_LOG")


def _record() -> None:
    line = json.dumps({"pid": os.getpid(), "visible": os.environ.get("CUDA_VISIBLE_DEVICES")})
    fd = os.open(LOG, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def _patch(module) -> None:
    real = getattr(module, "_cuda_getDeviceCount", None)
    if real is None:  # a CPU-only torch build: it never calls the runtime
        return

    def device_count_probe() -> int:
        _record()
        return real()

    module._cuda_getDeviceCount = device_count_probe


class _PatchTorchC(importlib.abc.MetaPathFinder):
    """Wrap torch._C's device count as soon as torch loads it, before anything can call it."""

    def find_spec(self, name, path, target=None):
        if name != "torch._C":
            return None
        sys.meta_path.remove(self)  # once per process; lets the real finders answer
        spec = importlib.util.find_spec(name)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def exec_and_patch(module) -> None:
            exec_module(module)
            _patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


if LOG:
    sys.meta_path.insert(0, _PatchTorchC())
