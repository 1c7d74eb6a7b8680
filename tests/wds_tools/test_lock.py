"""Output locks: held, stale on this host, stale on another host, released; stale temp files."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from wds_tools.lock import LockHeld, OutputLock, pid_alive, process_start_time, remove_stale_temps

REPO = Path(__file__).resolve().parents[2]


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def _plant(path: Path, **holder) -> None:
    path.write_text(json.dumps({"tool": "builders.real", "time": time.time(), **holder}))


def test_held_lock_refuses_a_second_taker_naming_the_holder(tmp_path):
    path = tmp_path / "out" / "build.lock"
    code = (f"from wds_tools.lock import OutputLock; OutputLock({str(path)!r}, tool='builders.real').acquire(); "
            "print('held', flush=True); input()")
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockHeld) as e:
            OutputLock(path, tool="builders.real", break_foreign=True).acquire()
        assert f"builders.real pid {holder.pid} on {socket.gethostname()}" in str(e.value)
        assert str(path) in str(e.value) and e.value.holder["pid"] == holder.pid
        assert isinstance(e.value, FileExistsError)
    finally:
        holder.kill()
        holder.wait()
    with OutputLock(path, tool="builders.real") as lock:  # the holder died: stale, taken over
        assert json.loads(path.read_text())["pid"] == os.getpid() and lock.held
    assert not path.exists()


def test_dead_or_reused_pid_on_this_host_is_stale(tmp_path):
    path = tmp_path / "build.lock"
    _plant(path, host=socket.gethostname(), pid=_dead_pid())
    with OutputLock(path, tool="t"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    # a live pid whose start time differs is another process that reused the pid
    _plant(path, host=socket.gethostname(), pid=os.getppid(), start_time=process_start_time(os.getppid()) + 1)
    with OutputLock(path, tool="t"):
        assert json.loads(path.read_text())["pid"] == os.getpid()
    _plant(path, host=socket.gethostname(), pid=os.getppid(), start_time=process_start_time(os.getppid()))
    with pytest.raises(LockHeld):
        OutputLock(path, tool="t").acquire()


def test_another_hosts_lock_is_broken_only_when_old_and_asked(tmp_path):
    path = tmp_path / "build.lock"
    _plant(path, host="elsewhere-node", pid=1)
    with pytest.raises(LockHeld, match=r"refreshed \d+ s ago, so that job is alive"):
        OutputLock(path, tool="t", break_foreign=True).acquire()
    old = time.time() - 3600
    os.utime(path, (old, old))
    with pytest.raises(LockHeld, match="if that job is dead, rerun with break_lock=true"):
        OutputLock(path, tool="t").acquire()
    with OutputLock(path, tool="t", break_foreign=True):
        assert json.loads(path.read_text())["host"] == socket.gethostname()


def test_heartbeat_refreshes_and_release_spares_a_foreign_lock(tmp_path):
    path = tmp_path / "build.lock"
    lock = OutputLock(path, tool="t", heartbeat_s=0.05).acquire()
    old = time.time() - 3600
    os.utime(path, (old, old))
    deadline = time.monotonic() + 10
    while path.stat().st_mtime < time.time() - 60:
        assert time.monotonic() < deadline, "the holder must refresh its lock"
        time.sleep(0.05)
    _plant(path, host="elsewhere-node", pid=1)  # taken over meanwhile by someone else
    lock.release()
    assert path.exists()


def test_remove_stale_temps_keeps_live_writers(tmp_path):
    dead, live = _dead_pid(), os.getpid()
    names = [f"a.quality.tar.tmp-{dead}-0a1b2c3d", f"a.quality.tar.tmp-{live}-0a1b2c3d",
             f"other.tar.tmp-{dead}-0a1b2c3d", "a.quality.tar"]
    for n in names:
        (tmp_path / n).write_bytes(b"x")
    removed = remove_stale_temps(tmp_path, contains=".quality.tar.tmp-")
    assert [p.name for p in removed] == [names[0]]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names[1:])
    assert pid_alive(live) and not pid_alive(dead) and not pid_alive(-1)
