"""Counted, logged skips: nothing bad is dropped silently."""

from __future__ import annotations

import logging
from collections import Counter

log = logging.getLogger("wds_tools")
_LOGGED_PER_REASON = 20


class SkipLog:
    """Counts skipped members/samples by reason and logs the first few of each with key and URL."""

    def __init__(self) -> None:
        self.counts: Counter = Counter()

    def add(self, reason: str, key: str | None = None, url: str | None = None) -> None:
        self.counts[reason] += 1
        if self.counts[reason] <= _LOGGED_PER_REASON:
            log.warning("skipped %s (key=%s, url=%s)", reason, key, url)

    def update(self, counts: dict[str, int]) -> None:
        """Merge counts gathered elsewhere (another worker, another shard)."""
        self.counts.update(counts)

    def total(self) -> int:
        return sum(self.counts.values())

    def as_dict(self) -> dict[str, int]:
        return dict(sorted(self.counts.items()))
