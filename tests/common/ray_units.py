"""Unit functions the Ray cluster tests send to the nodes (importable there, by module name).

Each takes a folder the test owns (``here``) where it leaves marks the test reads back: which
unit started where, how often a unit was attempted.
"""
from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path

DOOMED = "doomed_node"  # holds the id of the node the test will remove
STALL_S = 300.0


def _node_id() -> str:
    import ray

    return ray.get_runtime_context().get_node_id()


def _doomed(here: Path) -> bool:
    doomed = here / DOOMED
    return doomed.exists() and doomed.read_text() == _node_id()


def _stall(here: Path, name: str):
    """Mark unit ``name`` as started here (``stalled-NAME``: node id and pid) and wait to be
    removed with the node."""
    (here / f"stalled-{name}").write_text(json.dumps({"node": _node_id(), "pid": os.getpid()}))
    time.sleep(STALL_S)
    raise RuntimeError(f"node {_node_id()} was not removed within {STALL_S} s")


def stall_on_doomed_node(here: str, unit, cfg, output: str):
    """The real builder's unit, except on the doomed node: there it marks the unit as started
    and waits, so the node is removed while the unit is in flight."""
    from builders.real.unit import build_unit

    if _doomed(Path(here)):
        _stall(Path(here), unit.name)
    return build_unit(unit, cfg, output)


LEFTOVER_KEY = "left-by-a-removed-node"


def half_stage_on_doomed_node(here: str, unit, cfg, output: str):
    """The real builder's unit, except on the doomed node: there it leaves in its staging folder
    what a node killed before its upload could leave, then waits to be removed. The leftovers
    look finished but are not this unit's shard: a tar with its own consistent stats (one sample
    ``LEFTOVER_KEY``) under the final name, and half a temporary file."""
    from builders.real.unit import build_unit
    from wds_tools.writer import write_shard

    if not _doomed(Path(here)):
        return build_unit(unit, cfg, output)
    shard = Path(unit.path(output))
    write_shard(shard, [{"__key__": LEFTOVER_KEY, "txt": b"not this unit's shard"}])
    shard.with_name(f"{shard.name}.tmp-{os.getpid()}-halfdone").write_bytes(shard.read_bytes()[:700])
    _stall(Path(here), unit.name)


def environ_of(names: list[str]) -> dict[str, str | None]:
    """The values of environment variables ``names`` in the worker that runs this task."""
    return {n: os.environ.get(n) for n in names}


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
