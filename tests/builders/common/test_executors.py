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


_PRELOAD_CHECK = """
import sys
from builders.common.executors import run_units
from tests.common.workers import loaded
got = []
run_units(loaded, ["colorsys", "colorsys"], executor="local", workers=2, on_done=got.append,
          preload=tuple(sys.argv[1:]))
print(got)
"""


@pytest.mark.parametrize("preload, expected", [([], "[False, False]"), (["colorsys"], "[True, True]")])
def test_pool_workers_start_with_the_preloaded_modules(preload, expected):
    # A fresh process each time: a fork server takes its preload list once, when it starts.
    # colorsys: a stdlib module nothing here imports.
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[3]
    proc = subprocess.run([sys.executable, "-c", _PRELOAD_CHECK, *preload], capture_output=True, text=True,
                          cwd=repo, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == expected


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


def test_a_failing_unit_is_recorded_and_the_others_go_on():
    got, failed = [], []
    run_units(_slow_or_fail, [1, 0, 2], executor="local", workers=2, on_done=got.append,
              on_error=lambda u, e: failed.append((u, str(e))))
    assert sorted(got) == [1, 2] and failed == [(0, "unit 0 is broken")]
    got, failed = [], []
    run_units(_slow_or_fail, [0, 1], executor="local", workers=1, on_done=got.append,
              on_error=lambda u, e: failed.append(u))
    assert got == [1] and failed == [0]


def _visible(x):
    import os
    import time

    time.sleep(0.3)  # both workers take a unit
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def test_one_local_worker_per_gpu_each_pinned_to_its_own(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,5")
    got = []
    run_units(_visible, [1, 2, 3, 4], executor="local", workers=0, gpus_per_task=1,
              on_done=got.append)
    assert sorted(set(got)) == ["3", "5"] and len(got) == 4
    with pytest.raises(ValueError, match="-1"):
        run_units(_visible, [1], gpus_per_task=-1)
