"""The stand-in base: a tiny CLIP trained from scratch on the base split's captions.

RemoteCLIP knows the aerial domain's words; a random tiny CLIP does not, and LoRA cannot train
the token-embedding table, so the base sees every caption of its own images (class templates
and the builder's generated captions) for a short full training.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from clip_models.config import ModelConfig
from clip_models.model import build_tokenizer, create_clip, image_norm, image_size, tokenizer_spec
from clip_models.text_tower import encode_text
from training.data import mirror_caption, random_resized_crop
from training.evaluate import EvalSet

log = logging.getLogger(__name__)


def pretrain_base(data: EvalSet, *, model: ModelConfig, out: Path, steps: int, batch_size: int,
                  lr: float, seed: int = 0) -> dict:
    """Full training from the seeded init; saves an open_clip state dict at ``out``."""
    clip = create_clip(model)
    size = image_size(clip)
    tokenizer = build_tokenizer(tokenizer_spec(model.name))
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in image_norm(clip))
    opt = torch.optim.AdamW(clip.parameters(), lr=lr, weight_decay=0.1)
    rng = np.random.default_rng(seed)
    clip.train()
    losses, t0 = [], time.time()
    for step in range(steps):
        idx = rng.choice(len(data.images), size=min(batch_size, len(data.images)), replace=False)
        imgs, texts = [], []
        for i in idx:
            img, flipped = random_resized_crop(data.images[i], size=size, scale_min=0.6, hflip=True, rng=rng)
            caps = data.captions[i]
            cap = caps[int(rng.integers(len(caps)))]
            imgs.append(img)
            texts.append(mirror_caption(cap) if flipped else cap)
        x = (torch.stack(imgs).float() / 255 - mean) / std
        img_f = F.normalize(clip.encode_image(x), dim=-1)
        txt_f = F.normalize(encode_text(clip, tokenizer(texts)), dim=-1)  # cut after the last end token
        logits = clip.logit_scale.exp() * img_f @ txt_f.T
        target = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target)) / 2
        opt.zero_grad(set_to_none=True)
        loss.backward()
        warm = max(1, steps // 10)
        for g in opt.param_groups:  # warm-up, then cosine decay: the base ends settled
            g["lr"] = lr * min(1.0, (step + 1) / warm) * 0.5 * (1 + np.cos(np.pi * step / steps))
        opt.step()
        losses.append(round(loss.item(), 4))
        if step % max(1, steps // 5) == 0:
            log.info("base step %d/%d loss %.3f", step, steps, losses[-1])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp-partial")
    torch.save(clip.state_dict(), tmp)
    tmp.replace(out)
    log.info("base: %d steps in %.1f s, loss %.3f -> %.3f", steps, time.time() - t0, losses[0], losses[-1])
    return {"path": str(out), "steps": steps, "batch_size": batch_size, "lr": lr, "seconds": time.time() - t0,
            "loss_first": losses[0], "loss_last": losses[-1]}
