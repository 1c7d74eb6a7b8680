"""Launched as 2 processes by test_two_process.py: a short real training run, then the loss and
LoRA gradients of one fixed global batch, split across ranks, written per rank as JSON."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from training.config import Stage2Config
from training.data import stable_id
from training.trainer import build_model, forward_losses, train
from wds_tools.config import load_config


def fixed_global_batch(n: int, *, size: int, seed: int = 0) -> dict:
    """A deterministic batch of ``n`` samples (uint8 images, tokens, weights with one rare class)."""
    from clip_models.text_tower import build_tokenizer, tokenizer_spec

    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)
    words = ["airport", "forest", "river", "beach", "harbor", "farmland", "desert", "bridge"]
    # Sample 6 repeats sample 1's caption; 0~4 and 2~7 are one source each: both pairs straddle the
    # rank split, so the loss's false-negative masking needs the gathered ids.
    which = [1 if i == 6 else i for i in range(n)]
    captions = [f"an aerial view of a {words[j % 8]} number {j}" for j in which]
    text = build_tokenizer(tokenizer_spec("tiny-clip"))(captions)
    weights = torch.tensor([2.0 if i % 3 == 0 else 1.0 for i in range(n)])
    groups = torch.tensor([stable_id(f"src{[0, 1, 2, 3, 0, 5, 6, 2][i % 8]}") for i in range(n)])
    caption_ids = torch.tensor([stable_id(row.numpy().tobytes()) for row in text])
    return {"images": images, "text": text, "weights": weights, "groups": groups, "caption_ids": caption_ids}


def batch_loss_and_grads(cfg: Stage2Config, accelerator, batch: dict) -> dict:
    """Loss (mean over ranks) and DDP-averaged LoRA gradients for this rank's slice of ``batch``."""
    torch.manual_seed(cfg.train.seed)
    model, _ = build_model(cfg)
    for name, p in model.named_parameters():  # non-zero B so every LoRA factor gets a gradient
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.02, generator=torch.Generator().manual_seed(len(name)))
    model = accelerator.prepare(model)
    n, r, w = len(batch["weights"]), accelerator.process_index, accelerator.num_processes
    local = {k: v[r * n // w:(r + 1) * n // w] for k, v in batch.items()}
    terms = forward_losses(model, local, cfg)
    accelerator.backward(terms["total_loss"])
    loss = accelerator.reduce(terms["total_loss"].detach(), reduction="mean").item()
    grads = {name: p.grad.norm().item() for name, p in accelerator.unwrap_model(model).named_parameters()
             if p.grad is not None}
    return {"loss": loss, "clip_loss": accelerator.reduce(terms["clip_loss"].detach(), reduction="mean").item(),
            "masked_pairs": accelerator.reduce(terms["masked_pairs"], reduction="sum").item(), "grads": grads}


def main(config: str, out: str, *overrides: str) -> None:
    from accelerate import Accelerator

    cfg = load_config(Stage2Config, config, list(overrides))
    train(cfg)
    accelerator = Accelerator()
    result = {"rank": accelerator.process_index, "local_rank": accelerator.local_process_index,
              "num_processes": accelerator.num_processes}
    result.update(batch_loss_and_grads(cfg, accelerator, fixed_global_batch(8, size=64)))
    Path(out, f"dist_rank{accelerator.process_index}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(*sys.argv[1:])
