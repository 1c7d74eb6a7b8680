"""The Stage 2 model: open_clip with attention swapped and LoRA applied (backbone frozen), wrapped so
DDP sees one forward (uint8 images and tokens in, normalised features out), and the loss terms of a
batch (weighted CLIP loss, optional SPARC fine-grained loss)."""

from __future__ import annotations

import logging
import math

import torch
import torch.nn.functional as F
from torch import nn

from clip_models.attention import swap_attention
from clip_models.image_tower import encode_image_tokens, has_patch_tokens
from clip_models.loading import create_model
from clip_models.preprocess import image_norm
from clip_models.text_tower import encode_text, encode_text_tokens
from training.config import Stage2Config
from training.lora import apply_lora, mark_trainable
from training.losses import sparc_loss, weighted_clip_loss, weighted_mean, word_token_mask

log = logging.getLogger(__name__)


class Stage2Model(nn.Module):
    """Wraps the CLIP model so DDP sees one forward: uint8 images + tokens in, features out."""

    def __init__(self, *, clip: nn.Module, fine_grained: bool) -> None:
        super().__init__()
        self.clip, self.fine_grained = clip, fine_grained
        mean, std = image_norm(clip)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)

    def forward(self, images: torch.Tensor, text: torch.Tensor) -> dict[str, torch.Tensor]:
        x = (images.float() / 255.0 - self.mean) / self.std  # normalised on the device
        out = {"logit_scale": self.clip.logit_scale.exp()}
        if self.fine_grained:
            img, out["patches"] = encode_image_tokens(self.clip, x)
            txt, out["words"] = encode_text_tokens(self.clip, text)
        else:
            img, txt = self.clip.encode_image(x), encode_text(self.clip, text, trim=False)
        out["image"], out["text"] = F.normalize(img.float(), dim=-1), F.normalize(txt.float(), dim=-1)
        return out


def build_model(cfg: Stage2Config) -> tuple[Stage2Model, dict]:
    """open_clip model, attention swapped, LoRA applied, backbone frozen."""
    clip = create_model(cfg.model)
    if cfg.model.swap_attention:
        swap_attention(clip)
    wrapped = apply_lora(clip, cfg.lora)
    counts = mark_trainable(clip, cfg.lora)
    fine = cfg.loss.use_fine_grained and has_patch_tokens(clip)
    if cfg.loss.use_fine_grained and not fine:
        log.warning("fine-grained loss disabled: %s has no patch tokens (convolutional image tower)", cfg.model.name)
    log.info("LoRA on %d Linears; trainable %d of %d parameters", len(wrapped), counts["trainable"], counts["total"])
    return Stage2Model(clip=clip, fine_grained=fine), {**counts, "lora_modules": len(wrapped), "fine_grained": fine}


def _false_negative_ids(batch: dict, cfg: Stage2Config) -> dict[str, torch.Tensor | None]:
    """The id tensors the contrastive loss masks by, as the loss config enables them."""
    return {"groups": batch.get("groups") if cfg.loss.mask_same_source else None,
            "captions": batch.get("caption_ids") if cfg.loss.mask_same_caption else None}


def forward_losses(model: nn.Module, batch: dict, cfg: Stage2Config) -> dict[str, torch.Tensor]:
    """All loss terms of one (local) batch; ``total`` is what is back-propagated."""
    out = model(batch["images"], batch["text"])
    weights = batch["weights"]
    terms = weighted_clip_loss(out["image"], out["text"], out["logit_scale"], weights,
                               **_false_negative_ids(batch, cfg))
    terms["clip_loss"] = terms.pop("loss")
    total = terms["clip_loss"]
    if "patches" in out:
        per_sample = sparc_loss(out["words"], out["patches"], word_token_mask(batch["text"]),
                                temperature=cfg.loss.fine_grained_temperature,
                                text=batch["text"] if cfg.loss.mask_repeated_words else None)
        terms["fine_grained_loss"] = weighted_mean(per_sample, weights)
        total = total + cfg.loss.fine_grained_weight * terms["fine_grained_loss"]
    terms["total_loss"] = total
    return terms


def clamp_logit_scale(clip: nn.Module, *, max_scale: float = 100.0) -> None:
    """Keep the learned temperature in [0, ln 100] after each update, as open_clip's trainer does
    (an unbounded scale lets the loss collapse onto a few logits)."""
    with torch.no_grad():
        clip.logit_scale.clamp_(0, math.log(max_scale))


def model_of(accelerator, model: nn.Module) -> nn.Module:
    """The open_clip model inside DDP / compile wrappers."""
    return accelerator.unwrap_model(model).clip
