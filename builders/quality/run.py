"""The quality filter run: phase 1 scores shards into sidecars, phase 2 selects globally and reports.

Phase 1 (expensive, resumable per shard): every shard without a ``quality`` sidecar is decoded in
worker processes and scored; its sidecar is written atomically as soon as all of its samples are
scored, with ``keep: false`` and reason ``pending_global_selection``, so nothing counts as selected
before the global threshold exists. A killed run leaves whole sidecars only and resumes from them.

Phase 2 (cheap, idempotent): reads all sidecars, recomputes composites from the raw scores,
computes ONE threshold over the whole dataset, and rewrites each sidecar whose keep/reasons
changed. The image shards are only ever read.
"""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch

from clip_models.scoring import load_clip, resolve_device
from builders.quality.clip_score import ClipScorer
from builders.quality.config import QualityConfig
from builders.quality.loader import QualityStream, ShardPart, fill_image_quality, plan_parts, score_batches
from builders.quality.report import plot_grid, plot_histograms, summarise, write_html
from builders.quality.selection import PENDING, decide, global_threshold, rescore
from clip_models.text_tower import CachedTokenizer
from wds_tools.atomic import write_json
from wds_tools.config import config_to_dict, save_config
from wds_tools.malloc import keep_freed_memory
from wds_tools.manifest import read_stats
from wds_tools.progress import progress
from wds_tools.sidecar import read_sidecar, write_sidecar
from wds_tools.urls import expand_urls, is_remote, sidecar_url, url_exists

log = logging.getLogger(__name__)
SIDECAR = "quality"
MEMBER = "quality.msgpack"
REPORT_NAME = "quality_report.json"


def has_sidecar(url: str) -> bool:
    """True when the shard's quality sidecar exists (it is only ever written whole)."""
    return url_exists(sidecar_url(url, SIDECAR))


def _expected_samples(urls: list[str]) -> int | None:
    try:
        return sum(read_stats(u).samples for u in urls)
    except (OSError, ValueError, KeyError):
        return None  # shards without stats files: progress without a total


def _sidecar_record(r: dict) -> dict:
    return {"scores": r["scores"], "composite": r.get("composite"), "keep": r.get("keep", False),
            "reasons": r["reasons"], "source": r.get("source")}


def _write_pending(url: str, records: list[dict], cfg: QualityConfig, shard_keys: list[str]) -> None:
    records = sorted(records, key=lambda r: r["index"])
    out = []
    for r in records:
        r = rescore({**r, "reasons": r["reasons"] + [PENDING]}, cfg.composite)
        out.append((r["key"], {MEMBER: _sidecar_record({**r, "keep": False})}))
    write_sidecar(url, SIDECAR, out, known_keys=shard_keys)


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
    model, size, tokenizer = clip or load_clip(model_name=cfg.model.name, pretrained=cfg.model.pretrained,
                                               device=device, precision=cfg.model.precision)
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
    collector = ShardCollector(plan=plan, on_complete=lambda url, recs, keys: _write_pending(url, recs, cfg, keys))
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
    return {"scored": collector.scored, "failed": collector.failed, "skips": dict(collector.skips)}


def _score_batch(batch: dict, scorer: ClipScorer, cfg: QualityConfig) -> None:
    """Fill each record's CLIP score (None without image or caption) and, if deferred, image quality."""
    if not batch.get("scored"):  # else a worker scored it already
        next(score_batches([batch], scorer=scorer))
    if batch.get("iq_index"):
        fill_image_quality(batch["records"], batch["iq_index"], batch["iq_images"].to(scorer.device),
                           cfg.image_quality)


class ShardCollector:
    """Files scored records by shard; once every part of a shard is done, hands them on with the
    shard's keys (as part 0 read them).

    A part that hit a read error marks its shard failed: no sidecar is written for it, so a later
    run retries it.
    """

    def __init__(self, *, plan: list[list[ShardPart]], on_complete: Callable[[str, list[dict], list[str]], None]):
        self.parts_needed = {p.url: p.parts for worker in plan for p in worker}
        self.parts_seen: dict[str, int] = defaultdict(int)
        self.pending: dict[str, list[dict]] = defaultdict(list)
        self.keys: dict[str, list[str]] = {}
        self.failed: dict[str, str] = {}
        self.skips: dict[str, int] = defaultdict(int)
        self.scored: list[str] = []
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
                for reason, n in marker["skips"].items():
                    self.skips[reason] += n
            if marker["error"]:
                self.failed[url] = marker["error"]
            if self.parts_seen[url] == self.parts_needed[url]:
                records, keys = self.pending.pop(url, []), self.keys.pop(url)
                if url not in self.failed:
                    self.on_complete(url, records, keys)
                    self.scored.append(url)


def select_global(cfg: QualityConfig, urls: list[str]) -> tuple[float | None, list[dict], int]:
    """Phase 2: one threshold from all sidecars; rewrite those whose verdicts changed.

    Returns the threshold, every final record (with ``url``/``key``) and how many sidecars were
    rewritten.
    """
    sidecars = {u: read_sidecar(u, SIDECAR) for u in urls if has_sidecar(u)}
    rescored = {u: {k: rescore(v[MEMBER], cfg.composite) for k, v in side.items()} for u, side in sidecars.items()}
    eligible = (r["composite"] for recs in rescored.values() for r in recs.values())
    threshold = global_threshold(eligible, cfg.selection.keep_top_percent)
    final, rewritten = [], 0
    for url, recs in rescored.items():
        decided = {k: _sidecar_record(decide(r, threshold=threshold, cfg=cfg.selection)) for k, r in recs.items()}
        if any(decided[k] != sidecars[url][k][MEMBER] for k in decided):
            # the keys of a sidecar that was checked against its shard when it was written
            write_sidecar(url, SIDECAR, [(k, {MEMBER: v}) for k, v in decided.items()],
                          known_keys=list(sidecars[url]))
            rewritten += 1
        final.extend({**v, "url": url, "key": k} for k, v in decided.items())
    return threshold, final, rewritten


def write_report(cfg: QualityConfig, report_dir: Path, threshold: float | None, records: list[dict],
                 phase1: dict, urls: list[str], rewritten: int) -> dict:
    """quality_report.json, the histogram and grid PNGs and index.html in ``report_dir``."""
    report = summarise(records, threshold)
    report.update(
        keep_top_percent=cfg.selection.keep_top_percent,
        min_clip_score_synthetic=cfg.selection.min_clip_score_synthetic,
        shards={"total": len(urls), "with_sidecar": len({r["url"] for r in records}),
                "scored_this_run": len(phase1["scored"]), "sidecars_rewritten": rewritten,
                "failed": phase1["failed"]},
        read_skips=phase1["skips"],
        report_dir=str(report_dir),
        model={"name": cfg.model.name, "pretrained": cfg.model.pretrained},
        config=config_to_dict(cfg),
    )
    ranked = sorted((r for r in records if r["composite"] is not None), key=lambda r: r["composite"], reverse=True)
    n = cfg.report.grid_samples
    best, worst = ranked[:n], ranked[::-1][:n] if len(ranked) > n else []
    pictures = {
        "Score histograms by source": plot_histograms(records, report_dir / "quality_histograms.png",
                                                      threshold=threshold, bins=cfg.report.bins).name,
        "Best (top) and worst (bottom) samples": plot_grid(best, worst, report_dir / "quality_grid.png",
                                                          thumb_size=cfg.report.thumb_size).name,
    }
    report["pictures"] = list(pictures.values()) + ["quality_report.html"]
    write_html(report, report_dir / "quality_report.html", pictures)
    write_json(report_dir / REPORT_NAME, report)
    save_config(cfg, report_dir / "quality_config.yaml")
    return report


def run(cfg: QualityConfig) -> dict:
    """Both phases and the report; returns the report dict."""
    cfg.validate()
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
    todo = urls if cfg.rescore else [u for u in urls if not has_sidecar(u)]
    log.info("%d shards, %d to score (%d already have sidecars)", len(urls), len(todo), len(urls) - len(todo))
    phase1 = score_shards(cfg, todo) if todo else {"scored": [], "failed": {}, "skips": {}}
    threshold, records, rewritten = select_global(cfg, urls)
    report_dir = Path(cfg.output) if cfg.output else Path(urls[0]).parent
    return write_report(cfg, report_dir, threshold, records, phase1, urls, rewritten)
