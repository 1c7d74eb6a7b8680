"""An output given as a URL (``s3://bucket/x``) to a job that writes only to local folders: one
line naming the argument and the value, exit status 2, and never a local folder named ``s3:``
(``Path("s3://b/x")`` is the relative path ``s3:/b/x``)."""

from __future__ import annotations

import sys

import pytest

from builders.quality.__main__ import main as quality_main
from builders.real.__main__ import main as real_main
from builders.synthetic.__main__ import main as synthetic_main
from tests.builders.conftest import demo_tree  # noqa: F401 - the builders' own fixture
from tests.common.cli import FILTER, PROG, REAL, SYNTHETIC, error_line, filter_shards
from training.train import main as train_main
from wds_tools.materialize import main as materialize_main

URLS = pytest.mark.parametrize("url", ["s3://bucket/out", "gs://bucket/out", "file:///tmp/out"])


@pytest.fixture(autouse=True)
def _in_empty_cwd(tmp_path, monkeypatch):
    """Each job runs in an empty working directory, where a folder named ``s3:`` would show."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    monkeypatch.setattr(sys, "argv", [PROG])
    yield
    assert sorted(p.name for p in cwd.iterdir()) == [], "a URL output became a local folder"


def _refused(capsys, arg: str, url: str) -> None:
    error_line(capsys, f"{arg}={url!r} is a URL")


@URLS
def test_real_builder_refuses_a_url_output(demo_tree, capsys, url):  # noqa: F811
    assert real_main([*REAL, "--input", str(demo_tree), "--output", url]) == 2
    _refused(capsys, "output", url)


@URLS
def test_synthetic_builder_refuses_a_url_output(shard_dir, capsys, url):
    assert synthetic_main([*SYNTHETIC, "--input", str(shard_dir), "--output", url]) == 2
    _refused(capsys, "output", url)


def test_synthetic_builder_refuses_a_url_work_dir(shard_dir, tmp_path, capsys):
    url = "s3://bucket/work"
    assert synthetic_main([*SYNTHETIC, f"work_dir={url}", "--input", str(shard_dir),
                           "--output", str(tmp_path / "syn")]) == 2
    _refused(capsys, "work_dir", url)


@URLS
def test_filter_refuses_a_url_report_folder(tmp_path, capsys, url):
    shards = filter_shards(tmp_path / "shards")
    assert quality_main([*FILTER, "--input", str(shards), "--output", url]) == 2
    _refused(capsys, "output", url)
    assert sorted(p.name for p in shards.iterdir()) == ["f-000000.stats.json", "f-000000.tar"]


@URLS
def test_materialize_refuses_a_url_output(shard_dir, capsys, url):
    assert materialize_main(["--input", str(shard_dir), "--output", url, "sidecars=[]", "require_keep=[]"]) == 2
    _refused(capsys, "output", url)


def test_training_refuses_a_url_output(capsys):
    url = "s3://bucket/run"
    assert train_main(["--output", url]) == 2
    _refused(capsys, "train.output", url)
