"""Correctness reference: the project's lean LoRA against peft's own LoRA on the same model.

Both start from the same attention-swapped base with identical LoRA factors (peft's A is copied
from ours; both B are zero), train the same parameters (LoRA + projection heads) with the same
AdamW on the same batches, and log the CLIP loss per step. Equal maths gives equal curves up to
float rounding; a wrong scaling, a missed target or a frozen head shows at once.
"""

from __future__ import annotations

import copy
import time

import numpy as np
import torch
import torch.nn.functional as F

from clip_models.attention import swap_attention
from clip_models.loading import create_model
from clip_models.preprocess import image_norm, image_size
from clip_models.text_tower import build_tokenizer, encode_text, tokenizer_spec
from training.config import LoraConfig
from training.data import random_resized_crop
from training.evaluate import EvalSet
from training.lora import apply_lora, full_parameter_names, lora_modules, mark_trainable
from training.losses import weighted_clip_loss


def _peft_model(base: torch.nn.Module, ours: torch.nn.Module, cfg: LoraConfig):
    from peft import LoraConfig as PeftLoraConfig
    from peft import get_peft_model

    names = sorted(lora_modules(ours))
    peft = get_peft_model(copy.deepcopy(base), PeftLoraConfig(r=cfg.rank, lora_alpha=cfg.alpha, lora_dropout=0.0,
                                                              target_modules=names, use_rslora=cfg.rslora))
    inner = peft.base_model.model
    with torch.no_grad():
        for name, mod in lora_modules(ours).items():
            layer = inner.get_submodule(name)
            layer.lora_A["default"].weight.copy_(mod.lora_A.weight)
            layer.lora_B["default"].weight.copy_(mod.lora_B.weight)
    params = dict(inner.named_parameters())
    for n in full_parameter_names(inner, cfg):
        params[n].requires_grad_(True)
    return peft, inner


def _batches(data: EvalSet, *, steps: int, batch_size: int, size: int, tokenizer, seed: int):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        idx = rng.choice(len(data.images), size=min(batch_size, len(data.images)), replace=False)
        imgs = [random_resized_crop(data.images[i], size=size, scale_min=0.8, hflip=False, rng=rng)[0] for i in idx]
        caps = [data.captions[i][int(rng.integers(len(data.captions[i])))] for i in idx]
        yield torch.stack(imgs), tokenizer(caps)


def _train(model, batches, *, lr: float) -> tuple[list[float], float]:
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in image_norm(model))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr, weight_decay=0.0)
    losses, t0, n = [], time.time(), 0
    for images, text in batches:
        x = (images.float() / 255 - mean) / std
        img = F.normalize(model.encode_image(x), dim=-1)
        txt = F.normalize(encode_text(model, text), dim=-1)
        loss = weighted_clip_loss(img, txt, model.logit_scale.exp(), torch.ones(len(x)))["loss"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
        n += len(x)
    return losses, n / (time.time() - t0)


def compare_with_peft(data: EvalSet, *, model_cfg, lora: LoraConfig, steps: int, batch_size: int,
                      lr: float, seed: int = 0) -> dict:
    """Loss curves of the lean LoRA and of peft's LoRA from the same start on the same batches."""
    base = create_model(model_cfg)
    swap_attention(base)
    ours = copy.deepcopy(base)
    torch.manual_seed(seed)
    apply_lora(ours, lora)
    mark_trainable(ours, lora)
    peft, inner = _peft_model(base, ours, lora)
    size = image_size(base)
    tok = build_tokenizer(tokenizer_spec(model_cfg.name))
    curves = {}
    for name, model in (("lean", ours), ("peft", inner)):
        model.train()
        batches = _batches(data, steps=steps, batch_size=batch_size, size=size, tokenizer=tok, seed=seed)
        curves[name], curves[f"{name}_samples_per_s"] = _train(model, batches, lr=lr)
    diff = [abs(a - b) for a, b in zip(curves["lean"], curves["peft"])]
    return {"steps": steps, "lr": lr, "lean_loss": [round(v, 5) for v in curves["lean"]],
            "peft_loss": [round(v, 5) for v in curves["peft"]], "max_abs_diff": max(diff),
            "lean_samples_per_s": round(curves["lean_samples_per_s"], 1),
            "peft_samples_per_s": round(curves["peft_samples_per_s"], 1),
            "trainable_lean": sum(p.numel() for p in ours.parameters() if p.requires_grad),
            "trainable_peft": sum(p.numel() for p in peft.parameters() if p.requires_grad)}
