"""GPU pools: no process calls into the CUDA runtime before its device is pinned, and the
worker-count and device decisions, with the GPUs injected (this machine has none)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from builders.common.executors import local_pool, resolve_workers, run_units
from builders.common.gpus import Placement, place_model

REPO = Path(__file__).resolve().parents[3]
PROBE = Path(__file__).resolve().parent / "cuda_probe"


# The builder's process: counts the GPUs itself (no CUDA_VISIBLE_DEVICES: it has to look), then
# runs a pool of two GPUs whose workers preload diffusers as the synthetic builder's do.
_POOL = """
import json, os, sys
from builders.common.executors import run_local, visible_gpus
from tests.common.workers import pinned_cuda_check
visible_gpus()
got = []
run_local(pinned_cuda_check, [0, 1], (sys.argv[1],), workers=2, on_done=got.append,
          gpus=["0", "1"], preload=("diffusers.utils.torch_utils",))
print(json.dumps({"parent": os.getpid(), "workers": got, "after": os.environ.get("CUDA_VISIBLE_DEVICES")}))
"""


def test_no_process_calls_cuda_before_its_device_is_pinned(tmp_path):
    log, rendezvous = tmp_path / "cuda_calls.jsonl", tmp_path / "rendezvous"
    rendezvous.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "CUDA_VISIBLE_DEVICES"}
    env.update(PYTHONPATH=f"{PROBE}{os.pathsep}{REPO}", CUDA_PROBE_LOG=str(log), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-c", _POOL, str(rendezvous)], capture_output=True,
                          text=True, cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = json.loads(proc.stdout.strip().splitlines()[-1])
    pinned = {pid: visible for pid, visible in run["workers"]}
    assert sorted(pinned.values()) == ["0", "1"], run  # one worker per GPU, each its own
    assert run["after"] is None  # the builder's own environment is as it was
    calls = [json.loads(line) for line in log.read_text().splitlines()]
    assert pinned.keys() <= {c["pid"] for c in calls}, "the probe must record in every worker"
    assert [c for c in calls if c["pid"] == run["parent"]] == [], "the builder touched CUDA"
    unpinned = [c for c in calls if c["pid"] not in pinned or pinned[c["pid"]] != c["visible"]]
    assert unpinned == [], f"CUDA calls outside a pinned worker or before pinning: {unpinned}"


def _env_of(name: str) -> str | None:
    return os.environ.get(name)


def test_cpu_pool_checks_cuda_through_nvml_and_leaves_this_process_alone():
    before = os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK")
    got = []
    run_units(_env_of, ["PYTORCH_NVML_BASED_CUDA_CHECK"] * 2, workers=2, on_done=got.append)
    assert got == [before or "1"] * 2  # diffusers' import-time check in the fork server: NVML
    assert os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK") == before


def test_local_pool_size_with_injected_gpus():
    two = ["3", "5"]
    assert local_pool(0, 10, gpus_per_task=1, gpus=two) == (2, two)   # one worker per GPU
    assert local_pool(1, 10, gpus_per_task=1, gpus=two) == (1, ["3"])  # workers=N: at most N
    assert local_pool(0, 1, gpus_per_task=1, gpus=two) == (1, ["3"])   # never more than units
    assert local_pool(2, 10, gpus_per_task=0, gpus=two) == (2, [])     # units want no GPU
    assert local_pool(0, 100, gpus_per_task=1, gpus=[]) == (resolve_workers(0), [])


def test_local_pool_reads_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,7,9")
    assert local_pool(0, 10, gpus_per_task=1) == (3, ["2", "7", "9"])
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert local_pool(2, 10, gpus_per_task=1) == (2, [])


@pytest.mark.parametrize("device, workers, gpus, expected", [
    ("auto", 0, ["0", "1"], Placement("auto", 1.0, ["0", "1"], 0)),
    ("cuda", 0, ["0", "1"], Placement("cuda", 1.0, ["0", "1"], 0)),
    ("cuda", 1, ["0", "1"], Placement("cuda", 1.0, ["0"], 1)),
    ("cuda:1", 0, ["0", "1"], Placement("cuda", 1.0, ["1"], 0)),   # GPU 1 only, as cuda there
    ("auto", 0, [], Placement("cpu", 0.0, None, 0)),                # workers must not pick CUDA
    ("cpu", 0, ["0", "1"], Placement("cpu", 0.0, None, 0)),
    ("cuda", 0, [], Placement("cuda", 0.0, None, 1)),               # unseen GPU: one model copy
])
def test_place_model_with_injected_gpus(device, workers, gpus, expected):
    assert place_model(device, workers=workers, executor="local", gpus=gpus) == expected


def test_place_model_refuses_a_gpu_index_not_found():
    with pytest.raises(ValueError, match=r"'cuda:2'.*\['0', '1'\]"):
        place_model("cuda:2", workers=0, executor="local", gpus=["0", "1"])


def test_place_model_on_ray_asks_a_gpu_per_task(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert place_model("cuda:1", workers=0, executor="ray", ray_address="h:1", gpus=[]) == \
        Placement("cuda", 1.0, None, 0)
    assert place_model("auto", workers=0, executor="ray", gpus=[]) == Placement("cpu", 0.0, None, 0)
