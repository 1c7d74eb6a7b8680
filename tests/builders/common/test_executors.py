"""Executors: Ray on a real local cluster writes the same shards as the local pool."""
import json

import pytest

from builders.common.executors import resolve_workers, run_units
from builders.real.build import build_real
from builders.real.config import RealBuildConfig
from wds_tools.config import load_config

FAST = ["size=32", "images_per_shard=3", "m2b.analysis_size=32"]


def _square(x):
    return x * x


def test_unknown_executor_and_worker_count():
    with pytest.raises(ValueError, match="dask"):
        run_units(_square, [1], executor="dask")
    assert resolve_workers(3) == 3 and resolve_workers(0) >= 1


def test_local_pool_hands_back_every_result():
    got = []
    run_units(_square, [1, 2, 3, 4], executor="local", workers=2, on_done=got.append)
    assert sorted(got) == [1, 4, 9, 16]


def _sha(d):
    return {p.name: json.loads(p.read_text())["sha256"] for p in sorted(d.glob("*.stats.json"))}


def test_ray_local_cluster_matches_local_pool(demo_tree, tmp_path):
    pytest.importorskip("ray")
    cfg = lambda out, *x: load_config(RealBuildConfig, None, [f"input={demo_tree}", f"output={out}", *FAST, *x])
    build_real(cfg(tmp_path / "local", "workers=1"), progress=False)
    summary = build_real(cfg(tmp_path / "ray", "executor=ray", "workers=2"), progress=False)
    assert summary["splits"]["train"]["real_original"] == 10
    assert _sha(tmp_path / "ray" / "train") == _sha(tmp_path / "local" / "train")


def _slow_or_fail(x):
    import time

    if x == 0:
        raise ValueError("unit 0 is broken")
    time.sleep(1.0 * (x - 1))
    return x


def test_results_arrive_as_units_finish_and_failures_stop_the_run():
    got = []
    run_units(_slow_or_fail, [2, 1], executor="local", workers=2, on_done=got.append)
    assert got == [1, 2]  # completion order, not submission order
    with pytest.raises(ValueError, match="unit 0 is broken"):
        run_units(_slow_or_fail, [1, 0], executor="local", workers=2)
