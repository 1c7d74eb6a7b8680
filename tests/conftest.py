"""Shared fixtures: tiny images and tiny shards of the sample contract."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# A Ray driver in this process (the cluster tests) would otherwise replace builtins.print with
# tqdm_ray.safe_print for the rest of the session, which other tests see (a pickled print).
os.environ.setdefault("RAY_TQDM_PATCH_PRINT", "0")

UCM_SAMPLE = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ucm_sample"


def pytest_collection_modifyitems(config, items):
    """Skip tests marked ``gpu`` where no CUDA device is present (checked once, only if any is marked)."""
    gpu = [item for item in items if item.get_closest_marker("gpu")]
    if not gpu:
        return
    import torch

    if not torch.cuda.is_available():
        for item in gpu:
            item.add_marker(pytest.mark.skip(reason="needs a CUDA device"))


def tiny_image(seed: int, size: int = 32) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8))


def make_contract_samples(n: int, *, prefix: str = "s", source: str = "real", classes=("a", "b")):
    """``n`` valid samples with distinct keys, captions and classes."""
    from wds_tools.sample import encode_image, make_sample

    return [
        make_sample(
            key=f"{prefix}{i:04d}",
            image=encode_image(tiny_image(i)),
            caption=f"caption {prefix}{i}",
            meta={"source": source, "class": classes[i % len(classes)], "split": "train", "kind": "original"},
        )
        for i in range(n)
    ]


@pytest.fixture
def shard_dir(tmp_path: Path) -> Path:
    """A directory with three finished shards (4 + 4 + 2 samples) and its index."""
    from wds_tools.manifest import write_index
    from wds_tools.writer import shard_name, write_shard

    samples = make_contract_samples(10)
    for i, chunk in enumerate((samples[:4], samples[4:8], samples[8:])):
        write_shard(tmp_path / shard_name("real-train", i), chunk)
    write_index(tmp_path, name="tiny")
    return tmp_path


@pytest.fixture
def ucm_sample() -> Path:
    if not (UCM_SAMPLE / "captions.json").exists():
        pytest.skip("ucm_sample not present")
    return UCM_SAMPLE
