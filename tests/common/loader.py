"""Inputs for tests of the Stage 2 loader: the tiny model's tokenizer spec and class-sorted shards."""

from __future__ import annotations

from pathlib import Path

# tokenizer_spec("tiny-clip"): open_clip's own tokenizer, 77 tokens
TOKENIZER = {"hf_name": None, "context_length": 77}
CLASSES8 = ["airport", "forest", "river", "beach"] * 2


def class_sorted_source(root: Path, *, n_shards: int = 8, originals: int = 4, augs: int = 2) -> Path:
    """Shards of one class each (a class-sorted build): originals followed by their augmentations."""
    from tests.training.conftest import tile
    from wds_tools.sample import encode_image, make_sample
    from wds_tools.writer import shard_name, write_shard

    root.mkdir(parents=True, exist_ok=True)
    for s in range(n_shards):
        cls, samples = f"{CLASSES8[s]}{s}", []
        for i in range(originals):
            key = f"c{s}_img{i}"
            for a in range(augs + 1):
                meta = {"source": "real", "class": cls, "captions": [f"{cls} image {i} copy {a}"],
                        "parent": key if a else None}
                samples.append(make_sample(key=key if a == 0 else f"{key}_aug_{a}",
                                           image=encode_image(tile(CLASSES8[s], 10 * s + i, size=16)),
                                           caption=meta["captions"][0], meta=meta))
        write_shard(root / shard_name("real", s), samples)
    return root
