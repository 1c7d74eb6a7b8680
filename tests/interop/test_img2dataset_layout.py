"""Shards in img2dataset's layout are a valid input of the quality filter and of Stage 2.

img2dataset writes ``00000.tar`` with ``000000000.jpg/.txt/.json`` members (its json holds url,
key, status, caption, width, height: no ``source``, no class) and ``00000.parquet`` plus
``00000_stats.json`` beside each shard, with no ``dataset.json``.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from builders.quality.run import run as run_filter
from tests.builders.quality.conftest import tiny_config
from tests.common.img2dataset import write_img2dataset_shards
from tests.training.conftest import TINY_CONFIG
from training.config import Stage2Config
from wds_tools.config import load_config
from wds_tools.reader import iter_shard


@pytest.fixture(scope="module")
def img2dataset_dir(tmp_path_factory) -> Path:
    return write_img2dataset_shards(tmp_path_factory.mktemp("img2dataset"))


def test_reader_yields_every_sample_of_the_layout(img2dataset_dir):
    keys = [s["__key__"] for url in sorted(img2dataset_dir.glob("*.tar")) for s in iter_shard(str(url))]
    assert len(keys) == 12 and len(set(keys)) == 12


def test_quality_filter_scores_img2dataset_shards(img2dataset_dir, tmp_path):
    report = run_filter(tiny_config(tmp_path, f"input=[{img2dataset_dir}]"))
    assert report["total"] == 12
    assert report["kept"] + report["dropped"] == 12
    assert sorted(p.name for p in img2dataset_dir.glob("*.quality.tar")) == ["00000.quality.tar",
                                                                              "00001.quality.tar"]


def test_stage2_trains_on_img2dataset_shards(img2dataset_dir, tmp_path):
    from training.trainer import train

    cfg = load_config(Stage2Config, TINY_CONFIG, [
        f"data.real=[{img2dataset_dir}]", "data.synthetic=[]", "data.use_quality=false",
        f"train.output={tmp_path / 'out'}", "train.max_steps=2", "train.samples_per_epoch=12",
        "train.checkpoint_every=0", "eval.before=false", "eval.after=false", "data.num_workers=0"])
    log = train(cfg)
    assert [e["step"] for e in log["training_log"]] == [1, 2]
    assert all(e["total_loss"] == e["total_loss"] for e in log["training_log"])  # finite, not NaN
