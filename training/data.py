"""Stage 2 streaming loader: a seeded, resumable, weighted sample-level mix of shard sources.

Layout of the stream (all randomness counter-based, so any position can be rebuilt):

* Every (rank, loader worker) pair owns a *logical worker* id. Each source's shards are split by
  node and worker (``urls[g::ranks*workers]`` for global worker ``g``; every pair reads all
  shards when there are fewer shards than pairs) and are then **resampled with replacement**: chunk
  ``c`` of a source is ``shards_per_chunk`` shards drawn by ``rng(seed, rank, worker, source, c)``
  and shuffled together. The stream never ends, so every rank runs the same number of steps.
* Batch ``b`` of a logical worker picks the source of each slot with ``rng(seed, rank, worker, b)``
  (independent draws with the source weights, or exact per-batch counts when ``stratified``).
* Per sample, the caption choice and the crop come from ``rng(..., chunk, offset)``.

A worker's position is ``{"batch": b, "streams": [[chunk, offset], ...]}``; it travels with every
batch, the trainer keeps the newest one per worker, and a resumed loader restarts each worker from
it (rotating worker ids so DataLoader's round-robin continues where it stopped). Quality-sidecar
drops and corrupt samples are counted per batch and summed by the trainer.
"""

from __future__ import annotations

import logging
import math
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import msgpack
import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.transforms.v2 import functional as TF

from training.model import build_tokenizer
from wds_tools.manifest import read_index
from wds_tools.reader import SkipLog, decode_sample, iter_shard
from wds_tools.sample import IMAGE_EXTS
from wds_tools.urls import expand_urls, sidecar_url, url_exists

log = logging.getLogger(__name__)

_TAG_CHUNK, _TAG_SAMPLE, _TAG_BATCH = 1, 2, 3
_MAX_EMPTY_CHUNKS = 50


@dataclass
class MixSource:
    """One weighted shard source."""

    name: str
    urls: list[str]
    weight: float


@dataclass
class LoaderSpec:
    """Everything a loader worker needs (picklable)."""

    sources: list[MixSource]
    batch_size: int
    image_size: int
    tokenizer: dict
    seed: int = 0
    rank: int = 0
    world_size: int = 1
    num_workers: int = 0
    stratified: bool = False
    shards_per_chunk: int = 4
    crop_scale_min: float = 0.8
    hflip: bool = True
    random_caption: bool = True
    quality_sidecar: str | None = "quality"
    allow_pipe: bool = False
    class_weights: dict[str, float] = field(default_factory=dict)


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) for p in parts])


def mix_plan(rng: np.random.Generator, weights: list[float], batch_size: int, stratified: bool) -> np.ndarray:
    """Source index of every slot of one batch."""
    p = np.asarray(weights, dtype=float) / sum(weights)
    if not stratified:
        return rng.choice(len(p), size=batch_size, p=p)
    exact = p * batch_size
    counts = np.floor(exact).astype(int)
    # Largest remainder; ties go to the lower source index so the plan is deterministic.
    for i in sorted(range(len(p)), key=lambda i: (-(exact[i] - counts[i]), i))[: batch_size - counts.sum()]:
        counts[i] += 1
    return rng.permutation(np.repeat(np.arange(len(p)), counts))


_LEFT_RIGHT = re.compile(r"\b(left|right|Left|Right|LEFT|RIGHT)\b")
_SWAP = {"left": "right", "right": "left", "Left": "Right", "Right": "Left", "LEFT": "RIGHT", "RIGHT": "LEFT"}


def mirror_caption(caption: str) -> str:
    """Swap left/right so a caption still describes a horizontally flipped image."""
    return _LEFT_RIGHT.sub(lambda m: _SWAP[m.group(1)], caption)


def random_resized_crop(img: torch.Tensor, *, size: int, scale_min: float, hflip: bool,
                        rng: np.random.Generator) -> tuple[torch.Tensor, bool]:
    """Seeded RandomResizedCrop + optional flip on a uint8 CHW tensor; returns (image, flipped)."""
    _, h, w = img.shape
    top, left, ch, cw = 0, 0, min(h, w), min(h, w)
    top, left = (h - ch) // 2, (w - cw) // 2
    for _ in range(10):
        area = h * w * rng.uniform(scale_min, 1.0)
        ratio = math.exp(rng.uniform(math.log(3 / 4), math.log(4 / 3)))
        cw_, ch_ = round(math.sqrt(area * ratio)), round(math.sqrt(area / ratio))
        if 0 < cw_ <= w and 0 < ch_ <= h:
            top, left, ch, cw = int(rng.integers(0, h - ch_ + 1)), int(rng.integers(0, w - cw_ + 1)), ch_, cw_
            break
    out = TF.resized_crop(img, top, left, ch, cw, [size, size], antialias=True)
    flipped = bool(hflip and rng.random() < 0.5)
    return (out.flip(-1) if flipped else out).contiguous(), flipped


class SourceStream:
    """Endless resampled stream of raw samples of one source for one logical worker."""

    def __init__(self, spec: LoaderSpec, src_idx: int, worker: int, *, chunk: int, offset: int,
                 skips: SkipLog) -> None:
        self.spec, self.src_idx, self.worker = spec, src_idx, worker
        self.chunk, self.offset, self.skips = chunk, offset, skips
        self.items: list[dict] | None = None
        urls = spec.sources[src_idx].urls
        total = spec.world_size * max(spec.num_workers, 1)
        g = spec.rank * max(spec.num_workers, 1) + worker
        self.pool = urls[g::total] if len(urls) >= total else list(urls)
        self._has_sidecar: dict[str, bool] = {}

    def _sidecars(self, url: str) -> tuple[str, ...]:
        name = self.spec.quality_sidecar
        if not name:
            return ()
        if url not in self._has_sidecar:
            self._has_sidecar[url] = url_exists(sidecar_url(url, name))
        return (name,) if self._has_sidecar[url] else ()

    def _load(self) -> None:
        rng = _rng(self.spec.seed, self.spec.rank, self.worker, self.src_idx, self.chunk, _TAG_CHUNK)
        k = min(self.spec.shards_per_chunk, len(self.pool))
        picks = rng.choice(len(self.pool), size=k, replace=False)
        samples = []
        for i in picks:
            url = self.pool[i]
            samples.extend(iter_shard(url, sidecars=self._sidecars(url), allow_pipe=self.spec.allow_pipe,
                                      skips=self.skips))
        self.items = [samples[i] for i in rng.permutation(len(samples))]

    def next(self) -> tuple[dict, int, int]:
        """(raw sample, chunk, offset) of the next position."""
        empty = 0
        while True:
            if self.items is None:
                self._load()
            if self.offset < len(self.items):
                item, pos = self.items[self.offset], (self.chunk, self.offset)
                self.offset += 1
                return item, *pos
            empty = empty + 1 if not self.items else 0
            if empty > _MAX_EMPTY_CHUNKS:
                raise ValueError(f"source {self.spec.sources[self.src_idx].name!r}: shards yield no samples")
            self.chunk, self.offset, self.items = self.chunk + 1, 0, None


def prepare_sample(raw: dict, spec: LoaderSpec, rng: np.random.Generator, counts: Counter,
                   skips: SkipLog) -> dict | None:
    """Quality check, decode to uint8, crop, caption choice and class weight; None = dropped."""
    key, url = raw["__key__"], raw.get("__url__")
    qkey = f"{spec.quality_sidecar}.msgpack" if spec.quality_sidecar else None
    if qkey in raw:
        try:
            quality = msgpack.unpackb(raw[qkey], raw=False)
            keep = bool(quality.get("keep"))
        except (ValueError, AttributeError, msgpack.ExtraData):
            skips.add("corrupt_quality.msgpack", key, url)
            return None
        if not keep:
            counts["quality_dropped"] += 1
            return None
    sample = decode_sample({k: v for k, v in raw.items() if k != qkey}, image="uint8", skips=skips)
    if sample is None:
        return None
    ext = next((e for e in IMAGE_EXTS + ("jpeg",) if e in sample), None)
    if ext is None:
        skips.add("no_image", key, url)
        return None
    meta = sample.get("json") if isinstance(sample.get("json"), dict) else {}
    captions = [c for c in (meta.get("captions") or []) if isinstance(c, str) and c.strip()]
    primary = sample.get("txt") if isinstance(sample.get("txt"), str) else None
    if not captions and primary:
        captions = [primary]
    if not captions:
        skips.add("no_caption", key, url)
        return None
    idx = int(rng.integers(len(captions))) if spec.random_caption else 0
    caption = captions[idx] if spec.random_caption or not primary else primary
    image, flipped = random_resized_crop(sample[ext], size=spec.image_size, scale_min=spec.crop_scale_min,
                                         hflip=spec.hflip, rng=rng)
    if flipped:
        caption = mirror_caption(caption)
    cls = meta.get("class")
    weight = spec.class_weights.get(str(cls), 1.0) if cls is not None else 1.0
    return {"key": key, "image": image, "caption": caption, "weight": weight, "class": cls}


def iter_batches(spec: LoaderSpec, worker: int, state: dict | None = None):
    """Endless batches of one logical worker, starting at ``state`` (see module docstring)."""
    skips = SkipLog()
    start = state["streams"] if state else [[0, 0]] * len(spec.sources)
    streams = [SourceStream(spec, i, worker, chunk=c, offset=o, skips=skips) for i, (c, o) in enumerate(start)]
    tokenizer = build_tokenizer(spec.tokenizer)
    weights = [s.weight for s in spec.sources]
    b = state["batch"] if state else 0
    while True:
        plan = mix_plan(_rng(spec.seed, spec.rank, worker, b, _TAG_BATCH), weights, spec.batch_size, spec.stratified)
        counts: Counter = Counter()
        skipped_before = skips.as_dict()
        items, names = [], []
        for s in plan:
            while True:
                raw, chunk, offset = streams[s].next()
                rng = _rng(spec.seed, spec.rank, worker, s, chunk, offset, _TAG_SAMPLE)
                item = prepare_sample(raw, spec, rng, counts, skips)
                if item is not None:
                    break
            items.append(item)
            names.append(spec.sources[s].name)
        b += 1
        after = skips.as_dict()
        counts.update({f"skip_{k}": v - skipped_before.get(k, 0) for k, v in after.items()
                       if v - skipped_before.get(k, 0)})
        yield {
            "keys": [it["key"] for it in items],
            "images": torch.stack([it["image"] for it in items]),
            "text": tokenizer([it["caption"] for it in items]),
            "captions": [it["caption"] for it in items],
            "weights": torch.tensor([it["weight"] for it in items], dtype=torch.float32),
            "sources": names,
            "counts": dict(counts),
            "state": {"worker": worker, "batch": b, "streams": [[st.chunk, st.offset] for st in streams]},
        }


class MixDataset(IterableDataset):
    """IterableDataset of whole batches; ``resume`` is the trainer's saved :class:`LoaderState` dict."""

    def __init__(self, spec: LoaderSpec, resume: dict | None = None) -> None:
        super().__init__()
        self.spec, self.resume = spec, resume

    def __iter__(self):
        info = get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        if nw != max(self.spec.num_workers, 1):
            raise ValueError(f"loader started with {nw} workers, spec says {self.spec.num_workers}")
        rotation = self.resume["next_worker"] if self.resume else 0
        worker = (wid + rotation) % nw
        state = (self.resume or {}).get("workers", {}).get(str(worker))
        if info is not None:
            torch.set_num_threads(1)
        yield from iter_batches(self.spec, worker, state)


class LoaderState:
    """The trainer's view of the data position: newest state per logical worker."""

    def __init__(self, num_workers: int, saved: dict | None = None) -> None:
        self.num_workers = max(num_workers, 1)
        saved = saved or {}
        self.workers: dict[str, dict] = dict(saved.get("workers", {}))
        self.next_worker: int = int(saved.get("next_worker", 0))
        self.batches: int = int(saved.get("batches", 0))

    def update(self, batch: dict) -> None:
        st = batch["state"]
        if st["worker"] != self.next_worker:
            raise RuntimeError(f"loader order broken: batch from worker {st['worker']}, expected {self.next_worker}")
        self.workers[str(st["worker"])] = st
        self.next_worker = (st["worker"] + 1) % self.num_workers
        self.batches += 1

    def to_dict(self) -> dict:
        return {"workers": self.workers, "next_worker": self.next_worker, "batches": self.batches}


def make_loader(spec: LoaderSpec, resume: dict | None = None) -> DataLoader:
    """DataLoader over :class:`MixDataset` (not for ``accelerator.prepare``: it splits by itself)."""
    nw = spec.num_workers
    return DataLoader(MixDataset(spec, resume), batch_size=None, num_workers=nw,
                      prefetch_factor=2 if nw else None, persistent_workers=False,
                      pin_memory=torch.cuda.is_available())


def _manifest_dirs(source: list[str]) -> list[str]:
    dirs = []
    for s in source:
        s = str(s)
        d = s if Path(s).is_dir() else s.rsplit("/", 1)[0] if "/" in s else "."
        if d not in dirs:
            dirs.append(d)
    return dirs


def read_manifests(source: list[str]) -> dict:
    """Summed ``total_samples`` and ``stats.by_class`` of the dataset.json beside a source's shards."""
    total, by_class, found = 0, Counter(), []
    for d in _manifest_dirs(source):
        try:
            index = read_index(d)
        except (FileNotFoundError, OSError, ValueError) as e:
            log.warning("no dataset.json for %s (%s): epoch size and class weights ignore it", d, e)
            continue
        total += int(index.get("total_samples", 0))
        by_class.update(index.get("stats", {}).get("by_class", {}))
        found.append(d)
    return {"total_samples": total, "by_class": dict(by_class), "dirs": found}


def build_sources(real: list[str], synthetic: list[str], synthetic_ratio: float, *,
                  allow_pipe: bool = False) -> list[MixSource]:
    """The weighted sources; a missing source is left out with a warning stating the realised mix."""
    if not 0.0 <= synthetic_ratio <= 1.0:
        raise ValueError(f"data.synthetic_ratio must be in [0, 1], got {synthetic_ratio}")
    sources = []
    for name, urls, weight in (("real", real, 1.0 - synthetic_ratio), ("synthetic", synthetic, synthetic_ratio)):
        if urls and weight > 0:
            sources.append(MixSource(name, expand_urls(list(urls), allow_pipe=allow_pipe), weight))
        elif urls:
            log.warning("source %s has weight 0 and is not read", name)
    if not sources:
        raise ValueError("no data: give data.real and/or data.synthetic shard URLs (--real / --synthetic)")
    if len(sources) == 1:
        sources[0].weight = 1.0
        log.warning("only the %s source is given: training on 100%% %s (requested synthetic_ratio %.2f)",
                    sources[0].name, sources[0].name, synthetic_ratio)
    return sources
