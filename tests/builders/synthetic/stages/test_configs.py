"""Every stage config loads through wds_tools.config (defaults, YAML, dotted overrides) and validates."""
from pathlib import Path

import pytest

from builders.synthetic.config import SyntheticBuildConfig
from builders.synthetic.stages import DescribeConfig, GenerateConfig, GroundConfig, SegmentConfig, UpscaleConfig
from wds_tools.config import ConfigError, load_config

REPO = Path(__file__).resolve().parents[4]
# Guidance in the model cards' own diffusers examples (huggingface.co/stabilityai/<name>).
MODEL_CARD_GUIDANCE = {"stable-diffusion-3.5-medium": 4.5, "stable-diffusion-3.5-large": 3.5}


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


@pytest.mark.parametrize("path", [REPO / "configs/build/synthetic.yaml", None], ids=["shipped yaml", "defaults"])
def test_mode_guidance_is_the_model_cards(path):
    cfg = load_config(SyntheticBuildConfig, path)
    family = cfg.generate.model.rstrip("/").rsplit("/", 1)[-1].lower()
    assert family in MODEL_CARD_GUIDANCE, f"no model-card guidance known for {cfg.generate.model!r}"
    modes = cfg.modes
    got = {m: getattr(modes, m).guidance for m in ("inpaint_replace", "inpaint_remove", "img2img", "text2img")}
    assert got == dict.fromkeys(got, MODEL_CARD_GUIDANCE[family])
