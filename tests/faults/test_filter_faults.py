"""The quality filter under a malformed sample, a concurrent run, and kill -9 in each phase."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from builders.quality.guard import LOCK_NAME
from builders.quality.keep_rules import PENDING
from builders.quality.run import MEMBER, SIDECAR, run
from tests.builders.quality.conftest import REPO, good_sample, tiny_config
from tests.faults.conftest import processes_left
from wds_tools.lock import LockHeld
from wds_tools.reader import iter_tar_samples
from wds_tools.sidecar import read_sidecar
from wds_tools.writer import shard_name, write_shard

SHARDS = 4
CLAIM = "a building on the left"


def _shards(d: Path) -> Path:
    """Four shards of four samples (one batch each, so a partial rerun batches alike)."""
    d.mkdir(parents=True)
    for s in range(SHARDS):
        write_shard(d / shard_name("f", s), [good_sample(s * 4 + i) for i in range(4)])
    return d


def _overrides(shards: Path) -> list[str]:
    return [f"input={shards}", "loader.num_workers=1", "selection.min_clip_score_synthetic=0.0"]


def test_non_numeric_box_is_a_counted_fail_not_a_crash(tmp_path, caplog):
    d = tmp_path / "shards"
    d.mkdir()
    boxes = [{"box": ["left", 0.1, 0.3, 0.4], "label": "building", "source": "detector"}]
    bad = good_sample(1, caption=CLAIM, boxes=boxes)
    bad_area = good_sample(2, caption=CLAIM, boxes=[{"box": [0.1, 0.1, 0.3, 0.4], "area": "big"}])
    write_shard(d / shard_name("b", 0), [good_sample(0), bad, bad_area, good_sample(3, caption=CLAIM, boxes=[])])
    report = run(tiny_config(tmp_path, f"input={d}", "loader.num_workers=0"))
    side = {k: v[MEMBER] for k, v in read_sidecar(str(d / shard_name("b", 0)), SIDECAR).items()}
    assert side["s_1"]["reasons"] == ["bad_boxes"] and side["s_2"]["reasons"] == ["bad_boxes"]
    assert side["s_3"]["scores"]["clip"] is not None and "bad_boxes" not in side["s_3"]["reasons"]
    assert report["total"] == 4 and report["by_reason"]["bad_boxes"] == 2
    logged = [r.message for r in caplog.records if "bad_boxes" in r.message]
    assert any("key=s_1" in m and str(d / shard_name("b", 0)) in m and "'left'" in m for m in logged)


def _hold(path: Path, tool: str) -> subprocess.Popen:
    code = ("import time; from wds_tools.lock import OutputLock; "
            f"OutputLock({str(path)!r}, tool={tool!r}).acquire(); print('held', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)})
    assert holder.stdout.readline().strip() == "held"
    return holder


@pytest.mark.parametrize("where,tool,message", [
    ("shards/" + LOCK_NAME, "builders.quality", "in use by builders.quality pid {pid} on "),
    ("build.lock", "builders.real", "still being written by builders.real pid {pid} on "),  # a split folder
])
def test_second_filter_or_a_running_build_fails_fast(tmp_path, where, tool, message):
    shards = _shards(tmp_path / "shards")
    holder = _hold(tmp_path / where, tool)
    try:
        with pytest.raises(LockHeld, match=message.format(pid=holder.pid)):
            run(tiny_config(tmp_path, *_overrides(shards)))
        assert not list(shards.glob("*.quality.tar*"))
    finally:
        holder.kill()
        holder.wait()


def test_report_path_that_is_a_file_is_a_clear_error(tmp_path):
    shards = _shards(tmp_path / "shards")
    (tmp_path / "report").write_text("not a folder")
    with pytest.raises(ValueError, match=f"{tmp_path / 'report'} is the output but it is a file"):
        run(tiny_config(tmp_path, *_overrides(shards)))


# The filter in a subprocess that SIGKILLs itself just before the k-th rename of a quality sidecar
# into place: the temp file is complete and left behind, as after a kill at the worst moment.
_KILL_AT = """
import os, signal, sys
k, n = int(sys.argv[1]), [0]
real = os.replace
def replace(src, dst, *a, **kw):
    if str(dst).endswith(".quality.tar"):
        n[0] += 1
        if n[0] == k:
            os.kill(os.getpid(), signal.SIGKILL)
    return real(src, dst, *a, **kw)
os.replace = replace
from builders.quality.__main__ import main
sys.exit(main(sys.argv[2:]))
"""


def _filter_killed_at(k: int, shards: Path, tmp_path: Path) -> int:
    cmd = [sys.executable, "-c", _KILL_AT, str(k), "--config", str(REPO / "configs/filter/tiny.yaml"),
           f"model.name={REPO / 'configs/models/tiny-clip.json'}", "model.batch_size=4",
           f"output={tmp_path / 'report'}", "report.thumb_size=48", *_overrides(shards)]
    p = subprocess.Popen(cmd, cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, stderr = p.communicate(timeout=300)
    assert p.returncode == -signal.SIGKILL, stderr
    assert processes_left(p.pid) == [], "decode workers must not outlive the filter"
    return p.pid


def _side_bytes(shards: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(shards.glob("*.quality.tar"))}


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted run: its sidecars' bytes and its report."""
    tmp = tmp_path_factory.mktemp("ref")
    shards = _shards(tmp / "shards")
    report = run(tiny_config(tmp, *_overrides(shards)))
    return _side_bytes(shards), report


def _check_whole(shards: Path, pid: int, *, finals: int, rewritten: int) -> None:
    """After a kill: one temp file of the killed pid; every final sidecar whole and keyed like its
    shard; ``rewritten`` of them already carry phase 2's verdicts."""
    assert len(list(shards.glob(f"*.quality.tar.tmp-{pid}-*"))) == 1
    sides = sorted(shards.glob("*.quality.tar"))
    assert len(sides) == finals
    decided = 0
    for side in sides:
        shard = str(side).replace(".quality.tar", ".tar")
        recs = read_sidecar(shard, SIDECAR)
        assert list(recs) == [s["__key__"] for s in iter_tar_samples(shard)]
        decided += any(PENDING not in r[MEMBER]["reasons"] for r in recs.values())
    assert decided == rewritten


def test_kill_9_in_each_phase_then_rerun_equals_uninterrupted(reference, tmp_path):
    ref_sides, ref_report = reference
    shards = _shards(tmp_path / "shards")
    # phase 1: killed at the 2nd sidecar's rename (one scored sidecar, the second one's temp left)
    pid = _filter_killed_at(2, shards, tmp_path)
    _check_whole(shards, pid, finals=1, rewritten=0)
    # the rerun scores the other 3 (its 3 renames, the stale temp removed first), then phase 2 is
    # killed at its 2nd rewrite: one sidecar has its verdict, the next one's temp is left
    pid = _filter_killed_at(SHARDS - 1 + 2, shards, tmp_path)
    _check_whole(shards, pid, finals=SHARDS, rewritten=1)
    report = run(tiny_config(tmp_path, *_overrides(shards)))
    assert not list(shards.glob("*.tmp-*")), "the killed run's temp file is cleaned at start"
    assert not (shards / LOCK_NAME).exists()
    assert _side_bytes(shards) == ref_sides  # same bytes as the uninterrupted run
    # documented difference: how much of the work this run did
    assert report["shards"]["scored_this_run"] == 0 and report["shards"]["sidecars_rewritten"] == SHARDS - 1
    for key in ("threshold", "total", "kept", "dropped", "by_reason", "by_source"):
        assert report[key] == ref_report[key], key
    assert json.loads((tmp_path / "report" / "quality_report.json").read_text())["kept"] == ref_report["kept"]
