import pytest

from wds_tools.reader import iter_shard
from wds_tools.urls import PipeRefusedError, expand_urls, open_url, sidecar_url


def _names(urls):
    return [u.rsplit("/", 1)[-1] for u in urls]


ALL = ["real-train-000000.tar", "real-train-000001.tar", "real-train-000002.tar"]


def test_brace_pattern(shard_dir):
    assert _names(expand_urls(f"{shard_dir}/real-train-{{000000..000002}}.tar")) == ALL


def test_directory_excludes_sidecars_and_temps(shard_dir):
    (shard_dir / "real-train-000000.quality.tar").write_bytes(b"")
    (shard_dir / "real-train-000003.tar.tmp-1-abc").write_bytes(b"")
    assert _names(expand_urls(shard_dir)) == ALL


def test_txt_list_with_comments_and_relative_entries(shard_dir):
    lst = shard_dir / "list.txt"
    lst.write_text(f"# my mix\nreal-train-000002.tar\n\n{shard_dir}/real-train-000000.tar  # absolute\n")
    assert _names(expand_urls(str(lst))) == ["real-train-000002.tar", "real-train-000000.tar"]


def test_list_of_sources(shard_dir):
    urls = expand_urls([str(shard_dir / "real-train-000001.tar"), f"{shard_dir}/real-train-{{000000..000000}}.tar"])
    assert _names(urls) == ["real-train-000001.tar", "real-train-000000.tar"]


def test_missing_shard_is_named(shard_dir):
    with pytest.raises(FileNotFoundError, match=r"real-train-000003.tar.*\(7 of 10 missing\)"):
        expand_urls(f"{shard_dir}/real-train-{{000000..000009}}.tar")


def test_fsspec_url(shard_dir):
    urls = expand_urls(f"file://{shard_dir}/real-train-000000.tar")
    assert len(list(iter_shard(urls[0]))) == 4


def test_memory_filesystem_directory(shard_dir):
    """An object-store-like filesystem goes through the same fsspec path as s3:// or gs://."""
    import fsspec

    fs = fsspec.filesystem("memory")
    for name in ALL:
        fs.pipe(f"/bucket/ds/{name}", (shard_dir / name).read_bytes())
    urls = expand_urls("memory://bucket/ds")
    assert _names(urls) == ALL
    assert sum(1 for u in urls for _ in iter_shard(u)) == 10


def test_pipe_refused_by_default(shard_dir, tmp_path):
    marker = tmp_path / "ran"
    url = f"pipe:touch {marker} && cat {shard_dir}/real-train-000000.tar"
    with pytest.raises(PipeRefusedError, match="allow_pipe"):
        expand_urls(url)
    lst = tmp_path / "evil.txt"
    lst.write_text(url + "\n")
    with pytest.raises(PipeRefusedError):
        expand_urls(str(lst))
    with pytest.raises(PipeRefusedError):
        open_url(url)
    assert not marker.exists()


def test_pipe_allowed_when_opted_in(shard_dir):
    url = f"pipe:cat {shard_dir}/real-train-000000.tar"
    assert expand_urls(url, allow_pipe=True) == [url]
    assert len(list(iter_shard(url, allow_pipe=True))) == 4


def test_sidecar_url():
    assert sidecar_url("s3://b/x-000001.tar", "quality") == "s3://b/x-000001.quality.tar"
    with pytest.raises(ValueError):
        sidecar_url("x.tar", "a.b")


@pytest.fixture
def http_root(shard_dir):
    """Serve ``shard_dir`` over HTTP on the loopback interface."""
    import functools
    import http.server
    import threading

    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(shard_dir))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


def test_http_urls_and_remote_list(http_root, shard_dir):
    urls = expand_urls(f"{http_root}/real-train-{{000000..000001}}.tar")
    assert sum(1 for u in urls for _ in iter_shard(u)) == 8
    (shard_dir / "remote.txt").write_text("real-train-000002.tar\n")
    assert expand_urls(f"{http_root}/remote.txt") == [f"{http_root}/real-train-000002.tar"]
    with pytest.raises(FileNotFoundError, match="real-train-000007.tar"):
        expand_urls(f"{http_root}/real-train-000007.tar")


def test_vanished_shard_keeps_one_line_through_a_loader_worker(shard_dir):
    import pickle
    import traceback

    from wds_tools.urls import ShardNotFoundError

    gone = str(shard_dir / "real-train-000009.tar")
    with pytest.raises(ShardNotFoundError) as e:
        list(iter_shard(gone))
    assert str(e.value) == f"shard not found: {gone!r} (deleted or moved?)"
    # how torch hands a worker's exception to the main process: type(e)(text with the traceback)
    text = "".join(traceback.format_exception(e.value))
    rebuilt = type(e.value)(f"Caught ShardNotFoundError in DataLoader worker process 0.\nOriginal {text}")
    assert str(rebuilt) == str(e.value) and isinstance(rebuilt, FileNotFoundError)
    assert str(pickle.loads(pickle.dumps(e.value))) == str(e.value)
    assert str(ShardNotFoundError("other text")) == "other text"
