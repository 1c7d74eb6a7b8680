"""Two training machines on loopback, streaming from a real S3 API server (moto, 127.0.0.1): two
``accelerate launch`` invocations (``--num_machines 2``, ``--machine_rank 0`` and ``1``, one CPU
process each, gloo over ``lo``) train together on ``s3://`` sources. Each rank reads its own share
of every source's shards (``urls[rank::2]``, see training/data.py), the contrastive loss's
negatives are gathered across both machines, a checkpoint is written once (by the main process),
and a run killed on both machines after that checkpoint resumes to the uninterrupted run's LoRA,
bit for bit. The output folder is shared by both machines, as training/checkpoint.py requires."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from tests.common.launch import free_port, launch_env
from tests.training.conftest import REPO, TINY_CONFIG, shard_dirs  # noqa: F401 - the session's tiny shards
from tests.training.dist_check import batch_loss_and_grads, fixed_global_batch
from training.config import Stage2Config
from wds_tools.config import load_config

pytestmark = pytest.mark.slow

SOURCES = ("real", "synthetic")
# Two checkpoints would be due (steps 2 and 4); the kill comes at batch 3, after the first.
SETTINGS = ["train.max_steps=4", "train.checkpoint_every=2", "eval.before=false", "eval.after=false",
            "data.num_workers=1", "train.log_sample_keys=true"]
KILL_AT_BATCH = 3


def _machines(target, logs: Path, timeout: float = 300.0) -> list[tuple[int, str]]:
    """Start machine 0 and machine 1 (``target(rank)``: the script and its arguments); wait for
    both; ``(exit code, stderr)`` per machine. Both are killed if either outlives ``timeout``."""
    accelerate = Path(sys.executable).with_name("accelerate")
    port = free_port()
    env = launch_env(GLOO_SOCKET_IFNAME="lo")
    procs, errs = [], []
    for rank in (0, 1):
        err = logs / f"machine{rank}.err"
        cmd = [str(accelerate), "launch", "--multi_gpu", "--num_machines", "2", "--machine_rank", str(rank),
               "--num_processes", "2", "--main_process_ip", "127.0.0.1", "--main_process_port", str(port),
               "--mixed_precision", "no", "--dynamo_backend", "no", *target(rank)]
        with open(err, "w") as f:
            procs.append(subprocess.Popen(cmd, env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=f,
                                          start_new_session=True))
        errs.append(err)
    deadline = time.monotonic() + timeout
    try:
        codes = [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
    return [(code, err.read_text()) for code, err in zip(codes, errs)]


def _train_args(out: Path, urls: dict[str, str]) -> list[str]:
    return ["--config", str(TINY_CONFIG), f"data.real=[{urls['real']}]",
            f"data.synthetic=[{urls['synthetic']}]", f"train.output={out}", *SETTINGS]


def _shard_of(dirs: dict[str, Path]) -> dict[str, tuple[str, str]]:
    """sample key -> (source, shard name), read from the local copies of the uploaded shards."""
    found = {}
    for source in SOURCES:
        for tar in sorted(dirs[source].glob("*.tar")):
            if tar.name.count(".") > 1:  # a sidecar (X.quality.tar), not a shard
                continue
            with tarfile.open(tar) as t:
                for name in t.getnames():
                    found[name.split(".", 1)[0]] = (source, tar.name)
    return found


def _shares(out: Path, shard_of: dict) -> list[dict[str, set[str]]]:
    """Per rank: the shards of each source its logged sample keys came from."""
    shares = []
    for rank in (0, 1):
        share: dict[str, set[str]] = {s: set() for s in SOURCES}
        for line in (out / f"sample_keys.rank{rank}.jsonl").read_text().splitlines():
            for key in json.loads(line)["keys"]:
                source, shard = shard_of[key]
                share[source].add(shard)
        shares.append(share)
    return shares


def _lora(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "lora_final.pt", weights_only=True)


def test_two_machines_train_from_s3_share_the_shards_and_resume_exactly(s3_server, shard_dirs, tmp_path):  # noqa: F811
    urls = {s: s3_server.upload(shard_dirs[s], s) for s in SOURCES}
    start = time.monotonic()

    # 1. Uninterrupted: training, then one fixed global batch split across the machines.
    whole = tmp_path / "whole"
    whole.mkdir()
    check = str(REPO / "tests" / "training" / "dist_check.py")
    ran = _machines(lambda r: [check, str(TINY_CONFIG), str(whole), *_train_args(whole, urls)[2:]], whole)
    assert [code for code, _ in ran] == [0, 0], ran[0][1][-3000:] + ran[1][1][-3000:]
    ranks = [json.loads((whole / f"dist_rank{r}.json").read_text()) for r in (0, 1)]
    assert [(r["rank"], r["local_rank"], r["num_processes"]) for r in ranks] == [(0, 0, 2), (1, 0, 2)]
    summary = json.loads((whole / "training_log.json").read_text())["summary"]
    assert summary["world_size"] == 2 and [d["steps"] for d in summary["ranks"]] == [4, 4]
    assert summary["ranks"][0]["lora_sha256"] == summary["ranks"][1]["lora_sha256"]

    # Each rank's samples came from its own share of each source's shards, never the other's.
    shares = _shares(whole, _shard_of(shard_dirs))
    for source in SOURCES:
        names = sorted(p.name for p in shard_dirs[source].glob("*.tar") if p.name.count(".") == 1)
        for rank in (0, 1):
            assert shares[rank][source] and shares[rank][source] <= set(names[rank::2]), (source, shares)
        assert not shares[0][source] & shares[1][source]
    print(f"\nshard shares: rank 0 {shares[0]}, rank 1 {shares[1]}")

    # The negatives span both machines: the loss of the batch split in two equals one process's
    # loss on the whole batch (each rank alone would score its half against its own 4 captions).
    cfg = load_config(Stage2Config, TINY_CONFIG, _train_args(whole, urls)[2:])
    batch = fixed_global_batch(8, size=64)
    single = batch_loss_and_grads(cfg, Accelerator(cpu=True), batch)
    assert ranks[0]["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert ranks[1]["clip_loss"] == pytest.approx(single["clip_loss"], rel=1e-5)
    halves = [batch_loss_and_grads(cfg, Accelerator(cpu=True), {k: v[h * 4:(h + 1) * 4] for k, v in batch.items()})
              for h in (0, 1)]
    assert abs(sum(h["clip_loss"] for h in halves) / 2 - single["clip_loss"]) > 1e-3  # local negatives differ
    print(f"uninterrupted: {time.monotonic() - start:.1f} s")

    # 2. Both machines killed (kill -9) at batch 3, after the step-2 checkpoint.
    out = tmp_path / "run"
    out.mkdir()
    kill = lambda r: ["-m", "tests.faults.kill_point", f"step:{KILL_AT_BATCH}",  # noqa: E731
                      str(tmp_path / f"killed{r}.json"), *_train_args(out, urls)]
    killed = _machines(kill, out)
    assert all(code != 0 for code, _ in killed)
    assert (tmp_path / "killed0.json").exists() and (tmp_path / "killed1.json").exists()
    ckpt = out / "checkpoints" / "step_0000002"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == [ckpt.name]
    assert (ckpt / "data_state.rank0.json").is_file() and (ckpt / "data_state.rank1.json").is_file()
    # one writer published it: the main process logs each checkpoint, the other rank never does
    assert [err.count(f"checkpoint {ckpt}") for _, err in killed] == [1, 0]
    assert not (out / "lora_final.pt").exists()

    # 3. Both machines started again: they resume from the checkpoint and end on the same LoRA.
    resumed = _machines(lambda r: ["-m", "training.train", *_train_args(out, urls)], out)
    assert [code for code, _ in resumed] == [0, 0], resumed[0][1][-3000:] + resumed[1][1][-3000:]
    assert f"resumed from {ckpt} at step 2" in resumed[0][1]
    got, want = _lora(out), _lora(whole)
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)
    print(f"two-machine test: {time.monotonic() - start:.1f} s")
