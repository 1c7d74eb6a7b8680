"""A Ray cluster of two nodes on loopback for the cluster tests (``ray.cluster_utils.Cluster``: a
head and a worker node, one CPU each, one process tree), and the means to remove a node while a
unit runs on it.

The nodes' processes (raylets, hence their workers) start with this process's environment at the
moment the cluster starts: a test that needs variables on the workers (the S3 server's endpoint
and credentials) sets them first, as ``ray start`` on a real node would have them.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Ray rewrites 127.0.0.1 in an address to this machine's routed IP (so a driver would look for the
# cluster there); any other loopback address it keeps.
LOOPBACK = "127.0.0.2"
NODE = {"num_cpus": 1, "node_ip_address": LOOPBACK, "object_store_memory": 80 * 1024**2}
# A lost node is declared dead after about 3 s instead of Ray's default of about 30 s.
FAST_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
              "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}


@contextlib.contextmanager
def loopback_cluster() -> Iterator:
    """(cluster, worker node): a head and one worker node, one CPU each; this process is
    connected as the driver."""
    import ray
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, head_node_args={
        **NODE, "include_dashboard": False, "_system_config": FAST_DEATH})
    try:
        worker = cluster.add_node(**NODE)
        ray.init(address=cluster.address, _node_ip_address=LOOPBACK, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": str(REPO)}})
        yield cluster, worker
    finally:
        ray.shutdown()
        cluster.shutdown()


def run_on(node_id: str, fn: Callable, *args):
    """``fn(*args)`` as a Ray task pinned to the node ``node_id``; its return value."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    task = ray.remote(num_cpus=1)(fn).options(
        scheduling_strategy=NodeAffinitySchedulingStrategy(node_id, soft=False))
    return ray.get(task.remote(*args), timeout=120)


def patch_unit(monkeypatch, module, fn: Callable, here: Path) -> None:
    """Make ``module.build_real``'s builder run ``fn(here, unit, cfg, output)`` as its unit (the
    builder object holds its unit function: patching the module's name would not reach it)."""
    monkeypatch.setattr(module, "BUILDER", dataclasses.replace(module.BUILDER, unit=partial(fn, str(here))))


def remove_when_stalled(cluster, node, here: Path, seen: list, timeout: float = 120.0,
                        before: Callable[[str], None] | None = None) -> None:
    """Remove ``node`` (all its processes, no grace) once a unit has stalled on it (a mark
    ``stalled-UNIT`` in ``here``, see :mod:`tests.common.ray_units`); ``seen`` gets UNIT.
    ``before(UNIT)`` runs just before the removal (to look at the output while the unit stalls)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        marks = sorted(here.glob("stalled-*"))
        if marks:
            seen.append(marks[0].name[len("stalled-"):])
            if before is not None:
                before(seen[-1])
            cluster.remove_node(node, allow_graceful=False)
            return
        time.sleep(0.2)


def stalled_process_gone(here: Path, name: str, timeout: float = 15.0) -> bool:
    """True once the worker process that stalled on unit ``name`` has ended (the node's removal
    must end it: a survivor could still write, or upload, what it staged)."""
    import json

    from wds_tools.lock import pid_alive

    pid = json.loads((here / f"stalled-{name}").read_text())["pid"]
    deadline = time.monotonic() + timeout
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    return not pid_alive(pid)
