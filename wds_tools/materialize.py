"""Fold sidecar members into new shards and drop samples that fail a selection (a reshard).

    python -m wds_tools.materialize --input shards/real --output shards/real_filtered [key=value ...]

By default the ``quality`` sidecar is joined and a sample is kept iff its quality record is selected
(``wds_tools.quality_record.keep``: never while pending); captions the record dropped are removed
from its ``json`` (and ``txt``), so the reshard trains the same without the sidecar. The output
has its own ``dataset.json`` (with kept/dropped counts), ``sizes.json`` and the resolved
``config.yaml``.

One run per output folder at a time (the lock ``materialize.lock`` there); a run starts by deleting
the temporary files a killed run left in it, and a write that fails deletes its own. An output URL
(``s3://...``) is written in a local staging folder and published whole, index last
(``wds_tools.remote_output``; the lock is then a conditional put on the store).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgpack

from wds_tools import quality_record
from wds_tools.config import parse_cli, prog_name, run_main, save_config, writing_under
from wds_tools.lock import OutputLock, remove_stale_temps
from wds_tools.manifest import stats_path, write_index
from wds_tools.progress import progress
from wds_tools.reader import SkipLog, iter_shard
from wds_tools.remote_output import Store, StoreLock, fresh_staging, is_url_output, publish
from wds_tools.urls import expand_urls, is_remote, is_shard_name
from wds_tools.writer import RollingShardWriter

log = logging.getLogger("wds_tools.materialize")
LOCK_NAME = "materialize.lock"


@dataclass
class MaterializeConfig:
    """Config tree of ``wds_tools.materialize``."""

    input: list[str] = field(default_factory=list)
    output: str = ""
    sidecars: list[str] = field(default_factory=lambda: [quality_record.SIDECAR])
    # Sidecar members (e.g. "quality.msgpack") whose "keep" field must be true; empty keeps all.
    require_keep: list[str] = field(default_factory=lambda: [quality_record.MEMBER])
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


def _check_url_apart(output: str, inputs: Sequence[str], urls: Sequence[str]) -> None:
    out = output.rstrip("/")
    places = {u.rsplit("/", 1)[0] for u in urls if is_remote(u)} | {i.rstrip("/") for i in inputs if is_remote(i)}
    for place in sorted(places):
        if out == place or out.startswith(place + "/") or place.startswith(out + "/"):
            raise ValueError(f"output {output!r} overlaps the input {place!r}: materialize into a separate folder")


def check_output_apart(output: str | Path, inputs: Sequence[str], urls: Sequence[str]) -> None:
    """Refuse an output folder that is, contains or lies inside an input (it would rewrite its
    index and add its own shards to it); ``urls`` are the expanded input shards."""
    if is_url_output(output):
        _check_url_apart(str(output), inputs, urls)
        return
    out = Path(output).resolve()
    if out.exists() and not out.is_dir():
        raise ValueError(f"output {str(output)!r} is a file, not a folder")
    places = {Path(u).resolve().parent for u in urls if not is_remote(u) and not u.startswith("pipe:")}
    places |= {Path(i).resolve() for i in inputs if not is_remote(i) and Path(i).is_dir()}
    for place in sorted(places):
        if out == place or out in place.parents or place in out.parents:
            relation = "is" if out == place else "lies inside" if place in out.parents else "contains"
            raise ValueError(f"output {str(output)!r} {relation} the input folder {str(place)!r}: "
                             "materialize into a separate folder")


def member_problem(sample: dict) -> str | None:
    """``None`` if the sample's ``json`` member (when present) is a JSON object, else the reason."""
    if "json" not in sample:
        return None
    try:
        meta = json.loads(sample["json"])
    except ValueError:  # also UnicodeDecodeError
        return "corrupt_json"
    return None if isinstance(meta, dict) else f"json_not_object_{type(meta).__name__}"


def keep_verdict(sample: dict, require_keep: Sequence[str]) -> str | None:
    """``None`` if the sample passes, else the drop reason."""
    for member in require_keep:
        if member == quality_record.MEMBER:
            record = quality_record.decode_record(sample[member])
            kept, reasons = quality_record.keep(record), record.reasons
        else:
            value = msgpack.unpackb(sample[member], raw=False, strict_map_key=False)
            kept, reasons = bool(value.get("keep", False)), value.get("reasons")
        if not kept:
            return f"{member.split('.', 1)[0]}:{(reasons or ['not_kept'])[0]}"
    return None


def _kept_captions(sample: dict) -> dict:
    """The sample with the captions its quality record dropped removed from ``json`` and ``txt``."""
    if quality_record.MEMBER not in sample or "json" not in sample:
        return sample
    meta = json.loads(sample["json"])
    txt = sample["txt"].decode("utf-8") if "txt" in sample else None
    record = quality_record.decode_record(sample[quality_record.MEMBER])
    new_meta, new_txt = quality_record.drop_unkept_captions(meta, txt, record)
    if new_meta is meta:
        return sample
    out = {**sample, "json": json.dumps(new_meta, ensure_ascii=False).encode("utf-8")}
    if new_txt is not None:
        out["txt"] = new_txt.encode("utf-8")
    return out


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
    check_output_apart(cfg.output, cfg.input, urls)
    if is_url_output(cfg.output):
        return _materialize_to_store(cfg, urls)
    out = Path(cfg.output)
    out.mkdir(parents=True, exist_ok=True)
    with OutputLock(out / LOCK_NAME, tool="wds_tools.materialize"):
        remove_stale_temps(out)
        return _materialize_locked(cfg, urls, out)


def _materialize_to_store(cfg: MaterializeConfig, urls: list[str]) -> dict:
    """The reshard finished in a staging folder, then published whole (``wds_tools.remote_output``)."""
    store = Store(cfg.output)
    store.check_access()
    with StoreLock(store, LOCK_NAME, tool="wds_tools.materialize"):
        staging = fresh_staging(store.url)
        manifest = _materialize_locked(cfg, urls, staging)
        shards = sorted(p.name for p in staging.glob(f"{cfg.prefix}-*.tar") if is_shard_name(p.name))
        old = [n for n in store.list() if n.startswith(f"{cfg.prefix}-") and is_shard_name(n) and n not in shards]
        publish(store, staging, shards=shards, index=("config.yaml", "sizes.json", "dataset.json"),
                stale=[n for t in old for n in (t[: -len(".tar")] + ".stats.json", t)])
        shutil.rmtree(staging, ignore_errors=True)
        return manifest


def _materialize_locked(cfg: MaterializeConfig, urls: list[str], out: Path) -> dict:
    skips, dropped, kept = SkipLog(), SkipLog(), 0
    with RollingShardWriter(output_dir=out, prefix=cfg.prefix, maxcount=cfg.maxcount) as writer:
        bar = progress(total=len(urls), desc="materialize", unit="shard")
        for url in urls:
            bar.update()
            for sample in iter_shard(url, sidecars=cfg.sidecars, allow_pipe=cfg.allow_pipe, skips=skips):
                problem = member_problem(sample)
                if problem is not None:
                    skips.add(problem, sample["__key__"], url)
                    continue
                try:
                    reason = keep_verdict(sample, cfg.require_keep)
                except (ValueError, TypeError, AttributeError, KeyError):
                    skips.add("corrupt_sidecar_record", sample["__key__"], url)
                    continue
                if reason is not None:
                    dropped.counts[reason] += 1
                    continue
                writer.write({k: v for k, v in _kept_captions(sample).items() if k != "__url__"})
                kept += 1
        bar.close()
    _remove_stale(out, cfg.prefix, keep={s.name for s in writer.stats})
    save_config(cfg, out / "config.yaml")
    extra = {"materialized_from": urls, "kept": kept, "dropped": dropped.as_dict(), "skipped": skips.as_dict()}
    manifest = write_index(out, name=cfg.name, extra=extra)
    log.info("kept %d, dropped %s, skipped %s", kept, dropped.as_dict(), skips.as_dict())
    return manifest


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``remoteclip-materialize``): a user error is one line and exit status 2."""
    return run_main(_main, argv, prog=prog_name("wds_tools.materialize"))


def _main(argv: Sequence[str] | None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    cfg = parse_cli(
        MaterializeConfig, argv, prog=prog_name("wds_tools.materialize"), description=__doc__.split("\n")[0],
        flags={"--input": "input", "--output": "output"},
    )
    with writing_under(cfg.output):  # a full disk's write() names no file
        m = materialize(cfg)
    print(f"wrote {m['num_shards']} shard(s), {m['kept']} samples kept, dropped {m['dropped']} -> {cfg.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
