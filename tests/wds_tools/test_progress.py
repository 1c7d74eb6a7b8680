"""Progress lines in log files: one readable line per interval, never carriage returns."""

from __future__ import annotations

import io

from wds_tools.progress import LineProgress, progress


def test_line_progress_writes_plain_lines_at_most_once_per_interval():
    out = io.StringIO()
    bar = LineProgress(total=1000, desc="build", unit="img", interval=3600.0, file=out)
    for _ in range(1000):
        bar.update()
    assert out.getvalue() == ""  # the interval has not passed: nothing yet
    bar.set_postfix(shards=4)
    bar.close()
    lines = out.getvalue().splitlines()
    assert len(lines) == 1 and "\r" not in out.getvalue()
    assert lines[0].startswith("build: 1000/1000 (") and lines[0].endswith("img/s) shards=4")


def test_line_progress_prints_when_interval_passes():
    out = io.StringIO()
    bar = LineProgress(total=None, desc="x", interval=0.0, file=out)
    bar.update(2)
    bar.update(3)
    assert [line.split(" (")[0] for line in out.getvalue().splitlines()] == ["x: 2", "x: 5"]


def test_progress_is_lines_when_stderr_is_not_a_terminal(monkeypatch):
    monkeypatch.setattr("sys.stderr", io.StringIO())
    assert isinstance(progress(total=3, desc="d"), LineProgress)
