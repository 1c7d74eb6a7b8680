"""Open a local HTML page in headless Chromium and report what a reader would see.

Talks the DevTools protocol over ``--remote-debugging-pipe`` (Chromium reads commands on fd 3 and
answers on fd 4, NUL-separated JSON), so no WebSocket client or driver package is needed. The
browser runs with a fresh profile folder, no network services, no GPU and no sandbox (root in CI).
"""

from __future__ import annotations

import base64
import json
import os
import select
import subprocess
import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
         "--remote-debugging-pipe")
# What the page shows: every image with its load state, every table's size, links, text length.
PAGE_FACTS = """(() => ({
  title: document.title,
  text: document.body ? document.body.innerText.trim().length : 0,
  height: document.documentElement.scrollHeight,
  images: Array.from(document.images).map(i => ({src: i.getAttribute('src'), complete: i.complete,
                                               width: i.naturalWidth, height: i.naturalHeight})),
  tables: Array.from(document.querySelectorAll('table')).map(t => ({rows: t.rows.length,
      cells: t.querySelectorAll('td, th').length, height: t.getBoundingClientRect().height})),
  links: Array.from(document.querySelectorAll('a[href]')).map(a => a.href),
}))()"""


class Browser:
    """One headless Chromium; ``call`` sends a DevTools command and returns its result."""

    def __init__(self, profile: Path, *, timeout: float = 60.0) -> None:
        self.timeout, self._id, self._buf, self.events = timeout, 0, b"", []
        to_chrome, self._send_fd = os.pipe()
        self._recv_fd, from_chrome = os.pipe()
        # bash moves the two pipe ends to the fds 3 and 4 Chromium expects (dash takes one-digit fds only)
        cmd = ["bash", "-c", f'exec "$@" 3<&{to_chrome} 4>&{from_chrome}', "bash", str(CHROMIUM), *FLAGS,
               f"--user-data-dir={profile}", "about:blank"]
        self.proc = subprocess.Popen(cmd, pass_fds=(to_chrome, from_chrome), stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        os.close(to_chrome)
        os.close(from_chrome)

    def _read(self) -> dict:
        deadline = time.monotonic() + self.timeout
        while b"\0" not in self._buf:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._recv_fd], [], [], left)[0]:
                raise TimeoutError(f"no answer from Chromium in {self.timeout:.0f} s")
            chunk = os.read(self._recv_fd, 1 << 20)
            if not chunk:
                raise RuntimeError(f"Chromium exited: {self._stderr()}")
            self._buf += chunk
        msg, self._buf = self._buf.split(b"\0", 1)
        return json.loads(msg)

    def _stderr(self) -> str:
        """The end of Chromium's own messages, less its complaints about the missing D-Bus."""
        lines = self.proc.stderr.read().decode(errors="replace").splitlines()
        return "\n".join(line for line in lines if "dbus" not in line)[-2000:]

    def call(self, method: str, params: dict | None = None, session: str | None = None) -> dict:
        self._id += 1
        msg = {"id": self._id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        try:
            os.write(self._send_fd, json.dumps(msg).encode() + b"\0")
        except BrokenPipeError as e:
            raise RuntimeError(f"Chromium is gone ({self.proc.wait()}): {self._stderr()}") from e
        while True:
            reply = self._read()
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_event(self, method: str) -> dict:
        """The first event ``method`` (already received or still to come)."""
        while True:
            for e in self.events:
                if e.get("method") == method:
                    self.events.remove(e)
                    return e
            self.events.append(self._read())

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        os.close(self._send_fd)
        os.close(self._recv_fd)
        self.proc.stderr.close()


def open_page(page: Path, screenshot: Path, profile: Path, *, width: int = 1280) -> dict:
    """Load ``page``, wait for its load event (images included), screenshot the whole page to
    ``screenshot`` and return :data:`PAGE_FACTS`."""
    browser = Browser(profile)
    try:
        target = browser.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = browser.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        browser.call("Page.enable", session=session)
        browser.call("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
        browser.wait_event("Page.loadEventFired")
        facts = browser.call("Runtime.evaluate", {"expression": PAGE_FACTS, "returnByValue": True},
                             session=session)["result"]["value"]
        browser.call("Emulation.setDeviceMetricsOverride", {"width": width, "height": min(facts["height"], 6000),
                                                            "deviceScaleFactor": 1, "mobile": False}, session=session)
        shot = browser.call("Page.captureScreenshot", {"format": "png"}, session=session)["data"]
        screenshot.write_bytes(base64.b64decode(shot))
        return facts
    finally:
        browser.close()
