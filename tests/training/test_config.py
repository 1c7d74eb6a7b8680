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
    assert (cfg.lora.rank, cfg.lora.alpha, cfg.data.synthetic_ratio, cfg.train.batch_size) == (32, 16.0, 0.8, 32)
    assert cfg.lora.rslora and cfg.lora.train_token_embedding  # the defaults the learning benchmark chose
    assert cfg.train.learning_rate == 5e-4 and cfg.train.mixed_precision == "bf16" and cfg.train.num_epochs == 10
    with pytest.raises(SystemExit):
        parse_cli(Stage2Config, ["--config", str(REPO / "configs/train/lora.yaml"), "lora.rnak=4"],
                  prog="t", description="t", flags=CLI_FLAGS)


def _flat(cfg, prefix: str = "") -> dict:
    from dataclasses import fields, is_dataclass

    out = {}
    for f in fields(cfg):
        value = getattr(cfg, f.name)
        out.update(_flat(value, f"{prefix}{f.name}.") if is_dataclass(value) else {prefix + f.name: value})
    return out


def test_seed_recipe_config_loads_with_the_seed_values():
    def load(name):
        return parse_cli(Stage2Config, ["--config", str(REPO / "configs/train" / name)], prog="t",
                         description="t", flags=CLI_FLAGS)

    seed = load("seed.yaml")
    assert seed.loss.use_fine_grained is True and seed.loss.fine_grained_weight == 0.3
    assert (seed.train.num_epochs, seed.train.learning_rate, seed.train.batch_size) == (10, 1e-4, 32)
    assert (seed.lora.rank, seed.lora.alpha) == (8, 16.0)
    assert (seed.data.synthetic_ratio, seed.loss.rare_class_weight) == (0.8, 2.0)
    assert seed.train.max_steps == 0 and seed.train.grad_accum == 1  # the epochs, not a step cap, end it
    assert seed.lora.rslora is False and seed.lora.train_token_embedding is False
    # Beside the tuned default it differs only in the defaults the learning benchmark changed
    # (README) and its output folder.
    default, ours = _flat(load("lora.yaml")), _flat(seed)
    assert {k for k in ours if ours[k] != default[k]} == {
        "loss.use_fine_grained", "lora.rank", "lora.rslora", "lora.train_token_embedding",
        "train.learning_rate", "train.output"}


@pytest.mark.parametrize("setting", ["data.prefetch_factor=0", "data.shards_per_chunk=0"])
def test_loader_settings_below_one_are_refused_naming_the_key(setting):
    from wds_tools.config import ConfigError, load_config

    key = setting.split(".")[1].split("=")[0]
    with pytest.raises((ConfigError, ValueError), match=f"{key} must be >= 1, got 0"):
        load_config(Stage2Config, REPO / "configs/train/tiny.yaml", [setting])
    assert getattr(load_config(Stage2Config, REPO / "configs/train/tiny.yaml", [setting[:-1] + "3"]).data, key) == 3
