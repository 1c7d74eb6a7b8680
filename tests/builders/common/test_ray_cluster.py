"""The real builder on a Ray cluster of two nodes (``ray.cluster_utils.Cluster``, one process tree
on loopback): units run on both nodes, a node removed mid-build has its unit built again on the
other, a unit's own failure is recorded once, not retried, and a build given no address does not
join a cluster that happens to run on the machine."""
from __future__ import annotations

import contextlib
import tarfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

import builders.real.build as real_build
from builders.common.executors import RAY_RETRIES, run_units
from builders.real.build import build_real
from builders.real.config import RealBuildConfig
from tests.builders.common import ray_units
from wds_tools.config import load_config

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[3]
# Ray rewrites 127.0.0.1 in an address to this machine's routed IP (so a driver would look for the
# cluster there); any other loopback address it keeps.
LOOPBACK = "127.0.0.2"
NODE = {"num_cpus": 1, "node_ip_address": LOOPBACK, "object_store_memory": 80 * 1024**2}
# A lost node is declared dead after about 3 s instead of Ray's default of about 30 s.
FAST_DEATH = {"health_check_initial_delay_ms": 0, "health_check_period_ms": 1000,
              "health_check_timeout_ms": 1000, "health_check_failure_threshold": 3}
SETTINGS = ["size=32", "images_per_shard=2", "m2b.analysis_size=32"]


@contextlib.contextmanager
def loopback_cluster() -> Iterator:
    """A head and one worker node, one CPU each; this process is connected as the driver."""
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


def _shards(out: Path) -> dict[str, tuple[str, list[str]]]:
    """shard name -> (sha256 from its stats, its member names), every split."""
    import json

    found = {}
    for stats in sorted(out.glob("*/*.stats.json")):
        tar = stats.with_name(stats.name.replace(".stats.json", ".tar"))
        with tarfile.open(tar) as t:
            found[tar.name] = (json.loads(stats.read_text())["sha256"], t.getnames())
    return found


def _remove_when_stalled(cluster, node, here: Path, seen: list, timeout: float = 120.0) -> None:
    """Remove ``node`` (all its processes, no grace) once a unit has stalled on it."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        marks = sorted(here.glob("stalled-*"))
        if marks:
            seen.append(marks[0].name[len("stalled-"):])
            cluster.remove_node(node, allow_graceful=False)
            return
        time.sleep(0.2)


def test_real_build_on_two_nodes_survives_losing_one(demo_tree, tmp_path, monkeypatch):
    cfg = lambda out: load_config(RealBuildConfig, None, [  # noqa: E731
        f"input={demo_tree}", f"output={out}", "executor=ray", *SETTINGS])
    start = time.monotonic()
    with loopback_cluster() as (cluster, worker):
        head_id, worker_id = cluster.head_node.node_id, worker.node_id
        assert {n["NodeManagerAddress"] for n in ray.nodes()} == {LOOPBACK}

        whole = build_real(cfg(tmp_path / "whole"), progress=False)
        by_node = whole["units_by_node"]
        assert set(by_node) == {head_id, worker_id}, by_node  # both nodes built units
        expected = _shards(tmp_path / "whole")
        assert sorted(n for names in by_node.values() for n in names) == sorted(expected)

        # The worker node is removed while it builds a unit: the unit runs again on the head.
        (tmp_path / ray_units.DOOMED).write_text(worker_id)
        monkeypatch.setattr(real_build, "BUILDER", replace(real_build.BUILDER, unit=ray_units.stall_on_doomed_node))
        stalled: list[str] = []
        remover = threading.Thread(target=_remove_when_stalled,
                                   args=(cluster, worker, tmp_path, stalled))
        remover.start()
        cut = build_real(cfg(tmp_path / "cut"), progress=False)
        remover.join()
        assert stalled, "no unit started on the worker node"
        assert stalled[0] in cut["units_by_node"][head_id]
        assert stalled[0] not in cut["units_by_node"].get(worker_id, [])
        assert _shards(tmp_path / "cut") == expected  # same shards, bytes and sample keys
        assert cut["splits"] == whole["splits"]
        print(f"\nnodes {head_id[:8]} (head), {worker_id[:8]} (removed); whole build: "
              f"{ {k[:8]: v for k, v in by_node.items()} }; unit {stalled[0]} rebuilt on the head")

        # A unit's own exception is recorded once; a worker that dies is retried, then recorded.
        got, failed = [], {}
        run_units(ray_units.fail_or_crash, ["ok", "raise", "crash"], str(tmp_path), executor="ray",
                  on_done=got.append, on_error=lambda u, e: failed.__setitem__(u, e))
        assert got == ["ok"] and set(failed) == {"raise", "crash"}
        assert isinstance(failed["raise"], ValueError), failed
        assert ray_units.attempts(tmp_path, "raise") == 1
        assert ray_units.attempts(tmp_path, "crash") == 1 + RAY_RETRIES

        # Given no address, a build starts a Ray of its own: not this cluster, although it is the
        # one /tmp/ray/ray_current_cluster names (which ray.init(address=None) would join).
        ray.shutdown()
        ran_on: list[str] = []
        run_units(ray_units.node_of, ["alone"], executor="ray", workers=1, on_done=ran_on.append)
        assert len(ran_on) == 1 and ran_on[0] not in {head_id, worker_id}
    print(f"cluster test: {time.monotonic() - start:.1f} s")
