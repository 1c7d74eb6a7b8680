"""Stage 2 streaming loader: a seeded, resumable, weighted sample-level mix of shard sources.

Layout of the stream (all randomness counter-based, so any position can be rebuilt):

* Every (rank, loader worker) pair owns a *logical worker* id. Each source's shards are split by
  node and worker (``urls[g::ranks*workers]`` for global worker ``g``; every pair reads all
  shards when there are fewer shards than pairs) and are then **resampled with replacement**: chunk
  ``c`` of a source is ``shards_per_chunk`` shards drawn by ``rng(seed, rank, worker, source, c)``,
  opened together and read interleaved (round-robin), so only one sample per open shard is held.
  The stream never ends, so every rank runs the same number of steps.
* A sample shuffle buffer of ``shuffle_buffer`` raw samples spans chunks: raw sample ``t`` gets a
  seeded delay below the buffer size and samples leave in ``(t + delay, t)`` order (see
  :func:`resampled_samples`); memory is bounded by the buffer, and the order is rebuildable.
* Batch ``b`` of a logical worker picks the source of each slot with ``rng(seed, rank, worker, b)``
  (independent draws with the source weights, or exact per-batch counts when ``stratified``).
* Per sample, the caption choice and the crop come from ``rng(..., chunk, offset)``.

Stages (small generators, each with a curried ``wds_tools.stages.stage`` wrapper): per source
``resampled_samples -> quality_selected -> decoded_augmented``; per worker ``mix_batches ->
collated`` (uint8 stack + one tokenizer call per batch). No stage reads ahead.

Each batch also carries int64 ``groups`` (source image: ``json["parent"]`` or the key of an
original) and ``caption_ids`` (its token row) for the loss's false-negative masking, and ``mix``
(distinct classes, same-source pairs) for the training log.

A worker's position is ``{"batch": b, "streams": [[chunk, offset, t, last_key, last_t], ...]}``
(per source, the shuffle's resume state, None before the first sample); it travels with every
batch, the trainer keeps the newest one per worker, and a resumed loader restarts each worker from
it (rotating worker ids so DataLoader's round-robin continues where it stopped). Quality-sidecar
drops and corrupt samples are counted per batch and summed by the trainer.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np
import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clip_models.preprocess import decode_uint8, resized_crop
from clip_models.text_tower import CachedTokenizer, build_tokenizer
from training.preempt import ignore_stop_signals
from training.streams import _TAG_BATCH, _TAG_SAMPLE, _rng, resampled_samples, worker_shards  # noqa: F401
from wds_tools.caption_geometry import mirror_caption
from wds_tools.malloc import keep_freed_memory
from wds_tools.manifest import read_index
from wds_tools.quality_record import PENDING, QualityRecordError, decode, keep, kept_caption_indices, sample_captions
from wds_tools.reader import SkipLog, decode_sample
from wds_tools.sample import IMAGE_EXTS
from wds_tools.stages import stage
from wds_tools.urls import expand_urls, is_folder, unique_urls

log = logging.getLogger(__name__)



@dataclass(kw_only=True)
class MixSource:
    """One weighted shard source."""

    name: str
    urls: list[str]
    weight: float


@dataclass(kw_only=True)
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
    shards_per_chunk: int = 16
    shuffle_buffer: int = 2000
    crop_scale_min: float = 0.8
    hflip: bool = True
    random_caption: bool = True
    quality_sidecar: str | None = "quality"
    allow_pipe: bool = False
    class_weights: dict[str, float] = field(default_factory=dict)
    # images above this many pixels are counted skips (0 = PIL's Image.MAX_IMAGE_PIXELS)
    max_image_pixels: int = 0


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
    out = resized_crop(img, top=top, left=left, height=ch, width=cw, size=size)
    flipped = bool(hflip and rng.random() < 0.5)
    return (out.flip(-1) if flipped else out).contiguous(), flipped


CAPTION_KEEP = "__caption_keep__"


def quality_select(src: Iterable[dict], *, member: str | None, skips: SkipLog, drops: Counter,
                   max_consecutive: int = 100_000) -> Iterator[dict]:
    """Stage: drop samples the quality selection did not keep; pass on which captions it kept.

    ``wds_tools.quality_record.keep`` decides (a pending record is never kept: counted as
    ``quality_pending``). A kept sample carries the kept caption indices as ``__caption_keep__``.
    Drops are expected, so they are counted in ``drops`` (summed into the training log), not logged
    one by one; a corrupt quality member is a logged skip.
    """
    dropped_in_a_row = 0
    for raw in src:
        if member and member in raw:
            try:
                record = decode(raw[member])
                kept = keep(record)
            except QualityRecordError:
                skips.add(f"corrupt_{member}", raw["__key__"], raw.get("__url__"))
                record, kept = None, None
            if not kept:
                if kept is False:
                    drops["quality_pending" if PENDING in record.reasons else "quality_dropped"] += 1
                dropped_in_a_row += 1
                if dropped_in_a_row > max_consecutive:
                    raise ValueError(f"{max_consecutive} samples in a row failed the quality selection "
                                     f"(last {raw.get('__url__')})")
                continue
            raw = {k: v for k, v in raw.items() if k != member}
            raw[CAPTION_KEEP] = record
        dropped_in_a_row = 0
        yield raw


def decode_augment(src: Iterable[dict], *, spec: LoaderSpec, worker: int, skips: SkipLog) -> Iterator[dict]:
    """Stage: uint8 decode, seeded crop/flip and caption choice (rng from the sample's position)."""
    for raw in src:
        s, chunk, offset = raw["__pos__"]
        rng = _rng(spec.seed, spec.rank, worker, s, chunk, offset, _TAG_SAMPLE)
        item = prepare_sample(raw, spec=spec, rng=rng, skips=skips)
        if item is not None:
            item["__pos__"], item["__resume__"] = raw["__pos__"], raw["__resume__"]
            yield item


quality_selected = stage(quality_select)
decoded_augmented = stage(decode_augment)


def source_pipeline(*, spec: LoaderSpec, src_idx: int, worker: int, resume: list[int] | None,
                    skips: SkipLog, drops: Counter) -> wds.DataPipeline:
    """Resampled, shuffled shards -> quality selection -> decode + augment, for one source.

    Only the shuffle holds samples back, and its ``__resume__`` state accounts for them, so the
    state of the last sample out is the stream's exact position.
    """
    member = f"{spec.quality_sidecar}.msgpack" if spec.quality_sidecar else None
    return wds.DataPipeline(
        lambda: resampled_samples(spec=spec, src_idx=src_idx, worker=worker, resume=resume, skips=skips),
        quality_selected(member=member, skips=skips, drops=drops),
        decoded_augmented(spec=spec, worker=worker, skips=skips))


def prepare_sample(raw: dict, *, spec: LoaderSpec, rng: np.random.Generator, skips: SkipLog) -> dict | None:
    """Decode to uint8, crop, caption choice and class weight; None = counted skip.

    The caption is drawn among the captions the quality record kept (all without a record).
    """
    key, url = raw["__key__"], raw.get("__url__")
    sample = decode_sample({k: v for k, v in raw.items() if k not in ("__pos__", "__resume__", CAPTION_KEEP)},
                           image=decode_uint8, skips=skips, max_pixels=spec.max_image_pixels)
    if sample is None:
        return None
    ext = next((e for e in IMAGE_EXTS + ("jpeg",) if e in sample), None)
    if ext is None:
        skips.add("no_image", key, url)
        return None
    meta = sample.get("json") if isinstance(sample.get("json"), dict) else {}
    primary = sample.get("txt") if isinstance(sample.get("txt"), str) else None
    captions = [c for c, _ in sample_captions(meta, primary)]
    if not captions:
        skips.add("no_caption", key, url)
        return None
    record = raw.get(CAPTION_KEEP)
    if record is not None:
        kept = kept_caption_indices(record, len(captions))
        if not kept:  # None: the record's captions do not line up with the sample's
            skips.add("no_kept_caption" if kept == [] else "quality_captions_mismatch", key, url)
            return None
        primary = primary if primary in (captions[i] for i in kept) else None
        captions = [captions[i] for i in kept]
    caption = captions[int(rng.integers(len(captions)))] if spec.random_caption else (primary or captions[0])
    image, flipped = random_resized_crop(sample[ext], size=spec.image_size, scale_min=spec.crop_scale_min,
                                         hflip=spec.hflip, rng=rng)
    if flipped:
        caption = mirror_caption(caption)
    cls = meta.get("class")
    weight = spec.class_weights.get(str(cls), 1.0) if cls is not None else 1.0
    return {"key": key, "image": image, "caption": caption, "weight": weight, "class": cls,
            "group": source_group(meta, key)}


def source_group(meta: dict, key: str) -> str:
    """The source image a sample was made from: ``json["parent"]``, or its own key (an original)."""
    parent = meta.get("parent")
    return parent if isinstance(parent, str) and parent else key


def stable_id(data: str | bytes) -> int:
    """int64 id of a string or bytes, equal in every process (unlike ``hash``)."""
    raw = data.encode() if isinstance(data, str) else data
    return int.from_bytes(hashlib.blake2b(raw, digest_size=8).digest(), "little", signed=True)


def batch_mix(classes: list, groups: list[str]) -> dict[str, int]:
    """How mixed a batch is: distinct classes, and pairs of samples from one source image."""
    sizes = Counter(groups).values()
    return {"classes": len({c for c in classes if c is not None}),
            "same_source_pairs": sum(n * (n - 1) // 2 for n in sizes)}


def _deltas(before: dict, after: dict, prefix: str = "") -> dict[str, int]:
    return {prefix + k: n - before.get(k, 0) for k, n in after.items() if n - before.get(k, 0)}


def mix_batches(spec: LoaderSpec, worker: int, state: dict | None = None) -> Iterator[dict]:
    """Source stage of a worker: per slot, the next sample of the source the batch plan names."""
    skips, drops = SkipLog(), Counter()
    positions = [list(p) if p else None for p in (state["streams"] if state else [None] * len(spec.sources))]
    streams = [iter(source_pipeline(spec=spec, src_idx=i, worker=worker, resume=p, skips=skips,
                                     drops=drops)) for i, p in enumerate(positions)]
    weights = [s.weight for s in spec.sources]
    b = state["batch"] if state else 0
    while True:
        plan = mix_plan(_rng(spec.seed, spec.rank, worker, b, _TAG_BATCH), weights, spec.batch_size, spec.stratified)
        before, dropped_before = skips.as_dict(), dict(drops)
        items = []
        for s in plan:
            item = next(streams[s])
            positions[s] = list(item["__resume__"])
            items.append({**item, "source": spec.sources[s].name})
        b += 1
        counts = {**_deltas(before, skips.as_dict(), "skip_"), **_deltas(dropped_before, drops)}
        yield {"items": items, "counts": counts,
               "state": {"worker": worker, "batch": b, "streams": [list(p) if p else None for p in positions]}}


def collate_tokenize(src: Iterable[dict], *, tokenizer: dict) -> Iterator[dict]:
    """Stage: stack uint8 images, tokenise the batch's captions in one call."""
    tok = CachedTokenizer(build_tokenizer(tokenizer))  # augmentations repeat their parent's captions
    for batch in src:
        items = batch["items"]
        text = tok([it["caption"] for it in items])
        yield {
            "keys": [it["key"] for it in items],
            "images": torch.stack([it["image"] for it in items]),
            "text": text,
            # ids the loss masks false negatives by (identical tokens = identical caption)
            "groups": torch.tensor([stable_id(it["group"]) for it in items], dtype=torch.int64),
            "caption_ids": torch.tensor([stable_id(row.numpy().tobytes()) for row in text], dtype=torch.int64),
            "mix": batch_mix([it["class"] for it in items], [it["group"] for it in items]),
            "captions": [it["caption"] for it in items],
            "weights": torch.tensor([it["weight"] for it in items], dtype=torch.float32),
            "sources": [it["source"] for it in items],
            "counts": batch["counts"],
            "state": batch["state"],
        }


collated = stage(collate_tokenize)


def iter_batches(spec: LoaderSpec, worker: int, state: dict | None = None) -> Iterator[dict]:
    """Endless batches of one logical worker, starting at ``state`` (see module docstring)."""
    return iter(wds.DataPipeline(lambda: mix_batches(spec, worker, state), collated(tokenizer=spec.tokenizer)))


class MixDataset(IterableDataset):
    """IterableDataset of whole batches; ``resume`` is the trainer's saved :class:`LoaderState` dict."""

    def __init__(self, *, spec: LoaderSpec, resume: dict | None = None) -> None:
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
        keep_freed_memory()  # decoding allocates image-sized buffers per sample
        yield from iter_batches(self.spec, worker, state)


class LoaderState:
    """The trainer's view of the data position: newest state per logical worker."""

    def __init__(self, *, num_workers: int, saved: dict | None = None) -> None:
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


def make_loader(spec: LoaderSpec, resume: dict | None = None, *, prefetch_factor: int = 2) -> DataLoader:
    """DataLoader over :class:`MixDataset` (not for ``accelerator.prepare``: it splits by itself);
    ``prefetch_factor``: batches each worker prepares ahead (none without workers)."""
    nw = spec.num_workers
    # Workers ignore SIGTERM / SIGUSR1: the trainer alone handles a stop (training/preempt.py).
    return DataLoader(MixDataset(spec=spec, resume=resume), batch_size=None, num_workers=nw,
                      prefetch_factor=prefetch_factor if nw else None, persistent_workers=False,
                      pin_memory=torch.cuda.is_available(), worker_init_fn=ignore_stop_signals if nw else None)


@contextmanager
def worker_shutdown(loader: Iterable) -> Iterator[Iterator]:
    """Iterate ``loader`` (a :func:`make_loader`), its worker processes shut down however the loop
    ends: workers ignore SIGTERM, so one left behind by an exception would block the interpreter's
    exit (multiprocessing stops daemon children with SIGTERM, then joins them)."""
    batches = iter(loader)
    try:
        yield batches
    finally:
        shutdown = getattr(batches, "_shutdown_workers", None)  # torch's multi-process iterator
        if shutdown is not None:
            shutdown()


def _manifest_dirs(source: list[str]) -> list[str]:
    dirs = []
    for s in source:
        s = str(s)
        d = s if is_folder(s) else s.rsplit("/", 1)[0] if "/" in s else "."  # s3:// folders too
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
    """The weighted sources; a missing source is left out with a warning stating the realised mix.

    A shard listed more than once in a source (by any spelling of its path) is read once, with a
    warning counting the repeats: listing it twice would otherwise double its weight unnoticed.
    """
    if not 0.0 <= synthetic_ratio <= 1.0:
        raise ValueError(f"data.synthetic_ratio must be in [0, 1], got {synthetic_ratio}")
    sources, unused = [], []
    for name, urls, weight in (("real", real, 1.0 - synthetic_ratio), ("synthetic", synthetic, synthetic_ratio)):
        if urls and weight > 0:
            expanded, repeats = unique_urls(expand_urls(list(urls), allow_pipe=allow_pipe))
            if repeats:
                log.warning("data.%s lists %d shard(s) more than once; each is read once (%s)", name,
                            len(repeats), ", ".join(f"{u} x{n}" for u, n in list(repeats.items())[:5]))
            sources.append(MixSource(name=name, urls=expanded, weight=weight))
        elif urls:
            unused.append(name)
            log.warning("source %s has weight 0 and is not read", name)
    if not sources and unused:
        other = "synthetic" if unused == ["real"] else "real"
        raise ValueError(f"data.synthetic_ratio={synthetic_ratio:g} gives data.{unused[0]} weight 0, so it is "
                         f"unused, and data.{other} is empty: give data.{other} shards (--{other}) or change "
                         "data.synthetic_ratio")
    if not sources:
        raise ValueError("no data: give data.real and/or data.synthetic shard URLs (--real / --synthetic)")
    if len(sources) == 2:
        both = set(unique_urls(sources[0].urls + sources[1].urls)[1])
        if both:
            log.warning("%d shard(s) are in both data.real and data.synthetic and are read by both (%s)",
                        len(both), ", ".join(sorted(both)[:5]))
    if len(sources) == 1:
        sources[0].weight = 1.0
        log.warning("only the %s source is given: training on 100%% %s (requested synthetic_ratio %.2f)",
                    sources[0].name, sources[0].name, synthetic_ratio)
    return sources
