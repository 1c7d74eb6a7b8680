"""Real multi-process launches for the tests: ``accelerate launch`` of CPU ranks on gloo."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for a rendezvous that binds to loopback only)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_env(**extra: str) -> dict:
    """The environment of a CPU launch: gloo ranks, one thread each, no hub look-ups."""
    return {**os.environ, "ACCELERATE_USE_CPU": "true", "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1",
            "HF_HUB_OFFLINE": "1", **extra}


def launch_two_ranks(*target: str, timeout: float = 400) -> subprocess.CompletedProcess:
    """``accelerate launch`` of two CPU ranks (gloo) running ``target`` (a script, or -m module).

    ``--cpu --num_processes 2`` starts ONE process in Accelerate 1.15; ``--multi_gpu`` with
    ``ACCELERATE_USE_CPU=true`` starts two."""
    accelerate = Path(sys.executable).with_name("accelerate")
    cmd = [str(accelerate), "launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
           "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(free_port()), *target]
    return subprocess.run(cmd, env=launch_env(), cwd=REPO, capture_output=True, text=True, timeout=timeout)
