"""Write tiny random-weight models for the five synthetic stages (demo and benchmark).

    python scripts/tiny_synthetic_models.py --output demo_out/models

Each is saved the way real weights ship (a BasicSR .pth, save_pretrained folders, a SAM state
dict, a diffusers folder) by the same builders the tests use, so the synthetic builder loads
them through its production code path. Prints the dotted overrides that point a build at them.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.builders.conftest import make_tiny_qwen2vl  # noqa: E402
from tests.builders.synthetic import conftest as tiny  # noqa: E402


def make_tiny_sam(out: Path) -> Path:
    """A random-weight SAM state dict beside its architecture JSON (the tests' tiny SAM)."""
    import json

    import torch

    from builders.synthetic.stages.segment import ARCH_DEFAULTS, build_sam

    out.mkdir(parents=True, exist_ok=True)
    (out / "sam_tiny.json").write_text(json.dumps(tiny.TINY_SAM))
    torch.manual_seed(0)
    torch.save(build_sam({**ARCH_DEFAULTS, **tiny.TINY_SAM}).state_dict(), out / "sam_tiny.pth")
    return out


def write_tiny_models(out: Path) -> dict[str, str]:
    """Build (or reuse) every tiny model under ``out``; returns stage -> path."""
    import torch

    out.mkdir(parents=True, exist_ok=True)
    paths = {"upscale": out / "tiny_x4.pth", "describe": out / "tiny-qwen2vl",
             "ground": out / "tiny-grounding-dino", "segment": out / "tiny-sam",
             "generate": out / "tiny-sd3"}
    if not paths["upscale"].exists():
        torch.save({"params_ema": tiny._rrdb_state(4, 8, 1)}, paths["upscale"])
    makers = {"describe": make_tiny_qwen2vl, "ground": tiny.make_tiny_grounding_dino,
              "segment": make_tiny_sam, "generate": tiny.make_tiny_sd3}
    for stage, make in makers.items():
        if not paths[stage].exists():
            got = make(paths[stage])
            paths[stage] = Path(got) if got else paths[stage]
    return {k: str(v) for k, v in paths.items()}


def overrides(paths: dict[str, str]) -> list[str]:
    out = [f"{stage}.model={path}" for stage, path in paths.items() if stage != "segment"]
    seg = Path(paths["segment"])
    return out + [f"segment.model={seg / 'sam_tiny.pth'}", f"segment.arch={seg / 'sam_tiny.json'}"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--output", default="demo_out/models")
    args = ap.parse_args(argv)
    print(" ".join(overrides(write_tiny_models(Path(args.output)))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
