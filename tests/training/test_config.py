"""Stage 2's config tree: plain flags and dotted overrides fill it; a misspelt key stops the run."""

from __future__ import annotations

import pytest

from tests.training.conftest import REPO
from training.config import CLI_FLAGS, Stage2Config
from wds_tools.config import parse_cli


def test_cli_flags_fill_the_config(tmp_path):
    cfg = parse_cli(Stage2Config, ["--config", str(REPO / "configs/train/lora.yaml"), "--real", "a,b",
                                   "--synthetic", "s", "--output", str(tmp_path), "--max-steps", "5",
                                   "loss.fine_grained_weight=0.5"], prog="t", description="t", flags=CLI_FLAGS)
    assert cfg.data.real == ["a", "b"] and cfg.data.synthetic == ["s"] and cfg.train.max_steps == 5
    assert cfg.train.output == str(tmp_path) and cfg.loss.fine_grained_weight == 0.5
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.data.synthetic_ratio, cfg.train.batch_size) == (8, 16.0, 0.8, 32)
    assert cfg.train.learning_rate == 1e-4 and cfg.train.mixed_precision == "bf16" and cfg.train.num_epochs == 10
    with pytest.raises(SystemExit):
        parse_cli(Stage2Config, ["--config", str(REPO / "configs/train/lora.yaml"), "lora.rnak=4"],
                  prog="t", description="t", flags=CLI_FLAGS)
