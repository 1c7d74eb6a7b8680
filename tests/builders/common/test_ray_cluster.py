"""The real builder on a Ray cluster of two nodes (``ray.cluster_utils.Cluster``, one process tree
on loopback): units run on both nodes, a node removed mid-build has its unit built again on the
other, a unit's own failure is recorded once, not retried, and a build given no address does not
join a cluster that happens to run on the machine."""
from __future__ import annotations

import tarfile
import threading
import time
from pathlib import Path

import pytest

import builders.real.build as real_build
from builders.common.executors import RAY_RETRIES, run_units
from builders.real.build import build_real
from builders.real.config import RealBuildConfig
from tests.common import ray_units
from tests.common.ray_cluster import LOOPBACK, loopback_cluster, patch_unit, remove_when_stalled, stalled_process_gone
from wds_tools.config import load_config

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.slow

SETTINGS = ["size=32", "images_per_shard=2", "m2b.analysis_size=32"]


def _shards(out: Path) -> dict[str, tuple[str, list[str]]]:
    """shard name -> (sha256 from its stats, its member names), every split."""
    import json

    found = {}
    for stats in sorted(out.glob("*/*.stats.json")):
        tar = stats.with_name(stats.name.replace(".stats.json", ".tar"))
        with tarfile.open(tar) as t:
            found[tar.name] = (json.loads(stats.read_text())["sha256"], t.getnames())
    return found


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
        patch_unit(monkeypatch, real_build, ray_units.stall_on_doomed_node, tmp_path)
        stalled: list[str] = []
        remover = threading.Thread(target=remove_when_stalled,
                                   args=(cluster, worker, tmp_path, stalled))
        remover.start()
        cut = build_real(cfg(tmp_path / "cut"), progress=False)
        remover.join()
        assert stalled, "no unit started on the worker node"
        assert stalled_process_gone(tmp_path, stalled[0])
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
