from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from wds_tools.config import ConfigError, config_to_dict, load_config, parse_cli, save_config


@dataclass
class Optim:
    lr: float = 1e-4
    schedule: Literal["cosine", "constant"] = "cosine"

    def validate(self):
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")


@dataclass
class Cfg:
    input: list[str] = field(default_factory=list)
    output: str = "out"
    overwrite: bool = False
    steps: int = 10
    pretrained: str | None = None
    optim: Optim = field(default_factory=Optim)


def test_file_then_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("steps: 3\noptim: {lr: 0.5}\n")
    cfg = load_config(Cfg, p, ["optim.schedule=constant", "input=[a.tar, b.tar]", "pretrained=null"])
    assert cfg.steps == 3 and cfg.optim.lr == 0.5 and cfg.optim.schedule == "constant"
    assert cfg.input == ["a.tar", "b.tar"] and cfg.pretrained is None


@pytest.mark.parametrize(
    "override, message",
    [
        ("optim.lrr=1", r"unknown config key 'optim.lrr'; valid keys here: \['lr', 'schedule'\]"),
        ("steps=ten", r"steps: expected int, got 'ten'"),
        ("optim.schedule=linear", r"'linear' is not one of the valid choices \['cosine', 'constant'\]"),
        ("optim.lr=-1", r"lr must be > 0, got -1.0"),
        ("steps", r"must look like key.sub=value"),
    ],
)
def test_errors_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Cfg, None, [override])


def test_unknown_key_in_file(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("stepz: 3\n")
    with pytest.raises(ConfigError, match="'stepz'"):
        load_config(Cfg, p)


def test_cli_flags_and_precedence(tmp_path, capsys):
    p = tmp_path / "c.yaml"
    p.write_text("output: fromfile\nsteps: 2\n")
    argv = ["--config", str(p), "--input", "x.tar,y.tar", "--input", "z.tar", "--output", "o", "steps=5"]
    cfg = parse_cli(Cfg, argv, prog="t", description="d", flags={"--input": "input", "--output": "output"})
    assert cfg.input == ["x.tar", "y.tar", "z.tar"] and cfg.output == "o" and cfg.steps == 5
    with pytest.raises(SystemExit) as e:
        parse_cli(Cfg, ["bogus=1"], prog="t", description="d")
    assert e.value.code == 2 and "'bogus'" in capsys.readouterr().err


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(Cfg, None, ["steps=7"])
    path = save_config(cfg, tmp_path / "config.yaml")
    assert yaml.safe_load(path.read_text()) == config_to_dict(cfg)
    assert load_config(Cfg, path) == cfg


def test_bool_flag_stands_alone():
    flags = {"--overwrite": "overwrite", "--steps": "steps"}
    cfg = parse_cli(Cfg, ["--overwrite", "steps=3"], prog="t", description="d", flags=flags)
    assert cfg.overwrite is True and cfg.steps == 3
    assert parse_cli(Cfg, [], prog="t", description="d", flags=flags).overwrite is False


def test_float_written_without_a_dot():
    assert load_config(Cfg, None, ["optim.lr=1e-4"]).optim.lr == 1e-4
    with pytest.raises(ConfigError, match="expected float, got 'fast'"):
        load_config(Cfg, None, ["optim.lr=fast"])


@dataclass
class Bounds:
    low: float = 0.0
    high: float | None = 1.0
    floors: dict[str, float] = field(default_factory=dict)


@pytest.mark.parametrize("override", ["low=nan", "low=.nan", "low=inf", "low=-.inf", "high=nan",
                                      "floors.vlm=nan", "low=1e999"])
def test_non_finite_float_is_refused_naming_the_key(override):
    key = override.split("=")[0]
    with pytest.raises(ConfigError, match=rf"{key}: must be a finite number"):
        load_config(Bounds, None, [override])


def test_non_finite_float_in_a_file_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("low: .nan\n")
    with pytest.raises(ConfigError, match="low: must be a finite number"):
        load_config(Bounds, path)
    assert load_config(Bounds, None, ["low=-2.5", "high=null"]) == Bounds(low=-2.5, high=None)
