"""Without the ``cloud`` extra, an ``s3://`` or ``gs://`` URL is one line naming the extra and
exit status 2, not fsspec's ``ImportError`` traceback."""

from __future__ import annotations

import sys

import pytest

from wds_tools.inspect import main as inspect_main
from wds_tools.materialize import main as materialize_main
from wds_tools.urls import CLOUD_EXTRA_HINT, MissingBackendError, expand_urls, open_url

PROG = "remoteclip-job"


@pytest.fixture
def no_backends(monkeypatch):
    """s3fs and gcsfs as if not installed: their imports fail and fsspec has no class cached."""
    import fsspec.registry  # noqa: F401 - the module, whose name the package's mapping shadows

    registry = sys.modules["fsspec.registry"]._registry
    for proto, module in (("s3", "s3fs"), ("s3a", "s3fs"), ("gs", "gcsfs"), ("gcs", "gcsfs")):
        monkeypatch.delitem(registry, proto, raising=False)
        monkeypatch.setitem(sys.modules, module, None)  # `import s3fs` raises ImportError
    monkeypatch.setattr(sys, "argv", [PROG])


@pytest.mark.parametrize("url", ["s3://bucket/shards/{000000..000001}.tar", "gs://bucket/shards.txt"])
def test_expand_and_open_name_the_extra(no_backends, url):
    with pytest.raises(MissingBackendError, match=r"pip install 'remoteclip-wds\[cloud\]'"):
        expand_urls(url)
    with pytest.raises(MissingBackendError, match="needs an fsspec backend"):
        open_url(url.replace("{000000..000001}", "000000"))


def test_entry_points_print_one_line_and_exit_2(no_backends, tmp_path, capsys):
    assert inspect_main(["s3://bucket/shards/000000.tar"]) == 2
    assert materialize_main(["--input", "s3://bucket/shards", "--output", str(tmp_path / "m"),
                             "sidecars=[]", "require_keep=[]"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err, err
    lines = err.strip().splitlines()
    assert len(lines) == 2, err
    for line, url in zip(lines, ("s3://bucket/shards/000000.tar", "s3://bucket/shards")):
        assert line.startswith(f"{PROG}: error: {url!r} needs an fsspec backend"), line
        assert line.endswith(CLOUD_EXTRA_HINT), line
