"""The mix specification of the Stage 2 loader: which shard sources, at what weights, and every
loader setting a worker needs (:class:`LoaderSpec`), built from the config by :func:`build_sources`
(the mix ratio ``data.synthetic_ratio`` is applied here) and sized by :func:`read_manifests`.

The loader that reads a spec is ``training.data``; the per-source streams are ``training.streams``.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from wds_tools.manifest import read_index
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
    # sample kinds (json["kind"]) to train on; empty = all (training.data.kind_select)
    kinds: tuple[str, ...] = ()


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
