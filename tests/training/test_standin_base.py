"""The stand-in base model: trained in full, written as a plain checkpoint both stages load."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from clip_models.config import ModelConfig
from clip_models.loading import create_model
from tests.training.conftest import REPO
from training.standin_base import BaseConfig, main, train_base
from wds_tools.config import load_config

BASE_YAML = REPO / "configs" / "train" / "base-tiny.yaml"


def test_base_trains_every_parameter_and_loads_as_a_pretrained_checkpoint(shard_dirs, tmp_path):
    cfg = load_config(BaseConfig, BASE_YAML, [f"data.real=[{shard_dirs['real']}]", f"train.output={tmp_path}",
                                              "train.steps=3", "train.batch_size=4", "train.log_every=1",
                                              "data.num_workers=0",
                                              f"model.config_file={REPO / 'configs/models/tiny-clip.json'}"])
    result = train_base(cfg)
    assert [e["step"] for e in result["training_log"]] == [1, 2, 3]
    assert result["summary"]["stand_in_for"] == "RemoteCLIP"
    assert (tmp_path / "base_curves.png").stat().st_size > 0
    assert json.loads((tmp_path / "base_log.json").read_text())["training_log"] == result["training_log"]

    init = create_model(ModelConfig(name="tiny-clip", config_file=str(REPO / "configs/models/tiny-clip.json")))
    trained = create_model(ModelConfig(name="tiny-clip", pretrained=str(tmp_path / "base.pt")))
    changed = {n for n, p in trained.named_parameters() if not torch.equal(p, init.state_dict()[n])}
    # a full training moves the token embedding too (LoRA cannot), and both towers
    assert "token_embedding.weight" in changed
    assert any(n.startswith("visual.") for n in changed) and any(n.startswith("transformer.") for n in changed)


def test_base_without_shards_is_a_clear_error(tmp_path, capsys):
    with pytest.raises(ValueError, match="data.real is empty"):
        train_base(load_config(BaseConfig, BASE_YAML, [f"train.output={tmp_path}"]))


@pytest.mark.parametrize("override", ["train.steps=0", "train.batch_size=1", "data.num_workers=-1"])
def test_base_rejects_bad_values_before_work(override, tmp_path):
    with pytest.raises(SystemExit) as e:
        main(["--config", str(BASE_YAML), f"train.output={tmp_path}", override])
    assert e.value.code == 2


def test_the_old_module_name_still_runs_the_job(tmp_path):
    """``python -m training.base`` (the name before the rename) runs the same job."""
    import training.base as old
    import training.standin_base as new

    assert (old.main, old.train_base, old.BaseConfig) == (new.main, new.train_base, new.BaseConfig)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "training.base", "--config", str(BASE_YAML), "--output",
                          str(tmp_path / "b")], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-2000:]
    assert "Traceback" not in out.stderr and "data.real is empty" in out.stderr.strip().splitlines()[-1]
