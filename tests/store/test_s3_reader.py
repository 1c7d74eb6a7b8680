"""Shards on a real S3 API server (moto, 127.0.0.1): URL lists that mix ``s3://`` and local shards
read the same samples as local disk; a shard gone mid-run is a counted skip with its URL logged;
refused credentials are one line naming the URL."""

from __future__ import annotations

import logging

import pytest

from tests.conftest import make_contract_samples
from wds_tools.reader import iter_shard
from wds_tools.skips import SkipLog
from wds_tools.urls import StoreAccessError, expand_urls
from wds_tools.writer import shard_name, write_shard


@pytest.fixture
def local_shards(tmp_path):
    folder = tmp_path / "real"
    folder.mkdir()
    samples = make_contract_samples(9)
    for i in range(3):
        write_shard(folder / shard_name("real", i), samples[3 * i: 3 * i + 3])
    return folder


def _keys(urls: list[str], **kw) -> list[str]:
    return [s["__key__"] for u in urls for s in iter_shard(u, **kw)]


def test_a_url_list_mixing_s3_and_local_reads_what_local_disk_reads(s3_server, local_shards, tmp_path):
    names = sorted(p.name for p in local_shards.glob("*.tar"))
    (local_shards / "all.txt").write_text("".join(f"{n}\n" for n in names))  # relative to the list
    remote = s3_server.upload(local_shards, "real")
    listing = tmp_path / "mix.txt"  # first shard from the store, the others from disk
    listing.write_text(f"{remote}/{names[0]}\n" + "".join(f"{local_shards / n}\n" for n in names[1:]))
    mixed = expand_urls(str(listing))
    assert mixed[0] == f"{remote}/{names[0]}" and mixed[1:] == [str(local_shards / n) for n in names[1:]]
    local = expand_urls(str(local_shards))
    assert _keys(mixed) == _keys(local) == _keys(expand_urls(remote)) and len(_keys(local)) == 9
    assert expand_urls(s3_server.url("real", "all.txt")) == [f"{remote}/{n}" for n in names]
    # a list in another folder of the bucket, naming the shards by a relative path with ".."
    s3_server.fs.pipe(s3_server.url("lists", "up.txt"), "".join(f"../real/{n}\n" for n in names).encode())
    assert expand_urls(s3_server.url("lists", "up.txt")) == [f"{remote}/{n}" for n in names]


def test_a_shard_deleted_after_listing_is_a_counted_skip_with_its_url(s3_server, local_shards, caplog):
    urls = expand_urls(s3_server.upload(local_shards, "real"))
    s3_server.fs.rm(urls[1])  # gone between the listing at start and the read
    skips = SkipLog()
    with caplog.at_level(logging.WARNING, logger="wds_tools"):
        keys = _keys(urls, skips=skips, skip_missing=True)
    assert len(keys) == 6 and skips.as_dict() == {"unreadable_shard": 1}
    assert any(urls[1] in r.getMessage() and "unreadable_shard" in r.getMessage() for r in caplog.records)
    with pytest.raises(FileNotFoundError, match=urls[1]):  # a tool that must read everything still stops
        _keys(urls)


def test_refused_credentials_are_one_error_naming_the_url(start_s3_server):
    server = start_s3_server(auth=True)
    for url in (server.url("real"), server.url("real", "real-000000.tar"), server.url("mix.txt")):
        with pytest.raises(StoreAccessError) as err:
            expand_urls(url)
        message = str(err.value)
        assert message.startswith(f"{url!r}: the object store refused access") and "\n" not in message
        assert "AWS_ACCESS_KEY_ID" in message
