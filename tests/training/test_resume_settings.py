"""A resume is bound to the settings its checkpoint was made with: a changed setting is refused in one
line naming it (old -> new), nothing is recorded for it, and an allowed change really applies."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from tests.training.conftest import TINY_CONFIG
from training.config import Stage2Config
from training.train import main
from training.trainer import train
from wds_tools.config import load_config

LR = 1.0e-3  # configs/train/tiny.yaml


def _overrides(shard_dirs, out: Path, *extra: str) -> list[str]:
    return [f"data.real=[{shard_dirs['real']}]", f"data.synthetic=[{shard_dirs['synthetic']}]",
            f"train.output={out}", "train.max_steps=3", "train.checkpoint_every=3", "train.warmup_steps=2",
            "eval.before=false", "eval.after=false", "data.num_workers=0", *extra]


@pytest.fixture(scope="module")
def finished(shard_dirs, tmp_path_factory) -> Path:
    """A finished 3-step run with its final checkpoint (step 3)."""
    out = tmp_path_factory.mktemp("finished")
    train(load_config(Stage2Config, TINY_CONFIG, _overrides(shard_dirs, out)))
    return out


@pytest.fixture
def run_copy(finished, tmp_path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


@pytest.mark.parametrize("change, named", [
    ("train.learning_rate=2.0e-3", "train.learning_rate 0.001 -> 0.002"),
    ("train.batch_size=2", "train.batch_size 4 -> 2"),
    ("train.seed=7", "train.seed 42 -> 7"),
    ("lora.rank=4", "lora.rank 8 -> 4"),  # was a size-mismatch traceback
    ("data.synthetic_ratio=0.5", "data.synthetic_ratio 0.8 -> 0.5"),
    ("data.real=[VAL]", "data.real ["),
])
def test_a_changed_setting_is_refused_in_one_line_and_not_recorded(shard_dirs, run_copy, change, named, capsys):
    change = change.replace("VAL", str(shard_dirs["val"]))
    before = {name: (run_copy / name).read_bytes() for name in ("config.yaml", "training_log.json", "lora_final.pt")}
    code = main(["--config", str(TINY_CONFIG), *_overrides(shard_dirs, run_copy, change)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "train.resume: checkpoint" in err[0] and "step_0000003" in err[0] and named in err[0]
    if change.startswith("train.learning_rate"):
        assert "train.resume_allow_changes=[train.learning_rate]" in err[0]
    else:
        assert "resume_allow_changes" not in err[0]  # only offered for settings a resume can apply
    # config.yaml and the log still say what the checkpoint was trained with
    assert before == {name: (run_copy / name).read_bytes() for name in before}


def test_checkpoints_written_before_settings_were_stored_are_checked_by_their_log(shard_dirs, run_copy, capsys):
    state_file = run_copy / "checkpoints" / "step_0000003" / "trainer_state.json"
    state = json.loads(state_file.read_text())
    assert state["settings"]["train.learning_rate"] == LR and "train.output" not in state["settings"]
    del state["settings"]
    state_file.write_text(json.dumps(state))
    assert main(["--config", str(TINY_CONFIG), *_overrides(shard_dirs, run_copy, "train.seed=1")]) == 2
    assert "train.seed 42 -> 1" in capsys.readouterr().err


def test_free_settings_may_change_without_an_override(shard_dirs, run_copy):
    cfg = load_config(Stage2Config, TINY_CONFIG, _overrides(
        shard_dirs, run_copy, "train.log_every=2", "train.keep_checkpoints=5", f"eval.shards=[{shard_dirs['val']}]",
        "data.prefetch_factor=5"))
    log = train(cfg)
    assert log["summary"]["resumes"] == [{"step": 3, "checkpoint": str(run_copy / "checkpoints" / "step_0000003"),
                                          "changed": {}}]


def _factor(step: int, warmup: int, total: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return 0.5 * (1 + math.cos(math.pi * (step - warmup) / (total - warmup)))


def test_allowed_changes_are_applied_and_recorded(shard_dirs, run_copy, tmp_path):
    allow = "train.resume_allow_changes=[train.max_steps,train.learning_rate]"
    extended = tmp_path / "extended"
    shutil.copytree(run_copy, extended)
    train(load_config(Stage2Config, TINY_CONFIG, _overrides(
        shard_dirs, extended, "train.max_steps=5", "train.resume_allow_changes=[train.max_steps]")))
    log = train(load_config(Stage2Config, TINY_CONFIG, _overrides(
        shard_dirs, run_copy, "train.max_steps=5", "train.learning_rate=2.0e-3", allow)))

    assert [e["step"] for e in log["training_log"]] == [1, 2, 3, 4, 5]
    for entry in log["training_log"]:  # the old rate up to the checkpoint, the new one after it
        base = LR if entry["step"] <= 3 else 2 * LR
        assert entry["lr"] == pytest.approx(base * _factor(entry["step"], 2, 3 if entry["step"] <= 3 else 5))
    assert log["summary"]["resumes"][-1]["changed"] == {"train.learning_rate": [LR, 2 * LR], "train.max_steps": [3, 5]}
    saved = load_config(Stage2Config, run_copy / "config.yaml", [])
    assert saved.train.learning_rate == 2 * LR and saved.train.max_steps == 5
    state = json.loads((run_copy / "checkpoints" / "step_0000005" / "trainer_state.json").read_text())
    assert state["settings"]["train.learning_rate"] == 2 * LR
    # the new rate trained: the same two extra steps at the old rate end elsewhere
    got, other = (torch.load(d / "lora_final.pt", weights_only=True) for d in (run_copy, extended))
    assert any(not torch.equal(got[n], other[n]) for n in got)


def test_resume_allow_changes_names_only_settings_a_resume_can_apply(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--config", str(TINY_CONFIG), "train.resume_allow_changes=[train.seed]"])
    assert e.value.code == 2
    assert "'train.seed' cannot change on resume" in capsys.readouterr().err
