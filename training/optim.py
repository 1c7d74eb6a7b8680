"""Stage 2's optimizer, learning-rate schedule and run length (open_clip_train keeps these in its
``scheduler.py``): AdamW over the trainable parameters in a few groups, linear warm-up then cosine
decay (or constant), and the number of optimizer steps an epoch and the run take."""

from __future__ import annotations

import math

import torch
from torch import nn

from training.config import Stage2Config

SCHEDULES = ("cosine", "constant")


def cosine_with_warmup(optimizer, *, warmup: int, total: int,
                       schedule: str = "cosine") -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up to the base LR, then cosine decay to 0 at ``total`` steps (or constant)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"train.schedule must be one of {SCHEDULES}, got {schedule!r}")

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if schedule == "constant":
            return 1.0
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, total - warmup))))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def param_groups(model: nn.Module, cfg: Stage2Config) -> list[dict]:
    """The optimizer's parameter groups: no weight decay on logit_scale, biases, LayerNorms and the
    token embedding; parameters trained in full (not LoRA) at ``full_param_lr_scale`` x the LR; the
    LoRA B factors at ``lora_b_lr_scale`` x the LR (LoRA+; their own group only when it is not 1, so
    a run without it keeps the optimizer layout of earlier checkpoints).

    Every rule that gives a parameter its own learning rate or decay belongs here, so the
    optimizer and a resume (``training.resume.group_hyperparameters``) see the same groups."""
    t = cfg.train
    scale = {"lora": 1.0, "lora_B": t.lora_b_lr_scale, "full": t.full_param_lr_scale}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = name.endswith(("logit_scale", ".bias", "token_embedding.weight")) or p.ndim == 1
        kind = ("full" if ".lora_" not in name
                else "lora_B" if ".lora_B." in name and t.lora_b_lr_scale != 1 else "lora")
        groups.setdefault((kind, no_decay), []).append(p)
    return [{"params": ps, "weight_decay": 0.0 if no_decay else t.weight_decay, "lr": t.learning_rate * scale[kind]}
            for (kind, no_decay), ps in groups.items()]


def make_optimizer(model: nn.Module, cfg: Stage2Config) -> torch.optim.Optimizer:
    """AdamW over :func:`param_groups`."""
    return torch.optim.AdamW(param_groups(model, cfg), lr=cfg.train.learning_rate)


def plan_steps(cfg: Stage2Config, total_samples: int, world: int) -> tuple[int, int]:
    """(optimizer steps per epoch, total optimizer steps); an epoch = manifest samples / global batch."""
    global_batch = cfg.train.batch_size * world * cfg.train.grad_accum
    samples = total_samples or cfg.train.samples_per_epoch
    per_epoch = max(1, samples // global_batch) if samples else 0
    total = cfg.train.max_steps or per_epoch * cfg.train.num_epochs
    if total <= 0:
        raise ValueError(f"cannot size the run: train.max_steps is 0 (unset) and no epoch size is known "
                         f"(the dataset.json beside the shards counts {total_samples} samples, "
                         f"train.samples_per_epoch={cfg.train.samples_per_epoch}); set train.max_steps "
                         "or train.samples_per_epoch")
    return per_epoch or total, total
