"""Start and stop moto's standalone S3 API server on 127.0.0.1 (tests and benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_moto(*, auth: bool = False) -> tuple[subprocess.Popen, str]:
    """Start ``moto_server`` on 127.0.0.1 at a free port; ``(process, endpoint URL)`` once it answers.
    ``auth``: check every request's access key against the server's (empty) IAM users."""
    env = dict(os.environ)
    if auth:
        env["INITIAL_NO_AUTH_ACTION_COUNT"] = "0"
    for _ in range(3):  # a free port can be taken between the probe and the bind: try another
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        endpoint = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=2).close()
                return proc, endpoint
            except OSError:
                time.sleep(0.2)
        proc.kill()
        proc.wait()
    raise RuntimeError("moto_server did not start on 127.0.0.1")


def stop(proc: subprocess.Popen) -> None:
    """Stop a server started by :func:`start_moto` (killed if it ignores SIGTERM for 10 s)."""
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
