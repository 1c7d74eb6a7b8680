"""A stand-in base model: a small open_clip CLIP trained in full, briefly, on a shard set's captions.

Stage 2 starts from RemoteCLIP, which already knows the aerial domain and its words. Where its
weights are not at hand (tests, the demo, the learning benchmark), a random-weight tiny model is no
stand-in: LoRA cannot train the token-embedding table, so a word the base never trained stays
unusable. This job trains every parameter of a small CLIP on the given shards (every caption of
a sample drawn at random, so it sees the whole vocabulary), with the Stage 2 loader and loss, and
writes a plain open_clip checkpoint that the quality filter and Stage 2 load as
``model.pretrained``. It is a stand-in, labelled as one in its log; it is not RemoteCLIP.

    python -m training.standin_base --config configs/train/base-tiny.yaml --real shards/real/train --output DIR

Outputs in ``DIR``: ``base.pt`` (state dict, loads with ``weights_only=True``), ``base_log.json``
(config, then ``training_log`` entries), ``base_curves.png`` and ``config.yaml``.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from clip_models.config import ModelConfig
from wds_tools.config import parse_cli, prog_name, run_main

log = logging.getLogger(__name__)


@dataclass
class BaseDataConfig:
    """Shards to train on (train split only) and how to read them."""

    real: list[str] = field(default_factory=list)
    num_workers: int = 2
    shards_per_chunk: int = 4
    crop_scale_min: float = 0.8

    def validate(self) -> None:
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class BaseTrainConfig:
    """Full training of every parameter, cosine schedule."""

    output: str = "checkpoints/base"
    batch_size: int = 32
    steps: int = 300
    learning_rate: float = 1e-3
    weight_decay: float = 0.1
    warmup_steps: int = 20
    seed: int = 0
    log_every: int = 10
    device: str = "auto"

    def validate(self) -> None:
        if self.batch_size < 2:
            raise ValueError(f"train.batch_size must be >= 2 (a contrastive batch), got {self.batch_size}")
        if self.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.steps}")
        if not self.learning_rate > 0:
            raise ValueError(f"train.learning_rate must be > 0, got {self.learning_rate}")


@dataclass
class BaseConfig:
    """Root of the stand-in base model's config."""

    model: ModelConfig = field(default_factory=lambda: ModelConfig(swap_attention=False))
    data: BaseDataConfig = field(default_factory=BaseDataConfig)
    train: BaseTrainConfig = field(default_factory=BaseTrainConfig)


FLAGS = {"--real": "data.real", "--output": "train.output", "--steps": "train.steps"}


def train_base(cfg: BaseConfig) -> dict:
    """Train the stand-in base and write its outputs; returns the log dict."""
    import torch

    from clip_models.device import resolve_device
    from clip_models.loading import create_model, model_name
    from clip_models.preprocess import image_size
    from clip_models.text_tower import tokenizer_spec, trim_text
    from training.data import make_loader
    from training.losses import weighted_clip_loss
    from training.mix import LoaderSpec, MixSource
    from training.model import Stage2Model, clamp_logit_scale
    from training.optim import cosine_with_warmup
    from training.plots import plot_training_log
    from wds_tools.atomic import atomic_open
    from wds_tools.config import config_to_dict, save_config
    from wds_tools.urls import expand_urls

    if not cfg.data.real:
        raise ValueError("data.real is empty: give the train shards (--real DIR)")
    out = Path(cfg.train.output)
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / "config.yaml")
    device = resolve_device(cfg.train.device)
    torch.manual_seed(cfg.train.seed)
    clip = create_model(cfg.model).to(device).train().requires_grad_(True)
    model = Stage2Model(clip=clip, fine_grained=False).to(device)
    spec = LoaderSpec(sources=[MixSource(name="real", urls=expand_urls(cfg.data.real), weight=1.0)],
                      batch_size=cfg.train.batch_size, image_size=image_size(clip),
                      tokenizer=tokenizer_spec(model_name(cfg.model)), seed=cfg.train.seed,
                      num_workers=cfg.data.num_workers, shards_per_chunk=cfg.data.shards_per_chunk,
                      crop_scale_min=cfg.data.crop_scale_min, random_caption=True, quality_sidecar=None)
    decay = [p for n, p in clip.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in clip.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg.train.weight_decay},
                                   {"params": rest, "weight_decay": 0.0}], lr=cfg.train.learning_rate)
    scheduler = cosine_with_warmup(optimizer, warmup=cfg.train.warmup_steps, total=cfg.train.steps)
    log.info("stand-in base model (NOT RemoteCLIP): %s trained in full for %d steps at batch %d on %s",
             cfg.model.name, cfg.train.steps, cfg.train.batch_size, device)
    entries, t0 = [], time.time()
    for step, batch in enumerate(make_loader(spec), start=1):
        text = trim_text(clip, batch["text"])
        feats = model(batch["images"].to(device), text.to(device))
        terms = weighted_clip_loss(feats["image"], feats["text"], feats["logit_scale"],
                                   batch["weights"].to(device))
        optimizer.zero_grad(set_to_none=True)
        terms["loss"].backward()
        optimizer.step()
        scheduler.step()
        clamp_logit_scale(clip)
        if step % cfg.train.log_every == 0 or step == cfg.train.steps:
            entries.append({"step": step, "total_loss": round(terms["loss"].item(), 6),
                            "acc_i2t": round(terms["acc_i2t"].item(), 4), "acc_t2i": round(terms["acc_t2i"].item(), 4),
                            "samples_per_s": round(step * cfg.train.batch_size / (time.time() - t0), 2)})
            log.info("base step %d loss %.4f", step, entries[-1]["total_loss"])
        if step >= cfg.train.steps:
            break
    state = {k: v.detach().cpu() for k, v in clip.state_dict().items()}
    with atomic_open(out / "base.pt", "wb") as f:
        torch.save(state, f)
    result = {"config": config_to_dict(cfg), "training_log": entries,
              "summary": {"stand_in_for": "RemoteCLIP", "checkpoint": str(out / "base.pt"),
                          "seconds": round(time.time() - t0, 1)}}
    with atomic_open(out / "base_log.json", "w") as f:
        json.dump(result, f, indent=2)
    plot_training_log(result, out / "base_curves.png")
    return result


def main(argv: Sequence[str] | None = None) -> int:
    """Console entry point (``remoteclip-train-base``): a user error is one line and exit status 2."""
    return run_main(_main, argv, prog=prog_name("training.standin_base"))


def _main(argv: Sequence[str] | None) -> int:
    """Parse the config (file, flags, dotted overrides) and train the stand-in base."""
    cfg = parse_cli(BaseConfig, argv, prog=prog_name("training.standin_base"), description=__doc__.splitlines()[0],
                    flags=FLAGS)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result = train_base(cfg)
    print(f"stand-in base model written to {result['summary']['checkpoint']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
