"""One open_clip loader for every stage: the model name, its weights, a seeded initialisation.

``ModelConfig.pretrained`` is a local file or ``hf-hub:<org>/<repo>/<file>`` (fetched with
huggingface_hub, which honours ``HF_HUB_OFFLINE`` and its cache). Checkpoint layouts accepted:
a plain open_clip state dict (RemoteCLIP's files), an open_clip_train checkpoint
(``{"epoch", "name", "state_dict", "optimizer"}`` with DDP's ``module.`` prefixes) and safetensors.
Pickle-based files go through ``torch.load(weights_only=True)``: tensors and plain containers only,
never code. Loading is strict, with one documented exception: ``attn_mask``, the text tower's
causal mask, which open_clip rebuilds from the model config (older versions saved it as a buffer;
a saved copy is dropped, a missing one is fine). Position embeddings of another image grid or text
context are resized as open_clip's own loader does (bicubic for the grid, linear for text).
"""

from __future__ import annotations

import logging
import os
import pickle
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import open_clip
import torch
from open_clip.convert import convert_state_dict
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from torch import nn

from clip_models.config import HUB_PREFIX, ModelConfig, legacy_pretrained_hint
from clip_models.device import autocast_dtype, resolve_device
from clip_models.preprocess import image_size
from clip_models.text_tower import build_tokenizer, tokenizer_spec

log = logging.getLogger(__name__)
REPO = Path(__file__).resolve().parents[1]
TOLERATED = frozenset({"attn_mask"})  # rebuilt from the config; see the module docstring
_registered: set[str] = set()


def register_model_config(path: str) -> str:
    """Make a model-config JSON (e.g. a tiny test CLIP) known to open_clip; returns its name (the stem)."""
    p = Path(os.path.expanduser(path))
    if not p.is_file() and not p.is_absolute():
        p = REPO / path  # a config in the repository, from any working directory
    if not p.is_file():
        raise ValueError(f"model config file {path!r} does not exist")
    key = str(p.resolve())
    if key not in _registered:  # open_clip rescans every registered path on each call
        open_clip.add_model_config(p)
        _registered.add(key)
    return p.stem


def model_name(cfg: ModelConfig) -> str:
    """The open_clip name of ``cfg.name`` (registering ``cfg.config_file`` or a ``.json`` name first)."""
    if cfg.config_file:
        register_model_config(cfg.config_file)
    name = register_model_config(cfg.name) if cfg.name.endswith(".json") else cfg.name
    if name not in open_clip.list_models():
        raise ValueError(f"model.name {cfg.name!r} is neither an open_clip model (e.g. ViT-B-32-quickgelu, "
                         "RN50) nor a model-config .json")
    return name


def resolve_checkpoint(pretrained: str, *, name: str = "") -> Path:
    """Local path of ``pretrained``: an existing file, or ``hf-hub:<org>/<repo>/<file>`` downloaded."""
    if pretrained.startswith(HUB_PREFIX):
        parts = pretrained.removeprefix(HUB_PREFIX).split("/")
        if len(parts) < 3 or not all(parts):
            raise ValueError(f"model.pretrained: a hub checkpoint is written '{HUB_PREFIX}<org>/<repo>/<file>', "
                             f"got {pretrained!r}")
        from huggingface_hub import hf_hub_download

        try:
            return Path(hf_hub_download("/".join(parts[:2]), "/".join(parts[2:])))
        except Exception as e:  # noqa: BLE001 - offline, missing repo/file, auth: one clear message
            raise ValueError(f"model.pretrained: cannot fetch {pretrained!r} ({type(e).__name__}); give a local "
                             "file instead, e.g. model.pretrained=/path/RemoteCLIP-ViT-B-32.pt") from e
    hint = legacy_pretrained_hint(pretrained, name)
    if hint:
        raise ValueError(f"model.{hint}")
    path = Path(os.path.expanduser(pretrained))
    if not path.is_file():
        raise ValueError(f"model.pretrained: checkpoint not found: {pretrained!r} "
                         f"(give a local file or {HUB_PREFIX}<org>/<repo>/<file>)")
    return path


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The state dict in a checkpoint file, read without running code (``module.`` prefixes removed)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path), device="cpu")
    else:
        try:
            sd = torch.load(path, map_location="cpu", weights_only=True)
        except pickle.UnpicklingError as e:
            raise ValueError(f"{path}: refused, it holds objects other than tensors and plain containers "
                             f"(read with weights_only=True): {str(e).splitlines()[0]}") from e
    if isinstance(sd, dict) and isinstance(sd.get("state_dict"), dict):
        sd = sd["state_dict"]  # open_clip_train: {"epoch", "name", "state_dict", "optimizer"}
    if not isinstance(sd, dict) or not sd or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{path}: expected a state dict of tensors, got {type(sd).__name__}")
    return {k.removeprefix("module."): v for k, v in sd.items()}  # DDP-wrapped training


def load_checkpoint(model: nn.Module, path: str | Path) -> None:
    """Load ``path`` into ``model`` strictly (``attn_mask`` aside), resizing position embeddings."""
    sd = convert_state_dict(model, read_state_dict(path))  # other CLIP layouts open_clip converts
    own = model.state_dict()
    for key in TOLERATED - own.keys():
        sd.pop(key, None)
    resize_pos_embed(sd, model)
    resize_text_pos_embed(sd, model)
    try:
        missing, unexpected = model.load_state_dict(sd, strict=False)
    except RuntimeError as e:  # shape mismatches
        raise ValueError(f"{path} does not fit this model: {str(e).splitlines()[-1].strip()}") from e
    missing = [k for k in missing if k not in TOLERATED]
    if missing or unexpected:
        raise ValueError(f"{path} does not fit this model: {len(missing)} missing keys {missing[:5]}, "
                         f"{len(unexpected)} unexpected keys {unexpected[:5]}")


class _DropRandomInitWarning(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("No pretrained weights loaded")


@contextmanager
def _quiet_random_init() -> Iterator[None]:
    """open_clip warns "initialized randomly" whenever it loads no weights itself; ours follow (or
    we say so), so its warning would be wrong or doubled."""
    f = _DropRandomInitWarning()
    logging.getLogger().addFilter(f)  # open_clip logs through the root logger
    try:
        yield
    finally:
        logging.getLogger().removeFilter(f)


def create_model(cfg: ModelConfig) -> nn.Module:
    """Build ``cfg.name`` (fp32, CPU) and load ``cfg.pretrained``; without weights the init is seeded,
    so every stage (and a resumed run) rebuilds the same base model."""
    name = model_name(cfg)
    path = resolve_checkpoint(cfg.pretrained, name=cfg.name) if cfg.pretrained else None  # fail before building
    with torch.random.fork_rng(devices=[]), _quiet_random_init():
        torch.manual_seed(0)
        model = open_clip.create_model(name, pretrained=None)
    if path is None:
        log.warning("model %s has seeded random weights (model.pretrained is empty)", name)
    else:
        load_checkpoint(model, path)
        log.info("loaded %s into %s", path, name)
    return model


def load_clip(cfg: ModelConfig) -> tuple[nn.Module, int, object]:
    """An inference model on ``cfg.device`` -> ``(model, input size, tokenizer)``.

    The weights stay fp32; ``cfg.precision`` is applied with autocast at inference time.
    """
    device = resolve_device(cfg.device)
    autocast_dtype(cfg.precision, device)  # validate before any loading
    model = create_model(cfg).to(device).eval().requires_grad_(False)
    return model, image_size(model), build_tokenizer(tokenizer_spec(model_name(cfg)))
