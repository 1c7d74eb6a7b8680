"""Experiment trackers: a tiny run with train.report_to=[tensorboard], read back with TensorBoard's reader."""

from __future__ import annotations

import json

import pytest

from tests.training.conftest import TINY_CONFIG
from training.config import Stage2Config
from training.tracking import accelerator_kwargs, check_trackers, launch_command
from training.trainer import train
from wds_tools.config import load_config


def _scalars(folder) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.fixture(scope="module")
def tracked_run(shard_dirs, tmp_path_factory):
    out = tmp_path_factory.mktemp("tracked")
    cfg = load_config(Stage2Config, TINY_CONFIG, [
        f"data.real=[{shard_dirs['real']}]", f"data.synthetic=[{shard_dirs['synthetic']}]",
        f"eval.shards=[{shard_dirs['val']}]", f"train.output={out}", "train.max_steps=4",
        "train.checkpoint_every=0", "train.log_every=2", "train.report_to=[tensorboard]"])
    train(cfg)
    return out


def test_tensorboard_events_hold_the_loss_and_the_evaluation(tracked_run):
    saved = json.loads((tracked_run / "training_log.json").read_text())
    scalars = _scalars(tracked_run / "tensorboard" / "stage2")
    entries = saved["training_log"]
    assert [e["step"] for e in entries] == [2, 4]
    for key in ("total_loss", "clip_loss", "acc_i2t", "synthetic_share", "classes_per_batch",
                "same_source_pairs_per_batch", "lr", "samples_per_s", "quality_dropped_total"):
        got = scalars[f"train/{key}"]
        assert [s for s, _ in got] == [2, 4], key
        assert [v for _, v in got] == pytest.approx([e[key] for e in entries], rel=1e-5), key
    for when, step in (("before", 0), ("after", 4)):
        ev = saved["evaluation"][when]
        assert scalars[f"eval/{when}/retrieval/mean_recall"] == [(step, pytest.approx(ev["retrieval"]["mean_recall"]))]
        assert scalars[f"eval/{when}/zeroshot/accuracy"][0][1] == pytest.approx(ev["zeroshot"]["accuracy"])
    share = saved["summary"]["realised_synthetic_share"]
    assert scalars["summary/realised_synthetic_share"] == [(4, pytest.approx(share))]
    # training_log.json and the curves stay; nothing is written outside the run's folder
    assert (tracked_run / "training_curves.png").is_file()
    assert saved["summary"]["command"] is None  # started from Python, not from the entry point


def test_trackers_are_off_by_default_and_a_missing_one_is_a_clear_error(tmp_path):
    cfg = load_config(Stage2Config, TINY_CONFIG, [f"train.output={tmp_path}"])
    assert cfg.train.report_to == [] and accelerator_kwargs(cfg) == {}
    with pytest.raises(ValueError, match="unknown tracker 'tensorbord'"):
        check_trackers(["tensorbord"])
    from accelerate.tracking import get_available_trackers

    missing = next(n for n in ("aim", "dvclive", "swanlab", "clearml") if n not in map(str, get_available_trackers()))
    with pytest.raises(ValueError, match=f"train.report_to: {missing} is not installed"):
        check_trackers([missing])


def test_launch_command_is_recorded_as_typed():
    argv = ["/repo/training/train.py", "--config", "configs/train/lora.yaml", "--real", "a b"]
    assert launch_command(argv) == "python -m training.train --config configs/train/lora.yaml --real 'a b'"
    assert launch_command(["/usr/bin/pytest", "-q"]) is None
