"""A tiny open_clip model built through the model layer (seeded random weights)."""

from __future__ import annotations

from pathlib import Path

import pytest

from clip_models.config import ModelConfig

REPO = Path(__file__).resolve().parents[2]
TINY_JSON = REPO / "configs" / "models" / "tiny-clip.json"
TINY = ModelConfig(name=str(TINY_JSON), device="cpu", precision="fp32")


@pytest.fixture(scope="module")
def tiny():
    from clip_models.loading import create_model

    return create_model(TINY).eval()
