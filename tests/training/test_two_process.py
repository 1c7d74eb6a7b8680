"""Two real CPU processes (gloo) under accelerate launch vs. one process on the same global batch."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from accelerate import Accelerator

from tests.common.launch import launch_two_ranks
from tests.training.conftest import REPO, TINY_CONFIG
from tests.training.dist_check import batch_loss_and_grads, fixed_global_batch
from training.config import Stage2Config
from wds_tools.config import load_config

OVERRIDES = ["train.max_steps=3", "train.checkpoint_every=0", "eval.before=false", "eval.after=false",
             "data.num_workers=1", "train.report_to=[tensorboard]"]


def _overrides(shard_dirs, out: Path) -> list[str]:
    return [f"data.real=[{shard_dirs['real']}]", f"data.synthetic=[{shard_dirs['synthetic']}]",
            f"train.output={out}", *OVERRIDES]


@pytest.fixture(scope="module")
def two_rank_run(shard_dirs, tmp_path_factory) -> tuple[Path, list[str]]:
    """A 3-step run on two ranks (then dist_check's fixed-batch figures): its folder and overrides."""
    out = tmp_path_factory.mktemp("two_ranks")
    overrides = _overrides(shard_dirs, out)
    proc = launch_two_ranks(str(REPO / "tests" / "training" / "dist_check.py"), str(TINY_CONFIG), str(out), *overrides)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return out, overrides


def test_two_ranks_train_in_sync_and_match_single_process(two_rank_run):
    tmp_path, overrides = two_rank_run
    ranks = [json.loads((tmp_path / f"dist_rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["rank"] for r in ranks] == [0, 1]
    assert all(r["num_processes"] == 2 for r in ranks)
    summary = json.loads((tmp_path / "training_log.json").read_text())["summary"]
    assert [d["rank"] for d in summary["ranks"]] == [0, 1]
    assert [d["steps"] for d in summary["ranks"]] == [3, 3]
    assert summary["ranks"][0]["lora_sha256"] == summary["ranks"][1]["lora_sha256"]
    # trackers log from the main process only: every TensorBoard events file has one writer's pid
    events = list(tmp_path.rglob("events.out.tfevents.*"))
    assert events and all(p.is_relative_to(tmp_path / "tensorboard" / "stage2") for p in events)
    assert len({p.name.split(".")[-2] for p in events}) == 1, [p.name for p in events]

    cfg = load_config(Stage2Config, TINY_CONFIG, overrides)
    single = batch_loss_and_grads(cfg, Accelerator(cpu=True), fixed_global_batch(8, size=64))
    assert ranks[0]["loss"] == pytest.approx(ranks[1]["loss"], abs=1e-7)
    assert ranks[0]["loss"] == pytest.approx(single["loss"], rel=1e-5)
    assert ranks[0]["clip_loss"] == pytest.approx(single["clip_loss"], rel=1e-5)
    # 3 duplicate pairs (2 sources, 1 caption), masked both ways: 6 cells, 4 of them across ranks
    assert single["masked_pairs"] == 6 and ranks[0]["masked_pairs"] == 6
    cfg_off = load_config(Stage2Config, TINY_CONFIG, overrides + ["loss.mask_same_source=false",
                                                                  "loss.mask_same_caption=false"])
    plain = batch_loss_and_grads(cfg_off, Accelerator(cpu=True), fixed_global_batch(8, size=64))
    assert abs(plain["clip_loss"] - single["clip_loss"]) > 1e-4  # masking changed the loss
    assert set(ranks[0]["grads"]) == set(single["grads"])
    for name, g in single["grads"].items():
        assert g > 0, name
        assert ranks[0]["grads"][name] == pytest.approx(g, rel=1e-3, abs=1e-7), name
        assert ranks[1]["grads"][name] == pytest.approx(g, rel=1e-3, abs=1e-7), name


def test_a_signal_to_one_rank_stops_both_at_one_step_and_the_resume_is_exact(two_rank_run, shard_dirs, tmp_path):
    """SIGUSR1 to rank 1 alone, during step 2: both ranks finish step 2, write one checkpoint
    together and exit with the preemption code; a two-rank resume ends on the uninterrupted run's
    LoRA, bit for bit."""
    reference, _ = two_rank_run
    out = tmp_path / "run"
    args = ["--config", str(TINY_CONFIG), *_overrides(shard_dirs, out)]
    proc = launch_two_ranks("-m", "tests.faults.kill_point", "signal:2@1", str(tmp_path / "sig.json"), *args)
    assert proc.returncode != 0
    assert "stopped on SIGUSR1 after step 2" in proc.stderr  # rank 1
    assert "stopped on a stop signal to another rank after step 2" in proc.stderr  # rank 0
    # The launcher reports the first rank to exit (75) and stops the other, already past its checkpoint.
    assert "exitcode  : 75" in proc.stderr, proc.stderr[-4000:]
    ckpt = out / "checkpoints" / "step_0000002"
    assert sorted(p.name for p in ckpt.parent.iterdir()) == [ckpt.name]
    assert (ckpt / "data_state.rank0.json").is_file() and (ckpt / "data_state.rank1.json").is_file()
    assert not (out / "lora_final.pt").exists()

    proc = launch_two_ranks("-m", "training.train", *args)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert f"resumed from {ckpt} at step 2" in proc.stderr
    got, want = (torch.load(d / "lora_final.pt", weights_only=True) for d in (out, reference))
    assert set(got) == set(want) and all(torch.equal(got[n], want[n]) for n in want)
