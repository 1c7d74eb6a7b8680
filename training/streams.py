"""Per-source raw sample streams of the Stage 2 loader: resampled chunks of shards read
interleaved, through a shuffle buffer that spans chunks and can be rebuilt from a small state.

Counter-based randomness throughout (``counter_rng(seed, rank, worker, ...)``), so any position of
a stream can be rebuilt; see :func:`resampled_samples` for the shuffle and :class:`ShuffleState` for
its resume state.
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Iterator
from dataclasses import asdict, dataclass, fields

import numpy as np

from training.mix import LoaderSpec
from wds_tools.reader import SkipLog, iter_shard
from wds_tools.urls import ShardNotFoundError, sidecar_url, url_exists

# The last part of every counter_rng key: what the draw is for, so two uses never share a stream.
TAG_CHUNK, TAG_SAMPLE, TAG_BATCH, TAG_DELAY = 1, 2, 3, 4
_DELAY_BLOCK = 1024
_MAX_EMPTY_CHUNKS = 50


def counter_rng(*parts: int) -> np.random.Generator:
    """A generator seeded by a tuple of integers (seed, rank, worker, ..., tag): the same tuple
    draws the same numbers in any process, so any position of the stream can be rebuilt."""
    return np.random.default_rng([int(p) for p in parts])


@dataclass(frozen=True)
class ShuffleState:
    """Where one source's shuffled stream stands: enough to rebuild its shuffle buffer exactly.

    Schema, saved per source in every loader worker's position (a checkpoint's
    ``data_state.rank<R>.json``: ``loader.workers["<worker>"].streams[<source index>]``, ``null``
    before the source's first sample) as a JSON object of five integers:

    - ``chunk``, ``offset``: the raw position (chunk number, sample number within the chunk's
      interleaved shards) of the oldest sample still held in the buffer: a rebuild reads from here;
    - ``t``: that sample's raw number counted over all chunks (the shuffle's clock);
    - ``last_key``, ``last_t``: order key (``t + delay``) and raw number of the last sample out: a
      rebuild drops every sample ordered at or before ``(last_key, last_t)``.

    ``ShuffleState()`` is the start of a stream. Checkpoints written before this class stored the
    same five numbers as a list ``[chunk, offset, t, last_key, last_t]``; :meth:`from_saved` reads both.
    """

    chunk: int = 0
    offset: int = 0
    t: int = 0
    last_key: int = -1
    last_t: int = -1

    def to_dict(self) -> dict[str, int]:
        """The JSON form saved in a checkpoint."""
        return asdict(self)

    @classmethod
    def from_saved(cls, saved: ShuffleState | dict | list | tuple) -> ShuffleState:
        """Read a saved state (the JSON object, or the five-item list of older checkpoints)."""
        if isinstance(saved, ShuffleState):
            return saved
        names = [f.name for f in fields(cls)]
        if isinstance(saved, dict) and sorted(saved) == sorted(names):
            return cls(**{k: int(saved[k]) for k in names})
        if isinstance(saved, (list, tuple)) and len(saved) == len(names):
            return cls(*(int(v) for v in saved))
        raise ValueError(f"data position {saved!r} is not a shuffle state {{{', '.join(names)}}} (a checkpoint "
                         "of an older loader); start a new run (train.resume=)")


def worker_shards(spec: LoaderSpec, src_idx: int, worker: int) -> list[str]:
    """Shards of one source for this (rank, worker): a node and worker split when there are enough."""
    urls = spec.sources[src_idx].urls
    total = spec.world_size * max(spec.num_workers, 1)
    g = spec.rank * max(spec.num_workers, 1) + worker
    return urls[g::total] if len(urls) >= total else list(urls)


def chunk_urls(spec: LoaderSpec, src_idx: int, worker: int, chunk: int) -> list[str]:
    """The ``shards_per_chunk`` shards of chunk ``chunk``, drawn from this worker's pool."""
    pool = worker_shards(spec, src_idx, worker)
    rng = counter_rng(spec.seed, spec.rank, worker, src_idx, chunk, TAG_CHUNK)
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
            cache[block] = counter_rng(spec.seed, spec.rank, worker, src_idx, *block, TAG_DELAY).integers(
                0, spec.shuffle_buffer, size=_DELAY_BLOCK)
        return int(cache[block][offset % _DELAY_BLOCK])
    return delay


def resampled_samples(*, spec: LoaderSpec, src_idx: int, worker: int,
                      resume: ShuffleState | dict | list | None = None, skips: SkipLog) -> Iterator[dict]:
    """Source stage: endless shuffled raw samples of one source.

    Shuffle buffer spanning chunks: raw sample number ``t`` (counted over all chunks) gets a seeded
    delay ``d < shuffle_buffer`` and samples come out in ``(t + d, t)`` order. A sample can leave as
    soon as sample ``t + d`` has been read, so at most ``shuffle_buffer`` samples are held, and the
    output order is a fixed function of the seed: the resume state (:class:`ShuffleState`: where the
    oldest held sample was read, and the order key of the last sample out) rebuilds the buffer by
    re-reading at most ``shuffle_buffer`` raw samples. Each sample carries ``__pos__ = (source,
    chunk, offset)`` (its raw position, which seeds its crop and caption) and ``__resume__``, the
    :class:`ShuffleState` right after it.
    """
    if spec.shuffle_buffer < 1:
        raise ValueError(f"shuffle_buffer must be >= 1, got {spec.shuffle_buffer}")
    state = ShuffleState.from_saved(resume) if resume is not None else ShuffleState()
    chunk, offset, t, last_key, last_t = state.chunk, state.offset, state.t, state.last_key, state.last_t
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
            oldest_t, oldest_chunk, oldest_offset = held[0] if held else (t + 1, c, o + 1)
            yield {**raw, "__pos__": (src_idx, sc, so),
                   "__resume__": ShuffleState(chunk=oldest_chunk, offset=oldest_offset, t=oldest_t,
                                              last_key=k, last_t=tt)}
        t += 1
