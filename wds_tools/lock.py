"""An exclusive lock on an output folder, and process liveness checks.

``OutputLock(path, tool=...)`` creates ``path`` with ``O_EXCL`` and writes who holds it (host,
pid, the pid's start time, tool, command line, when). A second job that finds the lock fails fast
with :class:`LockHeld`, naming the holder. A lock is *stale*, and is taken over, when:

- its host is this host and its pid is dead (or is a new process that reused the pid: the start
  time differs);
- its host is another host, it has not been refreshed for ``foreign_stale_s`` and the caller
  passed ``break_foreign=True`` (this host cannot see the other host's processes, so only the
  user can say it is dead). The holder refreshes the lock's mtime every ``heartbeat_s`` while it
  runs, so a live holder on another host is never broken.

Taking over a stale lock is itself guarded by a short-lived ``<path>.break`` file, so two jobs that
find the same stale lock cannot both take it. Works on local and shared (NFS) file systems, where
``O_EXCL`` create is atomic; object stores have no locks.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import sys
import threading
import time
from pathlib import Path

log = logging.getLogger("wds_tools")
_TEMP_RE = re.compile(r"\.tmp-(\d+)-[0-9a-f]+$")



def holder_record(tool: str, **extra) -> dict:
    """What a lock records of its holder: host, pid and its start time, tool, argv, time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "start_time": process_start_time(os.getpid()),
            "tool": tool, "argv": sys.argv, "time": time.time(), **extra}


def is_this_process(holder: dict | None) -> bool:
    """True when a lock's holder record names this very process (on this host)."""
    return bool(holder) and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()

class LockHeld(FileExistsError):
    """Another live job holds the output lock (its holder is in the message and ``holder``)."""

    def __init__(self, message: str, holder: dict):
        super().__init__(message)
        self.holder = holder


def process_start_time(pid: int) -> int | None:
    """The pid's start time in clock ticks since boot (Linux), None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces or parentheses: split after the last ')'
    return int(stat.rsplit(")", 1)[1].split()[19])


def pid_alive(pid: int, start_time: int | None = None) -> bool:
    """True when ``pid`` is a running process of this host (a zombie counts as dead).

    With ``start_time`` (from :func:`process_start_time`), a different process that reused the
    pid counts as dead too.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # exists, owned by someone else
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    except OSError:
        return True  # no /proc here: kill(0) is all we know
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] in ("Z", "X"):
        return False
    return start_time is None or int(fields[19]) == start_time


def remove_stale_temps(folder: str | Path, *, name_prefix: str = "", contains: str = "") -> list[Path]:
    """Delete ``<name>.tmp-PID-XXXX`` files (see ``wds_tools.atomic``) of dead pids of this host.

    Only call this while holding the folder's lock: on a shared file system the pid of another
    host's writer means nothing here, and the lock is what says no such writer runs.
    """
    removed = []
    try:
        entries = list(Path(folder).iterdir())
    except FileNotFoundError:
        return removed
    for p in entries:
        m = _TEMP_RE.search(p.name)
        if (m and p.name.startswith(name_prefix) and contains in p.name and p.is_file()
                and not pid_alive(int(m.group(1)))):
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        log.info("removed %d temp files of killed writers in %s", len(removed), folder)
    return removed


def describe_holder(h: dict) -> str:
    """One line about a lock holder: tool, pid, host, start time and age."""
    age = time.time() - float(h.get("time", time.time()))
    return (f"{h.get('tool', '?')} pid {h.get('pid', '?')} on {h.get('host', '?')}, started "
            f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(h.get('time', 0)))} ({age:.0f} s ago)")


class OutputLock:
    """Exclusive lock file for one output folder; use as a context manager.

    >>> with OutputLock(out / "build.lock", tool="builders.real"):
    ...     build()
    """

    def __init__(self, path: str | Path, *, tool: str, break_foreign: bool = False,
                 foreign_stale_s: float = 600.0, heartbeat_s: float = 30.0):
        self.path = Path(path)
        self.tool, self.break_foreign = tool, break_foreign
        self.foreign_stale_s, self.heartbeat_s = foreign_stale_s, heartbeat_s
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None
        self.held = False

    def _record(self) -> dict:
        return holder_record(self.tool)

    def _create(self) -> bool:
        try:
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as f:
            json.dump(self._record(), f)
            f.flush()
            os.fsync(f.fileno())
        return True

    def _read_holder(self) -> dict | None:
        """The lock's content; None when it vanished; ``{}`` when unreadable (a holder mid-write)."""
        try:
            text = self.path.read_text()
        except FileNotFoundError:
            return None
        try:
            h = json.loads(text)
        except ValueError:
            return {}
        return h if isinstance(h, dict) else {}

    def stale_reason(self, holder: dict) -> str | None:
        """Why ``holder``'s lock may be taken over, or None while it may still be alive."""
        if holder.get("host") == socket.gethostname():
            pid = int(holder.get("pid", -1))
            if not pid_alive(pid, holder.get("start_time")):
                return f"its process {pid} is gone"
            return None
        if not holder:
            try:  # a lock nobody could finish writing: stale once old
                age = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                return "it vanished"
            return "it is empty" if age > 60 else None
        try:
            idle = time.time() - self.path.stat().st_mtime
        except FileNotFoundError:
            return "it vanished"
        if self.break_foreign and idle > self.foreign_stale_s:
            return f"it was last refreshed {idle:.0f} s ago and breaking it was asked for"
        return None

    def _refusal(self, holder: dict) -> LockHeld:
        msg = f"{self.path.parent} is in use by {describe_holder(holder)} (lock file {self.path})"
        if holder and holder.get("host") != socket.gethostname():
            try:
                idle = time.time() - self.path.stat().st_mtime
            except FileNotFoundError:
                idle = 0.0
            if idle > self.foreign_stale_s:
                msg += (f"; it was last refreshed {idle:.0f} s ago: if that job is dead, rerun with "
                        f"break_lock=true to take the lock over")
            else:
                msg += f"; it was refreshed {idle:.0f} s ago, so that job is alive"
        return LockHeld(msg, holder)

    def _take_over(self, holder: dict, reason: str) -> None:
        guard = self.path.with_name(self.path.name + ".break")
        try:
            fd = os.open(guard, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:  # a breaker killed inside this tiny window leaves its guard behind
                if time.time() - guard.stat().st_mtime > 60:
                    guard.unlink(missing_ok=True)
            except FileNotFoundError:
                pass
            return  # someone else is breaking it: the caller retries
        os.close(fd)
        try:
            if self._read_holder() == holder:  # still the stale lock we judged, not a new one
                log.warning("taking over the lock %s of %s: %s", self.path, describe_holder(holder), reason)
                self.path.unlink(missing_ok=True)
        finally:
            guard.unlink(missing_ok=True)

    def acquire(self) -> OutputLock:
        """Take the lock or raise :class:`LockHeld`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        holder: dict = {}
        for _ in range(50):
            if self._create():
                self.held = True
                self._start_heartbeat()
                return self
            holder = self._read_holder()
            if holder is None:
                continue  # released meanwhile
            reason = self.stale_reason(holder)
            if reason is not None:
                self._take_over(holder, reason)
            elif holder:
                raise self._refusal(holder)
            time.sleep(0.02)  # a holder between its create and its write, or a breaker at work
        raise self._refusal(holder)

    def _start_heartbeat(self) -> None:
        def beat() -> None:
            while not self._stop.wait(self.heartbeat_s):
                try:
                    os.utime(self.path)
                except OSError:
                    return

        self._beat = threading.Thread(target=beat, name="output-lock-heartbeat", daemon=True)
        self._beat.start()

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        if not self.held:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        holder = self._read_holder()
        if is_this_process(holder):
            self.path.unlink(missing_ok=True)
        self.held = False

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def live_holder(path: str | Path) -> dict | None:
    """The holder of the lock file ``path`` while it may be alive (None: no lock, or a stale one)."""
    lock = OutputLock(path, tool="")
    holder = lock._read_holder()
    if not holder:
        return None
    return holder if lock.stale_reason(holder) is None else None
