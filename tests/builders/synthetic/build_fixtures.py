"""Fixtures of the synthetic builder's tests: real tiny shards and a config over the tiny models.

Imported by the test modules that use them (the tiny models come from this folder's conftest).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from builders.demo_images import make_demo_tree
from builders.real.build import build_real
from builders.real.config import RealBuildConfig
from builders.synthetic.config import SyntheticBuildConfig
from wds_tools.config import load_config

REPO = Path(__file__).resolve().parents[3]
TINY = REPO / "configs" / "build" / "synthetic-tiny.yaml"
# Small and fast: 32 px tiles, 64 px generation, 2 steps, 2 variants.
FAST = ["size=32", "upscale.size=64", "chunk_size=2", "workers=1", "device=cpu",
        "modes.per_image=2", "preview=false"]


@pytest.fixture(scope="session")
def real_shards(tmp_path_factory) -> Path:
    """A real set built by builders.real from the demo tiles: train (2 shards of 2) and val."""
    root = tmp_path_factory.mktemp("real_set")
    tree = make_demo_tree(root / "tiles", per_class=1, size=32, seed=3)
    rows = [{"image": p.relative_to(tree).as_posix(), "class": p.parent.name,
             "split": "val" if p.parent.name == "urban" else "train"} for p in sorted(tree.rglob("*.png"))]
    listing = tree / "tiles.jsonl"
    listing.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = load_config(RealBuildConfig, REPO / "configs" / "build" / "real.yaml", [
        f"input={listing}", f"output={root / 'real'}", "size=32", "images_per_shard=2", "workers=1",
        "m2b.analysis_size=32", "augment.per_image=1", "zoom.enabled=false", "preview=false"])
    build_real(cfg, progress=False)
    return root / "real"


@pytest.fixture(scope="session")
def model_overrides(tiny_esrgan, tiny_vlm, tiny_grounding_dino, tiny_sam, tiny_sd3) -> list[str]:
    """Dotted overrides pointing every stage at its tiny model."""
    return [f"upscale.model={tiny_esrgan['x4_pth']}", f"describe.model={tiny_vlm}",
            f"ground.model={tiny_grounding_dino}", f"segment.model={tiny_sam['model']}",
            f"segment.arch={tiny_sam['arch']}",
            f"generate.model={tiny_sd3}"]


@pytest.fixture
def syn_cfg(model_overrides):
    """``syn_cfg(input, output, *overrides)`` -> a checked SyntheticBuildConfig."""
    def make(inp, out, *extra) -> SyntheticBuildConfig:
        return load_config(SyntheticBuildConfig, TINY,
                           [f"input={inp}", f"output={out}", *FAST, *model_overrides, *extra])
    return make


def shard_hashes(out: Path) -> dict[str, str]:
    return {p.name: json.loads(p.read_text())["sha256"]
            for p in sorted((out / "train").glob("*.stats.json"))}
