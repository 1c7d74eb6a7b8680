"""A real S3 API server on loopback for the object-store tests: moto's standalone server (the one
s3fs's own test suite runs), started per test on 127.0.0.1 at a free port and stopped with it.

The fixture sets ``AWS_ENDPOINT_URL`` and test credentials in the environment (children, such as
DataLoader workers and launched processes, inherit them), creates a bucket, and skips with a
message where ``moto[server]`` or ``s3fs`` (the ``cloud`` and ``dev`` extras) is not installed.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.store.server import start_moto, stop

BUCKET = "shards"


@dataclass
class S3Server:
    """A running server: ``endpoint``, a client ``fs`` on it, and helpers for the test bucket."""

    endpoint: str
    proc: subprocess.Popen
    fs: object  # s3fs.S3FileSystem
    bucket: str = BUCKET

    def url(self, *parts: str) -> str:
        return "/".join([f"s3://{self.bucket}", *parts])

    def upload(self, local: Path, *parts: str) -> str:
        """Copy the files of folder ``local`` (not its subfolders) under ``s3://bucket/parts``."""
        for f in sorted(p for p in Path(local).iterdir() if p.is_file()):
            self.fs.put_file(str(f), self.url(*parts, f.name))
        return self.url(*parts)


@pytest.fixture
def start_s3_server(monkeypatch, tmp_path_factory) -> Iterator[Callable[..., S3Server]]:
    """``start_s3_server(auth=False)``: a fresh server (``auth=True``: one that refuses unknown
    keys, as a real store refuses bad credentials), the environment pointed at it, a bucket made."""
    pytest.importorskip("moto.server", reason="the S3 server tests need moto[server] (pip install -e '.[dev]')")
    s3fs = pytest.importorskip("s3fs", reason="the S3 tests need s3fs (pip install -e '.[cloud]')")
    procs: list[subprocess.Popen] = []

    def start(*, auth: bool = False) -> S3Server:
        proc, endpoint = start_moto(auth=auth)
        procs.append(proc)
        for name, value in (("AWS_ENDPOINT_URL", endpoint), ("AWS_ACCESS_KEY_ID", "testing"),
                            ("AWS_SECRET_ACCESS_KEY", "testing"), ("AWS_DEFAULT_REGION", "us-east-1")):
            monkeypatch.setenv(name, value)
        # Staging folders are keyed by the output URL alone (the same path on every machine of a
        # cluster), so test runs that write s3://shards/... to different servers would share one.
        monkeypatch.setenv("WDS_STAGING_DIR", str(tmp_path_factory.mktemp("staging")))
        for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
            monkeypatch.delenv(name, raising=False)
        s3fs.S3FileSystem.clear_instance_cache()  # a cached client would still talk to the last server
        fs = s3fs.S3FileSystem(skip_instance_cache=True)
        if not auth:
            fs.mkdir(BUCKET)
        return S3Server(endpoint=endpoint, proc=proc, fs=fs)

    yield start
    for proc in procs:
        stop(proc)
    s3fs.S3FileSystem.clear_instance_cache()


@pytest.fixture
def s3_server(start_s3_server) -> S3Server:
    """A running S3 API server on 127.0.0.1 with an empty bucket ``shards``."""
    return start_s3_server()
