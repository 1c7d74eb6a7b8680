"""Stage 2's training log: ``training_log.json`` (the config, one entry per logged step, the
evaluations, a summary) and the per-step counters behind it."""

from __future__ import annotations

import json
import logging
from collections import Counter
from pathlib import Path

import torch

from wds_tools.atomic import atomic_open

log = logging.getLogger(__name__)


class RunLog:
    """training_log.json in the seed's layout: the config, then one entry per logged step."""

    def __init__(self, *, path: Path, config: dict, saved: dict | None = None) -> None:
        self.path, self.config = path, config
        saved = saved or {}
        # "training_log" is the seed's key; "entries" is read from checkpoints written before the rename
        self.entries: list[dict] = list(saved.get("training_log", saved.get("entries", [])))
        self.evaluation: dict = dict(saved.get("evaluation", {}))
        self.summary: dict = dict(saved.get("summary", {}))

    def to_dict(self) -> dict:
        return {"config": self.config, "training_log": self.entries, "evaluation": self.evaluation,
                "summary": self.summary}

    def write(self) -> None:
        with atomic_open(self.path, "w") as f:
            json.dump(self.to_dict(), f, indent=2)


def count_batch(batch: dict, counters: Counter, window: Counter) -> None:
    """Add one loader batch to the run's counters and the logging window."""
    window["batches"] += 1
    for k, v in batch.get("mix", {}).items():   # classes and same-source pairs of this batch
        window[f"mix_{k}"] += v
    for name in batch["sources"]:
        counters[f"samples_{name}"] += 1
        window[f"samples_{name}"] += 1
    for k, v in batch["counts"].items():
        counters[k] += v


def realised_share(counts: Counter) -> float | None:
    """The synthetic share of the samples counted (None before any)."""
    total = sum(v for k, v in counts.items() if k.startswith("samples_"))
    return counts.get("samples_synthetic", 0) / total if total else None


def log_entry(accelerator, run_log: RunLog, terms: dict, step: int, steps_per_epoch: int, scheduler,
              window: Counter, counters: Counter, samples_per_s: float) -> None:
    """Collective: the step's loss terms (mean over ranks) and mix shares (summed) as one log entry."""
    names = [k for k in ("total_loss", "clip_loss", "fine_grained_loss", "acc_i2t", "acc_t2i", "masked_pairs")
             if k in terms]
    values = accelerator.reduce(torch.stack([terms[k].detach().float() for k in names]), reduction="mean")
    local = torch.tensor([float(window.get("samples_synthetic", 0)),
                          float(sum(v for k, v in window.items() if k.startswith("samples_"))),
                          float(counters.get("samples_synthetic", 0)),
                          float(sum(v for k, v in counters.items() if k.startswith("samples_"))),
                          float(counters.get("quality_dropped", 0)), float(window.get("batches", 0)),
                          float(window.get("mix_classes", 0)), float(window.get("mix_same_source_pairs", 0))],
                         device=accelerator.device)
    shares = accelerator.reduce(local, reduction="sum").tolist()
    entry = {"step": step, "epoch": round(step / steps_per_epoch, 4)}
    entry.update({k: round(v.item(), 6) for k, v in zip(names, values)})
    entry.update({"synthetic_share": round(shares[0] / max(shares[1], 1), 4),
                  "synthetic_share_total": round(shares[2] / max(shares[3], 1), 4),
                  "quality_dropped_total": int(shares[4]), "lr": scheduler.get_last_lr()[0],
                  "samples_per_s": round(samples_per_s, 2), "nonfinite_steps": counters.get("nonfinite_steps", 0),
                  # per loader batch (one rank's micro-batch), averaged over the logging interval
                  "classes_per_batch": round(shares[6] / max(shares[5], 1), 3),
                  "same_source_pairs_per_batch": round(shares[7] / max(shares[5], 1), 3)})
    if accelerator.is_main_process:
        run_log.entries.append(entry)
        log.info("step %d loss %.4f (clip %.4f) acc %.3f/%.3f synthetic share %.3f (total %.3f) dropped %d",
                 step, entry["total_loss"], entry["clip_loss"], entry["acc_i2t"], entry["acc_t2i"],
                 entry["synthetic_share"], entry["synthetic_share_total"], entry["quality_dropped_total"])


def sum_counters(per_rank: list[dict]) -> Counter:
    """All ranks' counts summed; ``nonfinite_steps`` is a global count already (same on every rank)."""
    total: Counter = Counter()
    for c in per_rank:
        total.update({k: v for k, v in c.items() if k != "nonfinite_steps"})
    total["nonfinite_steps"] = max((c.get("nonfinite_steps", 0) for c in per_rank), default=0)
    return total
