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
``resampled_samples -> kind_selected -> quality_selected -> decoded_augmented``; per worker ``mix_batches ->
collated`` (uint8 stack + one tokenizer call per batch). No stage reads ahead.

Each batch also carries int64 ``groups`` (source image: ``json["parent"]`` or the key of an
original) and ``caption_ids`` (its token row) for the loss's false-negative masking, and ``mix``
(distinct classes, same-source pairs) for the training log.

A worker's position is ``{"worker": w, "batch": b, "streams": [<ShuffleState dict> | None, ...]}``
(per source, the shuffle's resume state ``training.streams.ShuffleState``, None before the first
sample); it travels with every batch, the trainer keeps the newest one per worker
(:class:`LoaderState`, which documents the saved schema), and a resumed loader restarts each worker
from it (rotating worker ids so DataLoader's round-robin continues where it stopped).
Quality-sidecar drops, samples of kinds ``data.kinds`` leaves out and corrupt samples are counted
per batch and summed by the trainer.

Where the rest lives: the mix specification (sources, weights, loader settings) in
``training.mix``; per-source raw streams and the shuffle in ``training.streams``; decode, crop,
flip and caption choice in ``training.augment``.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from clip_models.text_tower import CachedTokenizer, build_tokenizer
from training.augment import CAPTION_KEEP, prepare_sample, random_resized_crop, source_group
from training.mix import LoaderSpec, MixSource, build_sources, mix_plan, read_manifests
from training.preempt import ignore_stop_signals
from training.streams import TAG_BATCH, TAG_SAMPLE, ShuffleState, counter_rng, resampled_samples
from wds_tools.caption_geometry import mirror_caption
from wds_tools.malloc import keep_freed_memory
from wds_tools.quality_record import PENDING, QualityRecordError, decode_record, keep
from wds_tools.reader import SkipLog
from wds_tools.stages import stage

# Re-exported: imported from here before the mix specification and augmentation had their modules.
__all__ = ["LoaderSpec", "LoaderState", "MixSource", "build_sources", "iter_batches", "make_loader",
           "mirror_caption", "mix_plan", "prepare_sample", "random_resized_crop", "read_manifests",
           "source_group", "stable_id", "worker_shutdown"]


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
                record = decode_record(raw[member])
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


def sample_kind(raw: dict) -> str | None:
    """``json["kind"]`` of a raw sample; "original" when it has none (the builders' convention);
    None when its json member does not parse (the decode stage counts that skip)."""
    try:
        meta = json.loads(raw.get("json") or b"{}")
    except (ValueError, UnicodeDecodeError):
        return None
    kind = meta.get("kind") if isinstance(meta, dict) else None
    return "original" if kind is None else str(kind)


def kind_select(src: Iterable[dict], *, kinds: tuple[str, ...], drops: Counter,
                max_consecutive: int = 100_000) -> Iterator[dict]:
    """Stage: keep only samples of the chosen kinds (``data.kinds``; empty = all).

    Others are counted in ``drops`` as ``kind_dropped`` (summed into the training log). A sample
    whose json does not parse is passed on for the decode stage to count as a skip.
    """
    if not kinds:
        yield from src
        return
    in_a_row = 0
    for raw in src:
        kind = sample_kind(raw)
        if kind is not None and kind not in kinds:
            drops["kind_dropped"] += 1
            in_a_row += 1
            if in_a_row > max_consecutive:
                raise ValueError(f"data.kinds={list(kinds)}: {max_consecutive} samples in a row were of "
                                 f"other kinds (last {kind!r} in {raw.get('__url__')})")
            continue
        in_a_row = 0
        yield raw


def decode_augment(src: Iterable[dict], *, spec: LoaderSpec, worker: int, skips: SkipLog) -> Iterator[dict]:
    """Stage: uint8 decode, seeded crop/flip and caption choice (rng from the sample's position)."""
    for raw in src:
        s, chunk, offset = raw["__pos__"]
        rng = counter_rng(spec.seed, spec.rank, worker, s, chunk, offset, TAG_SAMPLE)
        item = prepare_sample(raw, spec=spec, rng=rng, skips=skips)
        if item is not None:
            item["__pos__"], item["__resume__"] = raw["__pos__"], raw["__resume__"]
            yield item


kind_selected = stage(kind_select)
quality_selected = stage(quality_select)
decoded_augmented = stage(decode_augment)


def source_pipeline(*, spec: LoaderSpec, src_idx: int, worker: int, resume: ShuffleState | None,
                    skips: SkipLog, drops: Counter) -> wds.DataPipeline:
    """Resampled, shuffled shards -> kind selection -> quality selection -> decode + augment, for
    one source (kinds first: a sample of another kind needs no quality record decoded).

    Only the shuffle holds samples back, and its ``__resume__`` state accounts for them, so the
    state of the last sample out is the stream's exact position.
    """
    member = f"{spec.quality_sidecar}.msgpack" if spec.quality_sidecar else None
    return wds.DataPipeline(
        lambda: resampled_samples(spec=spec, src_idx=src_idx, worker=worker, resume=resume, skips=skips),
        kind_selected(kinds=tuple(spec.kinds), drops=drops),
        quality_selected(member=member, skips=skips, drops=drops),
        decoded_augmented(spec=spec, worker=worker, skips=skips))


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
    positions = [ShuffleState.from_saved(p) if p else None
                 for p in (state["streams"] if state else [None] * len(spec.sources))]
    streams = [iter(source_pipeline(spec=spec, src_idx=i, worker=worker, resume=p, skips=skips,
                                     drops=drops)) for i, p in enumerate(positions)]
    weights = [s.weight for s in spec.sources]
    b = state["batch"] if state else 0
    while True:
        plan = mix_plan(counter_rng(spec.seed, spec.rank, worker, b, TAG_BATCH), weights, spec.batch_size,
                        spec.stratified)
        before, dropped_before = skips.as_dict(), dict(drops)
        items = []
        for s in plan:
            item = next(streams[s])
            positions[s] = item["__resume__"]
            items.append({**item, "source": spec.sources[s].name})
        b += 1
        counts = {**_deltas(before, skips.as_dict(), "skip_"), **_deltas(dropped_before, drops)}
        yield {"items": items, "counts": counts,
               "state": {"worker": worker, "batch": b, "streams": [p.to_dict() if p else None for p in positions]}}


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
    """The trainer's view of the data position: newest state per logical worker.

    Saved schema (``to_dict``; a checkpoint's ``data_state.rank<R>.json`` holds it under
    ``"loader"``, beside the rank's ``"counters"``)::

        {"workers": {"<worker>": {"worker": int, "batch": int,   # batches this worker has made
                                  "streams": [ShuffleState.to_dict() | None, ...]}},  # per source
         "next_worker": int,   # the worker whose batch DataLoader hands out next
         "batches": int}       # batches this rank has taken

    ``training.streams.ShuffleState`` documents a stream's five numbers.
    """

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
