"""Progress bars that stay readable in a log file.

On a terminal this is tqdm. When stderr is not a terminal (a job writing to a log file, CI, a
cluster scheduler), tqdm's carriage-return redraws pile up into lines of many kilobytes; there
:class:`LineProgress` writes one plain line every ``interval`` seconds instead, with the same
``update`` / ``set_postfix`` / ``close`` calls.
"""

from __future__ import annotations

import sys
import time
from typing import IO, Any

from tqdm import tqdm


class LineProgress:
    """tqdm's small interface, printing ``desc: n/total (rate unit/s) postfix`` now and then."""

    def __init__(self, *, total: int | None, desc: str, unit: str = "it", initial: int = 0,
                 interval: float = 10.0, file: IO[str] | None = None, disable: bool = False) -> None:
        self.total, self.desc, self.unit, self.n = total, desc, unit, initial
        self.interval, self.file, self.disable = interval, file or sys.stderr, disable
        self._start = self._last = time.monotonic()
        self._start_n = initial
        self._postfix = ""

    def update(self, n: int = 1) -> None:
        """Advance by ``n``; prints a line when ``interval`` seconds have passed since the last."""
        self.n += n
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._print(now)

    def set_postfix(self, ordered_dict: dict | None = None, refresh: bool = True, **kwargs: Any) -> None:
        """Extra ``key=value`` fields shown after the count."""
        items = {**(ordered_dict or {}), **kwargs}
        self._postfix = ", ".join(f"{k}={v}" for k, v in items.items())

    def close(self) -> None:
        """Print the final line."""
        self._print(time.monotonic())
        self.disable = True

    def _print(self, now: float) -> None:
        if self.disable:
            return
        rate = (self.n - self._start_n) / max(now - self._start, 1e-9)
        total = f"/{self.total}" if self.total is not None else ""
        extra = f" {self._postfix}" if self._postfix else ""
        print(f"{self.desc}: {self.n}{total} ({rate:.1f} {self.unit}/s){extra}", file=self.file, flush=True)

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def progress(*, total: int | None, desc: str, unit: str = "it", initial: int = 0, disable: bool = False,
             interval: float = 10.0):
    """A tqdm bar on a terminal, else a :class:`LineProgress` writing a line every ``interval`` s."""
    if sys.stderr.isatty():
        return tqdm(total=total, desc=desc, unit=unit, initial=initial, disable=disable, dynamic_ncols=True)
    return LineProgress(total=total, desc=desc, unit=unit, initial=initial, interval=interval, disable=disable)
