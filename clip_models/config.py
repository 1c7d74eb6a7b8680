"""The model section shared by every stage's config (no torch import, so configs load without it).

One syntax names weights everywhere (quality filter, Stage 2 training, evaluation, export):
``pretrained`` is a local checkpoint file or ``hf-hub:<org>/<repo>/<file>``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

HUB_PREFIX = "hf-hub:"
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
CHECKPOINT_SUFFIXES = (".pt", ".pth", ".bin", ".safetensors", ".ckpt")


def remoteclip_file(name: str) -> str:
    """File name of the RemoteCLIP checkpoint for open_clip model ``name`` in ``chendelong/RemoteCLIP``."""
    stem = os.path.splitext(os.path.basename(name))[0] if name.endswith(".json") else name
    return f"RemoteCLIP-{stem.removesuffix('-quickgelu')}.pt"


@dataclass
class ModelConfig:
    """Which open_clip model to build, which weights to load, and where inference runs."""

    # An open_clip model name (RemoteCLIP: ViT-B-32-quickgelu, ViT-L-14-quickgelu, RN50-quickgelu)
    # or the path of a model-config JSON, registered under its file stem (tiny test models).
    name: str = "ViT-B-32-quickgelu"
    # A local checkpoint (.pt/.pth/.bin: torch.load(weights_only=True); .safetensors), or
    # hf-hub:<org>/<repo>/<file>; empty or null = seeded random weights.
    pretrained: str | None = ""
    # A model-config JSON to register before building; `name` then names the model in it.
    config_file: str = ""
    # Stage 2: replace nn.MultiheadAttention by q/k/v/out Linears + scaled_dot_product_attention.
    swap_attention: bool = True
    # Inference (quality filter, evaluation): "auto" = cuda when available. Stage 2 training
    # takes both from Accelerate (train.mixed_precision).
    device: str = "auto"
    # auto (bf16 autocast on cuda, fp32 elsewhere), fp32, bf16 or fp16.
    precision: str = "auto"

    @classmethod
    def check_keys(cls, data: dict) -> None:
        """Reject keys of older configs with the replacement spelled out (``wds_tools.config`` calls
        this with the raw mapping before building)."""
        if "hub_filename" in data:
            repo = str(data.get("pretrained") or "<org>/<repo>").removeprefix(HUB_PREFIX)
            raise ValueError(f"hub_filename is no longer read: name the file in pretrained, e.g. "
                             f"pretrained: {HUB_PREFIX}{repo}/{data['hub_filename']}")

    def validate(self) -> None:
        """Raise ``ValueError`` naming the bad value (an old hub repo id gets its replacement)."""
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if not self.name:
            raise ValueError("name must name an open_clip model or a model-config .json")
        hint = legacy_pretrained_hint(self.pretrained or "", self.name)
        if hint:
            raise ValueError(hint)


def legacy_pretrained_hint(pretrained: str, name: str) -> str | None:
    """What to write instead of a bare hub repo id (``org/repo``, the old syntax); None if fine."""
    if not pretrained or pretrained.startswith(HUB_PREFIX) or pretrained.count("/") != 1:
        return None
    if pretrained.endswith(CHECKPOINT_SUFFIXES) or os.path.exists(os.path.expanduser(pretrained)):
        return None
    return (f"pretrained {pretrained!r} is neither a checkpoint file nor a hub file; a hub checkpoint is "
            f"written {HUB_PREFIX}<org>/<repo>/<file>, e.g. pretrained: "
            f"{HUB_PREFIX}{pretrained}/{remoteclip_file(name)}")
