"""Load an open_clip model for scoring: a registered name or a JSON config, plus local/hub weights.

``model_name`` is an open_clip model name (RemoteCLIP uses ``ViT-B-32-quickgelu``: it was tuned from
OpenAI CLIP, which uses QuickGELU) or the path of a model-config JSON (registered under its file
stem; used for tiny random-weight models). ``pretrained`` is ``None`` (random weights), a local
checkpoint (``.pt``/``.bin`` loaded with ``weights_only=True``, or ``.safetensors``), or
``hf-hub:<org>/<repo>/<file>`` (e.g. ``hf-hub:chendelong/RemoteCLIP/RemoteCLIP-ViT-B-32.pt``),
fetched with huggingface_hub (honours ``HF_HUB_OFFLINE`` and the local cache).
"""

from __future__ import annotations

import logging
from pathlib import Path

import open_clip
import torch

from clip_models.devices import check_device

log = logging.getLogger(__name__)
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU; ValueError for a device
    that does not exist here."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(check_device(device))


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` (``None`` = plain fp32); ``auto`` is bf16 on CUDA only."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def _register(model_name: str) -> str:
    path = Path(model_name)
    if path.suffix != ".json":
        return model_name
    if not path.is_file():
        raise ValueError(f"model config file not found: {model_name!r}")
    open_clip.add_model_config(path)
    return path.stem


def resolve_checkpoint(pretrained: str) -> str:
    """A local checkpoint path for ``pretrained`` (downloading ``hf-hub:org/repo/file`` if needed)."""
    if pretrained.startswith("hf-hub:"):
        parts = pretrained[len("hf-hub:"):].split("/")
        if len(parts) < 3:
            raise ValueError(f"hub checkpoint must be 'hf-hub:<org>/<repo>/<file>', got {pretrained!r}")
        from huggingface_hub import hf_hub_download

        try:
            return hf_hub_download("/".join(parts[:2]), "/".join(parts[2:]))
        except Exception as e:  # noqa: BLE001 - offline, missing repo/file, auth: one clear message
            raise ValueError(f"cannot fetch checkpoint {pretrained!r} ({type(e).__name__}); "
                             "give a local file instead, e.g. model.pretrained=/path/RemoteCLIP-ViT-B-32.pt") from e
    if not Path(pretrained).is_file():
        raise ValueError(f"checkpoint not found: {pretrained!r} (give a local file or hf-hub:org/repo/file)")
    return pretrained


def load_clip(
    *, model_name: str, pretrained: str | None, device: str | torch.device = "auto", precision: str = "auto"
) -> tuple[torch.nn.Module, int, open_clip.tokenizer.SimpleTokenizer]:
    """Build ``model_name`` in eval mode on ``device`` -> ``(model, preprocess_size, tokenizer)``.

    Without ``pretrained`` the random weights are seeded (same model every call). The weights
    stay fp32; reduced ``precision`` is applied with autocast at inference time
    (see :func:`autocast_dtype`). ``preprocess_size`` is the square input side in pixels.
    """
    dev = resolve_device(str(device)) if not isinstance(device, torch.device) else device
    autocast_dtype(precision, dev)  # validate early, before any loading
    name = _register(model_name)
    if name not in open_clip.list_models():
        raise ValueError(f"unknown open_clip model {model_name!r}; e.g. ViT-B-32-quickgelu or a config .json")
    path = resolve_checkpoint(pretrained) if pretrained else None  # fail before building anything
    # random weights (tests, demos) come from a fixed seed, so a resumed run scores like the first
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=None, device="cpu")
    if path:
        incompatible = open_clip.load_checkpoint(model, path, weights_only=True)
        log.info("loaded %s into %s (%s)", path, name, incompatible)
    else:
        log.warning("model %s has random weights (no pretrained checkpoint given)", name)
    model = model.to(dev).eval().requires_grad_(False)
    size = open_clip.get_model_preprocess_cfg(model)["size"]
    size = int(size if isinstance(size, int) else size[0])
    return model, size, open_clip.get_tokenizer(name)
