"""Quality sidecars written by hand, for tests of what reads them."""

from __future__ import annotations

from pathlib import Path

from wds_tools.sidecar import shard_keys, write_sidecar


def score_all(shard_dir: Path) -> None:
    """A ``quality`` sidecar beside every ``real-train-*.tar``: key ``sN`` is kept unless N % 3 == 0
    (then its reason is ``below_threshold``), with composite N / 10."""
    for shard in sorted(shard_dir.glob("real-train-*.tar")):
        records = [
            (k, {"msgpack": {"keep": int(k[1:]) % 3 != 0, "composite": int(k[1:]) / 10,
                             "reasons": [] if int(k[1:]) % 3 else ["below_threshold"]}})
            for k in shard_keys(str(shard))
        ]
        write_sidecar(shard, "quality", records)
