"""An output given as a URL (``s3://bucket/x``) to a job that writes only to local folders: one
line naming the argument and the value, exit status 2, and never a local folder named ``s3:``
(``Path("s3://b/x")`` is the relative path ``s3:/b/x``). The builders and materialize write to
URLs (``wds_tools.remote_output``; tested against a real S3 server in ``tests/store``): a store they
cannot reach is one line naming the URL, and no local folder either."""

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


UNREACHABLE = "s3://bucket/out"


@pytest.fixture
def no_store(monkeypatch):
    """An S3 endpoint nothing listens on (port 9, discard), tried once."""
    s3fs = pytest.importorskip("s3fs", reason="needs s3fs (the cloud extra)")
    for name, value in (("AWS_ENDPOINT_URL", "http://127.0.0.1:9"), ("AWS_MAX_ATTEMPTS", "1"),
                        ("AWS_ACCESS_KEY_ID", "x"), ("AWS_SECRET_ACCESS_KEY", "y")):
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()
    yield
    s3fs.S3FileSystem.clear_instance_cache()


def _unreachable(capsys) -> None:
    error_line(capsys, repr(UNREACHABLE), "cannot reach the object store")


def test_real_builder_on_an_unreachable_store(demo_tree, capsys, no_store):  # noqa: F811
    assert real_main([*REAL, "--input", str(demo_tree), "--output", UNREACHABLE]) == 2
    _unreachable(capsys)


def test_synthetic_builder_on_an_unreachable_store(shard_dir, capsys, no_store):
    assert synthetic_main([*SYNTHETIC, "--input", str(shard_dir), "--output", UNREACHABLE]) == 2
    _unreachable(capsys)


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


def test_materialize_on_an_unreachable_store(shard_dir, capsys, no_store):
    assert materialize_main(["--input", str(shard_dir), "--output", UNREACHABLE, "sidecars=[]",
                             "require_keep=[]"]) == 2
    _unreachable(capsys)


def test_training_refuses_a_url_output(capsys):
    url = "s3://bucket/run"
    assert train_main(["--output", url]) == 2
    _refused(capsys, "train.output", url)
