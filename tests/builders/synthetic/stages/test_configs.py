"""Every stage config loads through wds_tools.config (defaults, YAML, dotted overrides) and validates."""
import pytest

from builders.synthetic.stages import DescribeConfig, GenerateConfig, GroundConfig, SegmentConfig, UpscaleConfig
from wds_tools.config import ConfigError, load_config


@pytest.mark.parametrize("cls", [UpscaleConfig, DescribeConfig, GroundConfig, SegmentConfig, GenerateConfig])
def test_defaults_load_and_validate(cls):
    cfg = load_config(cls)
    assert cfg == cls()
    cfg.validate()


def test_yaml_and_overrides_are_typed(tmp_path):
    (tmp_path / "g.yaml").write_text("steps: 10\nuse_t5: true\n")
    cfg = load_config(GenerateConfig, tmp_path / "g.yaml", ["guidance=3.5", "size=512"])
    assert (cfg.steps, cfg.use_t5, cfg.guidance, cfg.size) == (10, True, 3.5, 512)
    assert load_config(DescribeConfig, None, ["nouns=car,tree"]).nouns == ["car", "tree"]
    with pytest.raises(ConfigError, match="tile_size"):
        load_config(UpscaleConfig, None, ["tile_size=64"])
