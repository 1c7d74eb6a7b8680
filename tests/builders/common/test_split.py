"""One held-out split: the real build records the split it made, and the synthetic builder given
the same images takes it from there (or refuses a split set by hand that differs)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from builders.common.plan import item_key
from builders.demo_images import make_demo_tree
from builders.real.build import build_real
from builders.real.config import RealBuildConfig
from builders.synthetic.config import SyntheticBuildConfig
from builders.synthetic.sources import plan
from wds_tools.config import load_config
from wds_tools.reader import iter_shard

REPO = Path(__file__).resolve().parents[3]


@pytest.fixture(scope="module")
def real_build(tmp_path_factory) -> tuple[Path, Path]:
    """(image folder, real build of it holding 30% out as val at seed 7)."""
    root = tmp_path_factory.mktemp("split")
    tree = make_demo_tree(root / "tiles", per_class=4, size=32, seed=2)
    cfg = load_config(RealBuildConfig, REPO / "configs" / "build" / "real.yaml", [
        f"input={tree}", f"output={root / 'real'}", "seed=7", "splits.val_fraction=0.3", "size=32",
        "images_per_shard=4", "workers=1", "m2b.analysis_size=32", "augment.per_image=0",
        "zoom.enabled=false", "preview=false"])
    build_real(cfg, progress=False)
    return tree, root / "real"


def _synthetic_keys(tree: Path, *overrides: str) -> set[str]:
    cfg = load_config(SyntheticBuildConfig, REPO / "configs" / "build" / "synthetic-tiny.yaml",
                      [f"input={tree}", "output=unused", *overrides])
    return {key for unit in plan(cfg) for key, _ in unit.items}


def test_synthetic_build_uses_the_real_builds_recorded_split(real_build):
    tree, real = real_build
    recorded = json.loads((real / "build_plan.json").read_text())["heldout_split"]
    assert recorded == {"seed": 7, "val_fraction": 0.3, "test_fraction": 0.0}
    held_out = {s["__key__"] for p in sorted((real / "val").glob("*.tar")) for s in iter_shard(str(p))}
    every = {item_key(p.relative_to(tree).as_posix()) for p in tree.rglob("*.png")}
    assert held_out and held_out < every
    for split_from in (real, real / "build_plan.json"):
        assert _synthetic_keys(tree, f"inputs.split_from={split_from}") == every - held_out
    # the same values by hand agree, so they are accepted
    assert _synthetic_keys(tree, f"inputs.split_from={real}", "inputs.split_seed=7",
                           "inputs.val_fraction=0.3") == every - held_out


def test_a_split_set_by_hand_that_differs_from_the_real_builds_is_refused(real_build):
    tree, real = real_build
    for wrong in (["inputs.val_fraction=0.3"], ["inputs.split_seed=7", "inputs.val_fraction=0.2"],
                  ["inputs.split_seed=7", "inputs.val_fraction=0.3", "inputs.test_fraction=0.1"]):
        with pytest.raises(ValueError, match=r"inputs\.split_from=.* records another held-out split than the "
                                             r"one set by hand \(.*!="):
            _synthetic_keys(tree, f"inputs.split_from={real}", *wrong)


def test_split_from_without_a_recorded_split_is_refused(real_build, tmp_path):
    tree, real = real_build
    old = json.loads((real / "build_plan.json").read_text())
    del old["heldout_split"]  # as written before builds recorded their split
    (tmp_path / "build_plan.json").write_text(json.dumps(old))
    with pytest.raises(ValueError, match=r"records no held-out split .* rebuild it, or set inputs\.val_fraction"):
        _synthetic_keys(tree, f"inputs.split_from={tmp_path}")
    with pytest.raises(ValueError, match=r"inputs\.split_from=.*: no build_plan\.json there"):
        _synthetic_keys(tree, f"inputs.split_from={tmp_path / 'nowhere'}")
