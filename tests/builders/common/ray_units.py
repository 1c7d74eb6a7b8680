"""Unit functions the Ray cluster tests send to the nodes (importable there, by module name).

Each takes a folder the test owns (``here``) where it leaves marks the test reads back: which
unit started where, how often a unit was attempted.
"""
from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

DOOMED = "doomed_node"  # holds the id of the node the test will remove
STALL_S = 300.0


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def stall_on_doomed_node(unit, cfg, output: str):
    """The real builder's unit, except on the doomed node: there it marks the unit as started
    (``stalled-NAME``) and waits, so the node is removed while the unit is in flight."""
    from builders.real.unit import build_unit

    here = Path(output).parent
    doomed = here / DOOMED
    if doomed.exists() and doomed.read_text() == _node_id():
        (here / f"stalled-{unit.name}").write_text(_node_id())
        time.sleep(STALL_S)
        raise RuntimeError(f"node {_node_id()} was not removed within {STALL_S} s")
    return build_unit(unit, cfg, output)


def node_of(name: str) -> str:
    """The id of the Ray node this unit ran on."""
    return _node_id()


def attempts(here: Path, name: str) -> int:
    """How many times :func:`fail_or_crash` started on ``name``."""
    return len(list(Path(here).glob(f"attempt-{name}-*")))


def fail_or_crash(name: str, here: str) -> str:
    """Counts its attempts; ``raise`` raises, ``crash`` ends its worker process, others return."""
    (Path(here) / f"attempt-{name}-{uuid.uuid4().hex}").touch()
    if name == "raise":
        raise ValueError("unit raise is broken")
    if name == "crash":
        os._exit(1)  # as a worker killed for memory would: no exception reaches Ray
    return name
