"""Device and precision choices; the CUDA path runs where a GPU is present."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from clip_models.device import autocast, autocast_dtype, resolve_device
from tests.clip_models.conftest import TINY


def test_precision_choices():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert autocast_dtype("auto", cpu) is None and autocast_dtype("auto", cuda) is torch.bfloat16
    assert autocast_dtype("fp16", cpu) is torch.float16 and autocast_dtype("fp32", cuda) is None
    with pytest.raises(ValueError, match="fp8"):
        autocast_dtype("fp8", cpu)
    assert resolve_device("cpu") == cpu
    with pytest.raises(ValueError, match="model.device 'gpu0'"):
        resolve_device("gpu0")


@pytest.mark.gpu
def test_inference_model_on_cuda_runs_in_bf16():
    from clip_models.loading import load_clip

    model, size, tok = load_clip(dataclasses.replace(TINY, device="auto", precision="auto"))
    device = next(model.parameters()).device
    assert device.type == "cuda" and next(model.parameters()).dtype == torch.float32
    with autocast("auto", device), torch.no_grad():
        out = model.encode_image(torch.randn(2, 3, size, size, device=device))
    assert out.dtype == torch.bfloat16 and out.device.type == "cuda"
