"""Tiny random-weight models for the synthetic stages, saved the way real weights ship.

(The tiny Qwen2-VL, ``tiny_vlm``, comes from ``tests/builders/conftest.py``.)

Each fixture writes files a production run would load (a BasicSR ``.pth`` and ``.safetensors``,
``save_pretrained`` folders, a SAM state dict) and returns the path; the stages load them
through the same code as real weights. Session-scoped: built once per test run.
"""
from __future__ import annotations

from pathlib import Path

import pytest


def _rrdb_state(scale: int, nf: int, nb: int, gc: int = 32) -> dict:
    """A BasicSR RRDBNet state dict (Real-ESRGAN key names) with small random weights."""
    import torch

    g = torch.Generator().manual_seed(scale)

    def conv(cout, cin):
        return {"weight": torch.randn(cout, cin, 3, 3, generator=g) * (1.4 / (cin * 9) ** 0.5),
                "bias": torch.zeros(cout)}

    # Real-ESRGAN x2 pixel-unshuffles its input by 2 and then upsamples x4, as x4 does.
    layers = {"conv_first": conv(nf, 3 * 4 if scale == 2 else 3)}
    for b in range(nb):
        for r in (1, 2, 3):
            for k in range(1, 6):
                layers[f"body.{b}.rdb{r}.conv{k}"] = conv(nf if k == 5 else gc, nf + (k - 1) * gc)
    for name in ("conv_body", "conv_up1", "conv_up2", "conv_hr"):
        layers[name] = conv(nf, nf)
    layers["conv_last"] = conv(3, nf)
    layers["conv_last"]["bias"] += 0.5  # mid-grey output, so pixels vary with the input
    return {f"{name}.{k}": v for name, p in layers.items() for k, v in p.items()}


@pytest.fixture(scope="session")
def tiny_esrgan(tmp_path_factory) -> dict[str, Path]:
    """``{"x4_pth", "x2_pth", "x4_safetensors"}``: tiny RRDBNets (8 filters, 1 block)."""
    import torch
    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("tiny_esrgan")
    x4, x2 = _rrdb_state(4, 8, 1), _rrdb_state(2, 8, 1)
    torch.save({"params_ema": x4}, d / "tiny_x4.pth")
    torch.save({"params_ema": x2}, d / "tiny_x2.pth")
    save_file(x4, d / "tiny_x4.safetensors")
    return {"x4_pth": d / "tiny_x4.pth", "x2_pth": d / "tiny_x2.pth", "x4_safetensors": d / "tiny_x4.safetensors"}
