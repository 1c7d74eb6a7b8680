"""Fold sidecar members into new shards and drop samples that fail a selection (a reshard).

    python -m wds_tools.materialize --input shards/real --output shards/real_filtered [key=value ...]

By default the ``quality`` sidecar is joined and a sample is kept iff its ``quality.msgpack`` says
``keep: true``. The output has its own ``dataset.json`` (with kept/dropped counts), ``sizes.json``
and the resolved ``config.yaml``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import msgpack

from wds_tools.config import parse_cli, save_config
from wds_tools.manifest import stats_path, write_index
from wds_tools.progress import progress
from wds_tools.reader import SkipLog, iter_shard
from wds_tools.urls import expand_urls, is_shard_name
from wds_tools.writer import RollingShardWriter

log = logging.getLogger("wds_tools.materialize")


@dataclass
class MaterializeConfig:
    """Config tree of ``wds_tools.materialize``."""

    input: list[str] = field(default_factory=list)
    output: str = ""
    sidecars: list[str] = field(default_factory=lambda: ["quality"])
    # Sidecar members (e.g. "quality.msgpack") whose "keep" field must be true; empty keeps all.
    require_keep: list[str] = field(default_factory=lambda: ["quality.msgpack"])
    prefix: str = "filtered"
    maxcount: int = 1000
    name: str = "materialized"
    allow_pipe: bool = False

    def validate(self) -> None:
        if self.maxcount < 1:
            raise ValueError(f"maxcount must be >= 1, got {self.maxcount}")
        for member in self.require_keep:
            if member.split(".", 1)[0] not in self.sidecars:
                raise ValueError(f"require_keep member {member!r} is not from a joined sidecar {self.sidecars}")


def keep_verdict(sample: dict, require_keep: Sequence[str]) -> str | None:
    """``None`` if the sample passes, else the drop reason."""
    for member in require_keep:
        record = msgpack.unpackb(sample[member], raw=False, strict_map_key=False)
        if not record.get("keep", False):
            reasons = record.get("reasons") or ["not_kept"]
            return f"{member.split('.', 1)[0]}:{reasons[0]}"
    return None


def _remove_stale(out: Path, prefix: str, keep: set[str]) -> None:
    """Shards of an earlier, larger run of the same reshard would otherwise join the new index."""
    for tar in out.glob(f"{prefix}-*.tar"):
        if is_shard_name(tar.name) and tar.name not in keep:
            stats_path(tar).unlink(missing_ok=True)
            tar.unlink()
            log.info("removed stale shard %s", tar)


def materialize(cfg: MaterializeConfig) -> dict:
    """Run the reshard described by ``cfg``; return the output manifest."""
    if not cfg.input or not cfg.output:
        raise ValueError(f"materialize needs input and output, got input={cfg.input!r} output={cfg.output!r}")
    urls = expand_urls(cfg.input, allow_pipe=cfg.allow_pipe)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    skips, dropped, kept = SkipLog(), SkipLog(), 0
    with RollingShardWriter(output_dir=out, prefix=cfg.prefix, maxcount=cfg.maxcount) as writer:
        bar = progress(total=len(urls), desc="materialize", unit="shard")
        for url in urls:
            bar.update()
            for sample in iter_shard(url, sidecars=cfg.sidecars, allow_pipe=cfg.allow_pipe, skips=skips):
                reason = keep_verdict(sample, cfg.require_keep)
                if reason is not None:
                    dropped.counts[reason] += 1
                    continue
                writer.write({k: v for k, v in sample.items() if k != "__url__"})
                kept += 1
        bar.close()
    _remove_stale(out, cfg.prefix, keep={s.name for s in writer.stats})
    save_config(cfg, out / "config.yaml")
    extra = {"materialized_from": urls, "kept": kept, "dropped": dropped.as_dict(), "skipped": skips.as_dict()}
    manifest = write_index(out, name=cfg.name, extra=extra)
    log.info("kept %d, dropped %s, skipped %s", kept, dropped.as_dict(), skips.as_dict())
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_cli(
        MaterializeConfig, argv, prog="wds-materialize", description=__doc__.split("\n")[0],
        flags={"--input": "input", "--output": "output"},
    )
    m = materialize(cfg)
    print(f"wrote {m['num_shards']} shard(s), {m['kept']} samples kept, dropped {m['dropped']} -> {cfg.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
