"""Input checks of the synthetic builder: held-out splits refused before any work."""
import json

import pytest

from builders.synthetic.config import SyntheticBuildConfig
from builders.synthetic.sources import SplitRefused, check_train_urls, is_shard_input


@pytest.mark.parametrize("source,urls", [
    ("shards/real/val", ["shards/real/val/real-val-000000.tar"]),
    ("shards/real/test/", ["shards/real/test/real-test-000000.tar"]),
    ("s3://bucket/real/validation/{000000..000001}.tar", ["s3://bucket/real/validation/000000.tar"]),
    ("mixed.txt", ["x/real-train-000000.tar", "x/real-val-000000.tar"]),
])
def test_held_out_names_are_refused(source, urls):
    with pytest.raises(SplitRefused, match="train"):
        check_train_urls(source, urls)


def test_a_manifest_naming_another_split_is_refused(tmp_path):
    d = tmp_path / "shards_a"
    d.mkdir()
    (d / "dataset.json").write_text(json.dumps({"split": "test"}))
    with pytest.raises(SplitRefused, match="split='test'"):
        check_train_urls(str(d), [str(d / "part-000000.tar")])
    (d / "dataset.json").write_text(json.dumps({"split": "train"}))
    check_train_urls(str(d), [str(d / "part-000000.tar")])   # train: accepted


def test_shard_inputs_are_told_from_image_inputs(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "a-000000.tar").write_bytes(b"")
    assert is_shard_input(str(tmp_path / "shards")) and is_shard_input("x/{000..009}.tar")
    assert is_shard_input("list.txt") and not is_shard_input(str(tmp_path / "imgs"))
    assert not is_shard_input("captions.jsonl")


def test_stages_rerun_the_named_stage_and_every_later_one():
    cfg = SyntheticBuildConfig()
    assert cfg.rerun_stages() == ()
    cfg.stages = ["generate"]
    assert cfg.rerun_stages() == ("generate", "verify")
    cfg.stages = ["segment"]
    assert cfg.rerun_stages() == ("segment", "generate", "verify")
    cfg.stages = ["paint"]
    with pytest.raises(ValueError, match="paint"):
        cfg.validate()
