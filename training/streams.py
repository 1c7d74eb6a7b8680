"""Per-source raw sample streams of the Stage 2 loader: resampled chunks of shards read
interleaved, through a shuffle buffer that spans chunks and can be rebuilt from a small state.

Counter-based randomness throughout (``_rng(seed, rank, worker, ...)``), so any position of a
stream can be rebuilt; see :func:`resampled_samples` for the shuffle and its resume state.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

from wds_tools.reader import SkipLog, iter_shard
from wds_tools.urls import ShardNotFoundError, sidecar_url, url_exists

if TYPE_CHECKING:
    from training.data import LoaderSpec

_TAG_CHUNK, _TAG_SAMPLE, _TAG_BATCH, _TAG_DELAY = 1, 2, 3, 4
_DELAY_BLOCK = 1024
_MAX_EMPTY_CHUNKS = 50


def _rng(*parts: int) -> np.random.Generator:
    return np.random.default_rng([int(p) for p in parts])


def worker_shards(spec: LoaderSpec, src_idx: int, worker: int) -> list[str]:
    """Shards of one source for this (rank, worker): a node and worker split when there are enough."""
    urls = spec.sources[src_idx].urls
    total = spec.world_size * max(spec.num_workers, 1)
    g = spec.rank * max(spec.num_workers, 1) + worker
    return urls[g::total] if len(urls) >= total else list(urls)


def chunk_urls(spec: LoaderSpec, src_idx: int, worker: int, chunk: int) -> list[str]:
    """The ``shards_per_chunk`` shards of chunk ``chunk``, drawn from this worker's pool."""
    pool = worker_shards(spec, src_idx, worker)
    rng = _rng(spec.seed, spec.rank, worker, src_idx, chunk, _TAG_CHUNK)
    return [pool[i] for i in rng.choice(len(pool), size=min(spec.shards_per_chunk, len(pool)), replace=False)]


def interleave(iterators: list[Iterator[dict]]) -> Iterator[dict]:
    """Round-robin over open iterators, dropping each as it ends: K shards read side by side."""
    live = list(iterators)
    while live:
        nxt = []
        for it in live:
            item = next(it, None)
            if item is not None:
                nxt.append(it)
                yield item
        live = nxt


def raw_stream(*, spec: LoaderSpec, src_idx: int, worker: int, chunk: int, offset: int,
               skips: SkipLog) -> Iterator[tuple[int, int, dict]]:
    """Endless (chunk, offset, raw sample) of one source from (chunk, offset) on: each chunk's
    shards are opened together and read interleaved, holding one sample of each at a time."""
    name = spec.quality_sidecar
    has_sidecar: dict[str, bool] = {}
    empty = missing = 0
    url = ""
    while True:
        streams = []
        for url in chunk_urls(spec, src_idx, worker, chunk):
            if name and url not in has_sidecar:
                has_sidecar[url] = url_exists(sidecar_url(url, name))
            sidecars = (name,) if name and has_sidecar[url] else ()
            # a shard deleted (or refused) since the run started: a counted skip, its URL logged
            streams.append(iter_shard(url, sidecars=sidecars, allow_pipe=spec.allow_pipe, skips=skips,
                                      skip_missing=True))
        n, unreadable = -1, skips.counts["unreadable_shard"]
        for n, sample in enumerate(interleave(streams)):
            if n >= offset:
                yield chunk, n, sample
        empty = 0 if n >= 0 else empty + 1
        gone = skips.counts["unreadable_shard"] > unreadable
        missing = 0 if n >= 0 else (missing + 1 if gone else 0)
        if empty > _MAX_EMPTY_CHUNKS:
            _no_samples(spec.sources[src_idx].name, missing == empty, url)
        chunk, offset = chunk + 1, 0


def _no_samples(source: str, all_gone: bool, url: str) -> None:
    if all_gone:  # every shard deleted or refused since the start: one line, not a worker traceback
        raise ShardNotFoundError(f"source {source!r}: no shard can be read any more (the last tried: "
                                 f"shard not found: {url!r}; deleted or moved?)")
    raise ValueError(f"source {source!r}: its shards yield no samples")


def _delays(spec: LoaderSpec, src_idx: int, worker: int):
    """delay(chunk, offset) in [0, shuffle_buffer): counter-based, so a replay draws the same."""
    cache: dict[tuple[int, int], np.ndarray] = {}

    def delay(chunk: int, offset: int) -> int:
        block = (chunk, offset // _DELAY_BLOCK)
        if block not in cache:
            cache.clear()
            cache[block] = _rng(spec.seed, spec.rank, worker, src_idx, *block, _TAG_DELAY).integers(
                0, spec.shuffle_buffer, size=_DELAY_BLOCK)
        return int(cache[block][offset % _DELAY_BLOCK])
    return delay


def resampled_samples(*, spec: LoaderSpec, src_idx: int, worker: int, resume: list[int] | None = None,
                      skips: SkipLog) -> Iterator[dict]:
    """Source stage: endless shuffled raw samples of one source.

    Shuffle buffer spanning chunks: raw sample number ``t`` (counted over all chunks) gets a seeded
    delay ``d < shuffle_buffer`` and samples come out in ``(t + d, t)`` order. A sample can leave as
    soon as sample ``t + d`` has been read, so at most ``shuffle_buffer`` samples are held, and the
    output order is a fixed function of the seed: the resume state ``[chunk, offset, t, last_key,
    last_t]`` (where the oldest held sample was read, and the order key of the last sample out)
    rebuilds the buffer by re-reading at most ``shuffle_buffer`` raw samples. Each sample carries
    ``__pos__ = (source, chunk, offset)`` (its raw position, which seeds its crop and caption) and
    ``__resume__``, the state right after it.
    """
    if spec.shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be >= 1, got {spec.shuffle_buffer}")
    if resume is not None and len(resume) != 5:
        raise ValueError(f"data position {resume!r} is not a shuffle state [chunk, offset, t, last_key, "
                         f"last_t] (a checkpoint of an older loader); start a new run (train.resume=)")
    chunk, offset, t, last_key, last_t = resume or (0, 0, 0, -1, -1)
    delay = _delays(spec, src_idx, worker)
    heap: list = []
    held: deque = deque()   # (t, chunk, offset) of held samples in read order
    out: set[int] = set()   # t of samples out while an older one is still held
    for c, o, sample in raw_stream(spec=spec, src_idx=src_idx, worker=worker, chunk=chunk, offset=offset,
                                   skips=skips):
        key = t + delay(c, o)
        if (key, t) > (last_key, last_t):  # not out before the resume point
            heapq.heappush(heap, (key, t, c, o, sample))
            held.append((t, c, o))
        while heap and heap[0][0] <= t:
            k, tt, sc, so, raw = heapq.heappop(heap)
            out.add(tt)
            while held and held[0][0] in out:
                out.discard(held.popleft()[0])
            start = list(held[0]) if held else [t + 1, c, o + 1]
            yield {**raw, "__pos__": (src_idx, sc, so), "__resume__": [start[1], start[2], start[0], k, tt]}
        t += 1
