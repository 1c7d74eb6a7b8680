"""Tiny shards for the quality filter: real and synthetic samples, plus broken ones."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from builders.quality.config import QualityConfig
from wds_tools.config import load_config
from wds_tools.sample import encode_image, make_key, make_sample
from wds_tools.writer import ShardWriter, shard_name, write_shard

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[3]
TINY_YAML = REPO / "configs" / "filter" / "tiny.yaml"
UCM = REPO.parent / "shared" / "data" / "ucm_sample"
if not UCM.exists():
    UCM = Path("/work/shared/data/ucm_sample")


def texture(seed: int, size: int = 64, border: float = 0.0) -> Image.Image:
    """Aerial-like texture; ``border`` blacks out that share of columns from the left."""
    rng = np.random.default_rng(seed)
    base = np.array(Image.fromarray((rng.random((4, 4, 3)) * 150 + 60).astype(np.uint8)).resize((size, size)),
                    dtype=np.float32)
    img = (base + rng.normal(0, 25, base.shape)).clip(0, 255).astype(np.uint8)
    img[:, : int(border * size)] = 0
    return Image.fromarray(img)


def tiny_config(tmp_path: Path, *overrides: str) -> QualityConfig:
    """The tiny CPU config with test-sized batches, resolved from the repository root."""
    return load_config(QualityConfig, TINY_YAML, [
        f"model.name={REPO / 'configs' / 'models' / 'tiny-clip.json'}", "model.batch_size=4",
        f"output={tmp_path / 'report'}", "report.thumb_size=48", *overrides,
    ])


def good_sample(i: int, *, source: str = "real", border: float = 0.0, caption: str | None = None,
                boxes: list | None = None) -> dict:
    meta = {"source": source, "class": "field", "split": "train"}
    if boxes is not None:
        meta["boxes"] = boxes
    return make_sample(key=make_key("s", i), image=encode_image(texture(i, border=border)),
                       caption=caption or f"an aerial image of field {i}", meta=meta)


def bad_samples(start: int) -> list[dict]:
    """No caption, undecodable jpg, no image: built as raw members (make_sample refuses them)."""
    ok = good_sample(start)
    no_caption = {k: v for k, v in good_sample(start).items() if k != "txt"}
    no_caption["__key__"] = make_key("nocap", start)
    broken = dict(good_sample(start + 1), jpg=b"\xff\xd8 this is not a jpeg", __key__=make_key("broken", start))
    no_image = {k: v for k, v in ok.items() if k != "jpg"}
    no_image["__key__"] = make_key("noimg", start)
    return [no_caption, broken, no_image]


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    return make_shards(tmp_path / "shards")


def make_shards(d: Path) -> Path:
    """Three shards: clean real, real with borders + broken samples, synthetic with claims."""
    d.mkdir()
    write_shard(d / shard_name("q", 0), [good_sample(i) for i in range(6)])
    with ShardWriter(d / shard_name("q", 1)) as w:
        for i in range(6, 10):
            w.write(good_sample(i, border=0.4 if i % 2 else 0.0))
        for s in bad_samples(100):
            w.write(s)
    boxes = [{"box": [0.05, 0.1, 0.3, 0.4], "label": "building", "score": 1.0, "source": "detector"},
             {"box": [0.6, 0.5, 0.9, 0.8], "label": "building", "score": 1.0, "source": "detector"}]
    write_shard(d / shard_name("q", 2), [
        good_sample(20 + i, source="synthetic", boxes=boxes,
                    caption="two buildings, one on the left" if i % 2 else "five buildings in the center")
        for i in range(6)
    ])
    return d
