"""The quality filter run: phase 1 scores shards into sidecars, phase 2 selects globally and reports.

Phase 1 (expensive, resumable per shard): every shard without a ``quality`` sidecar is decoded in
worker processes and scored; its sidecar is written atomically as soon as all of its samples are
scored, with ``keep: false`` and reason ``pending_global_selection``, so nothing counts as selected
before the global threshold exists. A killed run leaves whole sidecars only and resumes from them.

Phase 2 (cheap, idempotent): reads all sidecars, recomputes composites from the raw scores,
computes ONE threshold over the whole dataset (or one per class, see ``selection.py``), rewrites
each sidecar whose keep/reasons changed, and writes ``selection.json`` beside the report and
beside the shards: what Stage 2 checks before it trains. The image shards are only ever read.

A sidecar is read whole or not at all (``wds_tools.quality_record.read_quality_sidecar``): on a
rerun every existing sidecar is checked against its shard's keys, and a cut, unreadable or
mismatched one is scored again in phase 1. Each sidecar records the size and sha256 of the shard
bytes it scored (its ``__shard__`` member, hashed by the decode worker that read the shard): a
sidecar of another version of its shard (rebuilt with ``--overwrite`` and another recipe: same
keys, new pixels), or one written before this record existed, is stale, logged and scored again
(``wds_tools.shard_identity`` says when a shard is hashed). A shard that still has no whole
sidecar after phase 1 (a cut or unreadable image shard) is a failed shard, left out of the
threshold and of ``selection.json`` and retried on the next run.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from builders.quality.clip_score import ClipScorer
from builders.quality.config import QualityConfig
from builders.quality.guard import guard_outputs
from builders.quality.keep_rules import PENDING, class_key, class_thresholds, decide, rescore
from builders.quality.loader import QualityStream, ShardPart, fill_image_quality, plan_parts, score_batches
from builders.quality.report import draw_pictures, summarise, write_html
from builders.quality.selection_file import finalised_entries, selection_doc
from clip_models.device import resolve_device
from clip_models.loading import load_clip
from clip_models.text_tower import CachedTokenizer
from wds_tools.atomic import write_json
from wds_tools.config import config_to_dict, save_config, writing_under
from wds_tools.malloc import keep_freed_memory
from wds_tools.manifest import read_stats
from wds_tools.progress import progress
from wds_tools.quality_record import (
    MEMBER,
    SIDECAR,
    QualityRecord,
    QualityRecordError,
    read_quality_sidecar,
    selection_folders,
    write_selection,
)
from wds_tools.shard_identity import identity_problem, mtime_ns
from wds_tools.sidecar import read_shard_identity, shard_keys, write_sidecar
from wds_tools.urls import expand_urls, is_remote, local_output, sidecar_url, url_exists

log = logging.getLogger(__name__)
REPORT_NAME = "quality_report.json"
__all__ = ["MEMBER", "SIDECAR", "run", "score_shards", "select_global", "write_report"]


def has_sidecar(url: str) -> bool:
    """True when the shard's quality sidecar exists (it is only ever written whole)."""
    return url_exists(sidecar_url(url, SIDECAR))


def _expected_samples(urls: list[str]) -> int | None:
    try:
        return sum(read_stats(u).samples for u in urls)
    except (OSError, ValueError, KeyError):
        return None  # shards without stats files: progress without a total


def _sidecar_record(r: dict) -> dict:
    """The on-disk form of a record (through the typed record, so every writer agrees)."""
    return QualityRecord.from_dict(r).to_dict()


def _write_pending(url: str, records: list[dict], cfg: QualityConfig, keys: list[str], identity: dict) -> None:
    records = sorted(records, key=lambda r: r["index"])
    out = []
    for r in records:
        r = rescore({**r, "reasons": r["reasons"] + [PENDING]}, cfg.composite)
        out.append((r["key"], {MEMBER: _sidecar_record({**r, "keep": False})}))
    write_sidecar(url, SIDECAR, out, known_keys=keys, shard_identity=identity)


def iq_in_worker(cfg: QualityConfig, device: torch.device) -> bool:
    """Image quality in the decode workers, unless it is asked for (or auto-picked) on the device."""
    where = cfg.image_quality.where
    return where == "worker" or (where == "auto" and device.type != "cuda")


def score_in_workers(cfg: QualityConfig, device: torch.device) -> bool:
    """CLIP in the decode workers: asked for, or auto-picked on a CPU device with workers."""
    where = cfg.loader.score_in
    if where == "workers" and device.type != "cpu":
        raise ValueError(f"loader.score_in=workers needs a CPU device, got {device.type!r}: forked decode "
                         "workers cannot use the accelerator; use main or auto")
    return cfg.loader.num_workers > 0 and (where == "workers" or (where == "auto" and device.type == "cpu"))


def score_shards(cfg: QualityConfig, urls: list[str], *, clip: tuple | None = None) -> dict:
    """Phase 1 over ``urls``; returns ``{"scored": [...], "failed": {url: error}, "skips": {...}}``.

    ``clip`` is an already loaded ``(model, size, tokenizer)`` (else ``cfg.model`` is loaded).
    """
    keep_freed_memory()
    device = resolve_device(cfg.model.device)
    model, size, tokenizer = clip or load_clip(cfg.model)
    scorer = ClipScorer(model=model, device=device, precision=cfg.model.precision)
    plan = plan_parts(urls, cfg.loader.num_workers)
    stream = QualityStream(plan=plan, clip_size=size, iq_cfg=cfg.image_quality, tokenizer=CachedTokenizer(tokenizer),
                           batch_size=cfg.model.batch_size, compute_boxes=cfg.sanity.compute_boxes,
                           min_box_area=cfg.sanity.min_box_area, allow_pipe=cfg.loader.allow_pipe,
                           iq_in_worker=iq_in_worker(cfg, device),
                           # a term with no weight in the composite is not worth computing
                           sanity=cfg.composite.sanity_weight > 0,
                           quality=cfg.composite.image_quality_weight > 0,
                           scorer=scorer if score_in_workers(cfg, device) else None)
    nw = cfg.loader.num_workers
    loader = torch.utils.data.DataLoader(
        stream, batch_size=None, num_workers=nw, prefetch_factor=cfg.loader.prefetch_factor if nw else None,
        pin_memory=device.type == "cuda",
    )
    collector = ShardCollector(plan=plan, on_complete=lambda url, recs, keys, ident: _write_pending(
        url, recs, cfg, keys, ident))
    bar = progress(total=_expected_samples(urls), unit="img", desc="scoring")
    threads = torch.get_num_threads()
    if device.type == "cpu" and (nw or cfg.loader.main_threads) and not stream.scorer:
        # the workers decode on the same cores: more model threads would spin-wait against them
        torch.set_num_threads(cfg.loader.main_threads or max(1, (os.cpu_count() or 1) - nw))
    try:
        for batch in loader:
            _score_batch(batch, scorer, cfg)
            collector.add(batch)
            bar.update(len(batch["records"]))
    finally:
        torch.set_num_threads(threads)
        bar.close()
    return {"scored": collector.scored, "failed": collector.failed, "skips": dict(collector.skips),
            "keys": collector.done_keys}


def _score_batch(batch: dict, scorer: ClipScorer, cfg: QualityConfig) -> None:
    """Fill each record's CLIP score (None without image or caption) and, if deferred, image quality."""
    if not batch.get("scored"):  # else a worker scored it already
        next(score_batches([batch], scorer=scorer))
    if batch.get("iq_index"):
        fill_image_quality(batch["records"], batch["iq_index"], batch["iq_images"].to(scorer.device),
                           cfg.image_quality)


class ShardCollector:
    """Files scored records by shard; once every part of a shard is done, hands them on with the
    shard's keys and identity (as part 0 read them).

    A part that hit a read error marks its shard failed: no sidecar is written for it, so a later
    run retries it.
    """

    def __init__(self, *, plan: list[list[ShardPart]],
                 on_complete: Callable[[str, list[dict], list[str], dict], None]):
        self.parts_needed = {p.url: p.parts for worker in plan for p in worker}
        self.parts_seen: dict[str, int] = defaultdict(int)
        self.pending: dict[str, list[dict]] = defaultdict(list)
        self.keys: dict[str, list[str]] = {}
        self.identity: dict[str, dict] = {}
        self.failed: dict[str, str] = {}
        self.skips: dict[str, int] = defaultdict(int)
        self.scored: list[str] = []
        self.done_keys: dict[str, list[str]] = {}  # keys of the shards whose sidecars were written
        self.on_complete = on_complete

    def add(self, batch: dict) -> None:
        """Take a scored batch: its records first, then its done markers."""
        for r in batch["records"]:
            self.pending[r["url"]].append(r)
        for marker in batch["done"]:
            url = marker["__done__"].url
            self.parts_seen[url] += 1
            if marker["__done__"].part == 0:  # every part of a striped shard reads all of it
                self.keys[url] = marker["keys"]
                self.identity[url] = marker.get("identity")
                for reason, n in marker["skips"].items():
                    self.skips[reason] += n
            if marker["error"]:
                self.failed[url] = marker["error"]
            if self.parts_seen[url] == self.parts_needed[url]:
                records, keys, ident = self.pending.pop(url, []), self.keys.pop(url), self.identity.pop(url)
                if url not in self.failed:
                    self.on_complete(url, records, keys, ident)
                    self.scored.append(url)
                    self.done_keys[url] = keys


@dataclass
class Sidecars:
    """The usable sidecars of some shards, the shard identity each records, and why the others
    are not usable."""

    records: dict[str, dict[str, dict]] = field(default_factory=dict)   # {url: {key: record dict}}
    identities: dict[str, dict] = field(default_factory=dict)
    unusable: dict[str, str] = field(default_factory=dict)


def stale_problem(url: str) -> tuple[dict | None, str | None]:
    """The shard identity the sidecar of ``url`` records, and why it is stale (None when it
    describes the shard as it is now)."""
    side = sidecar_url(url, SIDECAR)
    identity = read_shard_identity(url, SIDECAR)
    problem = identity_problem(url, identity, unchanged_since_ns=mtime_ns(side))
    if problem is None:
        return identity, None
    return identity, f"{side} was not computed from {url} as it is now ({problem}): its verdicts are stale"


def load_sidecars(urls: list[str], known_keys: dict[str, list[str]] | None = None) -> Sidecars:
    """Whole, key-checked sidecars of ``urls`` that have one and describe the shard's current bytes,
    and why each other one is unusable.

    Keys come from ``known_keys`` (what phase 1 just read) or the shard itself (headers only when
    local).
    """
    out = Sidecars()
    for url in urls:
        if not has_sidecar(url):
            continue
        try:
            identity, stale = stale_problem(url)
            if stale:
                out.unusable[url] = stale
                continue
            keys = (known_keys or {}).get(url)
            keys = keys if keys is not None else shard_keys(url)
            out.records[url] = {k: r.to_dict() for k, r in read_quality_sidecar(url, keys).items()}
            out.identities[url] = identity
        except (QualityRecordError, OSError, ValueError) as e:
            out.unusable[url] = str(e)
    return out


def select_global(cfg: QualityConfig, sidecars: dict[str, dict[str, dict]],
                  identities: dict[str, dict] | None = None) -> dict:
    """Phase 2 over whole sidecars: thresholds, then rewrite the sidecars whose verdicts changed
    (each keeps the shard identity it recorded, from ``identities``).

    Returns ``threshold``, ``class_thresholds``, every final record (with ``url``/``key``) as
    ``records`` and how many sidecars were ``rewritten``.
    """
    identities = identities or {}
    rescored = {u: {k: {**rescore(v, cfg.composite), "url": u} for k, v in side.items()}
                for u, side in sidecars.items()}
    threshold, per_class = class_thresholds((r for recs in rescored.values() for r in recs.values()), cfg.selection)
    final, rewritten = [], 0
    for url, recs in rescored.items():
        decided = {k: _sidecar_record(decide(r, threshold=per_class.get(class_key(r), threshold), cfg=cfg.selection))
                   for k, r in recs.items()}
        if any(decided[k] != sidecars[url][k] for k in decided):
            # the keys of a sidecar that was just checked against its shard
            write_sidecar(url, SIDECAR, [(k, {MEMBER: v}) for k, v in decided.items()], known_keys=list(sidecars[url]),
                          shard_identity=identities.get(url))
            rewritten += 1
        final.extend({**v, "url": url, "key": k} for k, v in decided.items())
    return {"threshold": threshold, "class_thresholds": per_class, "records": final, "rewritten": rewritten}


def write_report(cfg: QualityConfig, report_dir: Path, selected: dict, phase1: dict, urls: list[str],
                 unusable: dict[str, str]) -> dict:
    """quality_report.json, the histogram, class and grid PNGs and quality_report.html in ``report_dir``."""
    records, threshold = selected["records"], selected["threshold"]
    report = summarise(records, threshold, warn_below=cfg.selection.warn_class_kept_below)
    report.update(
        keep_top_percent=cfg.selection.keep_top_percent,
        min_clip_score_synthetic=cfg.selection.min_clip_score_synthetic,
        selection_mode=_mode(cfg), class_thresholds=selected["class_thresholds"],
        warn_class_kept_below=cfg.selection.warn_class_kept_below,
        shards={"total": len(urls), "with_sidecar": len({r["url"] for r in records}),
                "scored_this_run": len(phase1["scored"]), "sidecars_rewritten": selected["rewritten"],
                "failed": {**unusable, **phase1["failed"]}},
        read_skips=phase1["skips"],
        report_dir=str(report_dir),
        model={"name": cfg.model.name, "pretrained": cfg.model.pretrained},
        config=config_to_dict(cfg),
    )
    for w in report["warnings"]:
        log.warning("%s", w)
    pictures = draw_pictures(report, records, report_dir, threshold=threshold, bins=cfg.report.bins,
                             thumb_size=cfg.report.thumb_size, grid_samples=cfg.report.grid_samples)
    report["pictures"] = list(pictures.values()) + ["quality_report.html"]
    write_html(report, report_dir / "quality_report.html", pictures)
    write_json(report_dir / REPORT_NAME, report)
    save_config(cfg, report_dir / "quality_config.yaml")
    return report


def _mode(cfg: QualityConfig) -> str:
    mode = "per_class" if cfg.selection.per_class else "global"
    return f"{mode}, min_class_share {cfg.selection.min_class_share}" if cfg.selection.min_class_share else mode


def write_selections(cfg: QualityConfig, report_dir: Path, selected: dict, urls: list[str],
                     identities: dict[str, dict]) -> list[str]:
    """``selection.json`` in the report folder and in every shard folder (where Stage 2 looks)."""
    entries = finalised_entries(selected["records"], identities)
    doc = selection_doc(selected=selected, entries=entries, cfg=cfg, urls=urls)
    folders = list(dict.fromkeys([str(report_dir.resolve())] + selection_folders(urls)))
    written = [write_selection(doc, f) for f in folders]
    log.info("selection: %d of %d samples kept in %d finalised sidecars; written to %s",
             doc["kept"], doc["total"], len(doc["sidecars"]), ", ".join(written))
    return written


def run(cfg: QualityConfig) -> dict:
    """Both phases and the report; returns the report dict."""
    cfg.validate()
    if cfg.output:  # the report folder: before any shard is read
        local_output(cfg.output, "output")
    if not cfg.input:
        raise ValueError("input is empty: give shard URLs, a directory, a brace pattern or a .txt list")
    urls = expand_urls(cfg.input, allow_pipe=cfg.loader.allow_pipe)
    if not urls:
        raise ValueError(f"no shards found for input {cfg.input}")
    piped = [u for u in urls if u.startswith("pipe:")]
    if piped:
        raise ValueError(f"sidecars are written beside the shards, so a pipe: input has nowhere to put them; "
                         f"got {piped[0]!r}")
    if not cfg.output and is_remote(urls[0]):
        raise ValueError(f"the shards are remote ({urls[0]!r}): set output= to a local report directory")
    report_dir = Path(cfg.output) if cfg.output else Path(urls[0]).parent
    # a full disk's write() names no file: say where this job writes (report, sidecars)
    with writing_under(report_dir, *selection_folders(urls)), \
            guard_outputs(urls, report_dir=report_dir, break_lock=cfg.break_lock):
        found = Sidecars() if cfg.rescore else load_sidecars(urls)
        damaged = found.unusable
        for problem in damaged.values():
            log.warning("sidecar unusable, scoring the shard again: %s", problem)
        sidecars, identities = found.records, found.identities
        todo = [u for u in urls if u not in sidecars]
        log.info("%d shards, %d to score (%d with whole sidecars of the shards as they are, %d unusable)",
                 len(urls), len(todo), len(sidecars), len(damaged))
        phase1 = score_shards(cfg, todo) if todo else {"scored": [], "failed": {}, "skips": {}, "keys": {}}
        fresh = load_sidecars(phase1["scored"], phase1["keys"])
        sidecars.update(fresh.records)
        identities.update(fresh.identities)
        unusable = fresh.unusable
        missing = [u for u in urls if u not in sidecars]
        for url in missing:
            unusable.setdefault(url, phase1["failed"].get(url) or damaged.get(url) or "no sidecar")
        if missing:
            log.error("%d shards have no whole sidecar and are left out of the selection (rerun to retry): %s",
                      len(missing), "; ".join(f"{u}: {unusable[u]}" for u in missing[:5]))
        selected = select_global(cfg, sidecars, identities)
        # the selection first: it is what Stage 2 needs, and a report problem must never block it
        selection_files = write_selections(cfg, report_dir, selected, urls, identities)
        report = write_report(cfg, report_dir, selected, phase1, urls, unusable)
        report["selection_files"] = selection_files
        write_json(report_dir / REPORT_NAME, report)
        return report
