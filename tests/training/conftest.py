"""Tiny shard fixtures of the sample contract (real tar shards, dataset.json, quality sidecars)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from wds_tools.manifest import write_index
from wds_tools.quality_record import SELECTION_FORMAT, sha256_url, write_selection
from wds_tools.sample import encode_image, make_key, make_sample
from wds_tools.shard_identity import shard_identity
from wds_tools.sidecar import write_sidecar
from wds_tools.writer import shard_name, write_shard

os.environ.setdefault("HF_HUB_OFFLINE", "1")
REPO = Path(__file__).resolve().parents[2]
TINY_CONFIG = REPO / "configs" / "train" / "tiny.yaml"
COLORS = {"airport": (200, 60, 60), "forest": (40, 160, 60), "river": (40, 80, 200), "beach": (220, 200, 120)}


def tile(cls: str, seed: int, size: int = 48) -> Image.Image:
    """A small image whose colour tells its class, with seeded noise."""
    rng = np.random.default_rng(seed)
    base = np.array(COLORS[cls], dtype=np.float32)
    arr = np.clip(base + rng.normal(0, 25, (size, size, 3)), 0, 255).astype(np.uint8)
    return Image.fromarray(arr)


def write_test_selection(out: Path, shards: list[Path]) -> Path:
    """A finished quality selection over ``shards`` (their sidecars and shard bytes as they are
    now), as the filter writes it: ``selection.json`` in ``out``."""
    from collections import Counter

    from wds_tools.quality_record import MEMBER, decode_record, keep
    from wds_tools.sidecar import read_sidecar
    entries = []
    for shard in shards:
        recs = [decode_record(v[MEMBER]) for v in read_sidecar(str(shard), "quality").values()]
        side = shard.with_name(shard.name[:-4] + ".quality.tar")
        entries.append({"shard": str(shard), "shard_identity": shard_identity(str(shard)),
                        "sidecar": str(side), "sha256": sha256_url(str(side)),
                        "samples": len(recs), "kept": sum(keep(r) for r in recs),
                        "kept_by_class": dict(Counter(r.cls for r in recs if keep(r)))})
    doc = {"format": SELECTION_FORMAT, "threshold": 0.3, "sidecars": entries}
    return Path(write_selection(doc, str(out)))


def make_source(out: Path, *, source: str, n_shards: int, per_shard: int, classes: list[str],
                drop_every: int = 0, ext: str = "jpg", selection: bool = True) -> Path:
    """Write ``n_shards`` shards with quality sidecars (dropping every ``drop_every``-th sample) and
    a finished ``selection.json``; ``selection=False`` writes neither sidecars nor selection."""
    out.mkdir(parents=True, exist_ok=True)
    i = 0
    paths = []
    for s in range(n_shards):
        samples, quality = [], []
        for _ in range(per_shard):
            cls = classes[i % len(classes)]
            key = make_key(source, s, i)
            caps = [f"an aerial image of a {cls}", f"a {cls} seen from above, sample {i}"]
            meta = {"source": source, "captions": caps, "caption_sources": ["original", "vlm"],
                    "class": cls, "split": "train", "parent": None, "kind": "original"}
            samples.append(make_sample(key=key, image=encode_image(tile(cls, i), ext=ext), caption=caps[0],
                                       meta=meta, image_ext=ext))
            keep = not (drop_every and i % drop_every == drop_every - 1)
            quality.append((key, {"msgpack": {"scores": {"clip": 0.3}, "composite": 0.3, "class": cls,
                                              "keep": keep, "reasons": [] if keep else ["low"]}}))
            i += 1
        path = out / shard_name(source, s)
        write_shard(path, samples)
        paths.append(path)
        if selection:
            write_sidecar(path, "quality", quality, shard_identity=shard_identity(str(path)))
    if selection:
        write_test_selection(out, paths)
    write_index(out, name=source)
    return out


@pytest.fixture(scope="session")
def shard_dirs(tmp_path_factory) -> dict[str, Path]:
    """A real source (4 shards x 6, two classes, one rare) and a synthetic one with quality drops."""
    root = tmp_path_factory.mktemp("stage2_shards")
    real = make_source(root / "real", source="real", n_shards=4, per_shard=6,
                       classes=["airport", "forest", "forest", "forest", "forest", "forest"])
    synth = make_source(root / "synthetic", source="synthetic", n_shards=3, per_shard=8,
                        classes=["river", "beach"], drop_every=4, ext="png")
    val = make_source(root / "val", source="real", n_shards=1, per_shard=8,
                      classes=["airport", "forest", "river", "beach"])
    return {"real": real, "synthetic": synth, "val": val}


@pytest.fixture(scope="session")
def trained_run(shard_dirs, tmp_path_factory):
    """A finished tiny Stage 2 run with held-out figures before and after: ``(output folder, config)``."""
    from training.config import Stage2Config
    from training.trainer import train
    from wds_tools.config import load_config

    out = tmp_path_factory.mktemp("trained_run")
    cfg = load_config(Stage2Config, TINY_CONFIG, [
        f"data.real=[{shard_dirs['real']}]", f"data.synthetic=[{shard_dirs['synthetic']}]",
        f"eval.shards=[{shard_dirs['val']}]", f"train.output={out}", "train.max_steps=6",
        "train.checkpoint_every=0", "train.log_every=3"])
    train(cfg)
    return out, cfg
