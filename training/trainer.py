"""The Stage 2 training loop: Accelerate (DDP, bf16, accumulation), LoRA, resumable data position."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from torch import nn

from clip_models.attention import swap_attention
from clip_models.image_tower import encode_image_tokens, has_patch_tokens
from clip_models.loading import create_model, model_name
from clip_models.preprocess import image_norm, image_size
from clip_models.text_tower import build_tokenizer, encode_text, encode_text_tokens, tokenizer_spec, trim_text
from training.checkpoint import (
    check_writable,
    load_checkpoint,
    open_sample_keys,
    output_errors,
    resolve_resume,
    save_checkpoint,
    save_final,
)
from training.config import Stage2Config
from training.data import LoaderSpec, LoaderState, build_sources, make_loader, read_manifests, worker_shutdown
from training.evaluate import evaluate_model, load_eval_set
from training.lora import apply_lora, lora_state_dict, mark_trainable
from training.losses import rare_class_weights, sparc_loss, weighted_clip_loss, weighted_mean, word_token_mask
from training.plots import plot_training_log
from training.preempt import Preempted, StopSignals
from training.resume import apply_schedule_changes, check_resume, group_hyperparameters, resume_settings
from training.runlog import RunLog, count_batch, log_entry, realised_share, sum_counters
from training.selection import select_mix
from training.tracking import RunTracking, accelerator_kwargs
from wds_tools.config import config_to_dict, save_config
from wds_tools.progress import progress

log = logging.getLogger(__name__)
_DEVICE_KEYS = ("images", "text", "weights", "groups", "caption_ids")


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


def make_optimizer(model: nn.Module, cfg: Stage2Config) -> torch.optim.Optimizer:
    """AdamW on trainable parameters; no weight decay on logit_scale, biases, LayerNorms and the
    token embedding; parameters trained in full (not LoRA) at ``full_param_lr_scale`` x the LR, the
    LoRA B factors at ``lora_b_lr_scale`` x the LR (LoRA+; their own group only when it is not 1, so
    a run without it keeps the optimizer layout of earlier checkpoints)."""
    t = cfg.train
    scale = {"lora": 1.0, "lora_B": t.lora_b_lr_scale, "full": t.full_param_lr_scale}
    groups: dict[tuple[str, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = name.endswith(("logit_scale", ".bias", "token_embedding.weight")) or p.ndim == 1
        kind = "full" if ".lora_" not in name else "lora_B" if ".lora_B." in name and t.lora_b_lr_scale != 1 else "lora"
        groups.setdefault((kind, no_decay), []).append(p)
    return torch.optim.AdamW(
        [{"params": ps, "weight_decay": 0.0 if no_decay else t.weight_decay, "lr": t.learning_rate * scale[kind]}
         for (kind, no_decay), ps in groups.items()], lr=t.learning_rate)


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


def lora_digest(model: nn.Module) -> str:
    """SHA-256 of the LoRA weights (equal on every rank when DDP keeps replicas in sync)."""
    h = hashlib.sha256()
    for name, t in sorted(lora_state_dict(model).items()):
        h.update(name.encode())
        h.update(t.numpy().tobytes())
    return h.hexdigest()


def _run_eval(accelerator, model: Stage2Model, cfg: Stage2Config, tokenizer, data) -> dict | None:
    if data is None or not accelerator.is_main_process:
        return None
    clip = accelerator.unwrap_model(model).clip
    with accelerator.autocast():
        return evaluate_model(clip, data, tokenizer=tokenizer, templates=cfg.eval.templates,
                              batch_size=cfg.eval.batch_size, device=accelerator.device)


def train(cfg: Stage2Config) -> dict:
    """Run (or resume) Stage 2 training; returns the final log dict (main process) or {}."""
    accelerator = Accelerator(mixed_precision=cfg.train.mixed_precision,
                              gradient_accumulation_steps=cfg.train.grad_accum, **accelerator_kwargs(cfg))
    rank, world = accelerator.process_index, accelerator.num_processes
    if accelerator.is_main_process:
        # A launch that meant N processes but started one is visible here, not only in the speed.
        log.info("world size %d (%s), device %s, mixed precision %s", world,
                 accelerator.distributed_type.value, accelerator.device, accelerator.mixed_precision)
    out_dir = Path(cfg.train.output)
    # Before anything is recorded: a checkpoint made under other settings is refused, never resumed
    # as if the new values applied (training/resume.py).
    resume_from = resolve_resume(out_dir, cfg.train.resume)
    changes = check_resume(resume_from, cfg) if resume_from else {}
    check_writable(out_dir, rank)
    if accelerator.is_main_process:
        with output_errors(out_dir / "config.yaml", output=out_dir):
            save_config(cfg, out_dir / "config.yaml")
    set_seed(cfg.train.seed)  # same seed on every rank: identical LoRA init
    model, model_info = build_model(cfg)
    sources = build_sources(cfg.data.real, cfg.data.synthetic, cfg.data.synthetic_ratio,
                            allow_pipe=cfg.data.allow_pipe)
    manifests = read_manifests([u for s in (cfg.data.real, cfg.data.synthetic) for u in s])
    # rare classes and the epoch size from what the quality filter kept, not from the manifests
    sources, counts = select_mix(cfg.data, sources, manifests)
    class_weights = rare_class_weights(counts["by_class"], rare_weight=cfg.loss.rare_class_weight,
                                       threshold=cfg.loss.rare_class_threshold)
    rare = sorted(c for c, w in class_weights.items() if w != 1.0)
    steps_per_epoch, total_steps = plan_steps(cfg, counts["total_samples"], world)
    optimizer = make_optimizer(model, cfg)
    scheduler = cosine_with_warmup(optimizer, warmup=cfg.train.warmup_steps, total=total_steps,
                                   schedule=cfg.train.schedule)
    if cfg.lora.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler's state goes into trainer_state.json, not register_for_checkpointing: Accelerate
    # loads registered objects with weights_only=False (an unpickle), and checkpoints never unpickle.

    trainer_state, data_state = ({}, None)
    if resume_from:
        fresh = group_hyperparameters(optimizer)
        trainer_state, data_state = load_checkpoint(accelerator, resume_from)
        scheduler.load_state_dict(trainer_state["scheduler"])
        if changes:  # only what train.resume_allow_changes allowed; a plain resume stays exact
            apply_schedule_changes(optimizer, scheduler, fresh)
            log.warning("resume: applying changed settings %s", {k: f"{a} -> {b}" for k, (a, b) in changes.items()})
        log.info("resumed from %s at step %d", resume_from, trainer_state["step"])
    step = int(trainer_state.get("step", 0))
    # Per-rank: where this rank's loader stands and what it has counted (samples, drops, skips).
    loader_saved = (data_state or {}).get("loader")
    counters = Counter((data_state or {}).get("counters", {}))
    run_log = RunLog(path=out_dir / "training_log.json", config=config_to_dict(cfg), saved=trainer_state.get("log"))
    tracking = RunTracking(accelerator, cfg, run_log, step=step)

    clip_name = model_name(cfg.model)
    spec = LoaderSpec(sources=sources, batch_size=cfg.train.batch_size,
                      image_size=image_size(model_of(accelerator, model)),
                      tokenizer=tokenizer_spec(clip_name), seed=cfg.train.seed, rank=rank, world_size=world,
                      num_workers=cfg.data.num_workers, stratified=cfg.data.stratified,
                      shards_per_chunk=cfg.data.shards_per_chunk,
                      shuffle_buffer=cfg.data.shuffle_buffer, crop_scale_min=cfg.data.crop_scale_min,
                      hflip=cfg.data.hflip, random_caption=cfg.data.random_caption,
                      quality_sidecar=cfg.data.quality_sidecar if cfg.data.use_quality else None,
                      allow_pipe=cfg.data.allow_pipe, class_weights=class_weights,
                      max_image_pixels=cfg.data.max_image_pixels)
    loader_state = LoaderState(num_workers=cfg.data.num_workers, saved=loader_saved)
    tokenizer = build_tokenizer(spec.tokenizer)
    eval_data = (load_eval_set(cfg.eval.shards, size=spec.image_size, max_samples=cfg.eval.max_samples,
                               allow_pipe=cfg.data.allow_pipe, caption_sources=cfg.eval.caption_sources,
                               max_pixels=cfg.data.max_image_pixels)
                 if cfg.eval.shards and accelerator.is_main_process else None)
    if accelerator.is_main_process:
        log.info("mix: %s; rare classes (weight %.1f, counts from %s): %s; %d steps (%d per epoch)",
                 ", ".join(f"{s.name} {s.weight:.2f} ({len(s.urls)} shards)" for s in sources),
                 cfg.loss.rare_class_weight, counts["from"], rare or "none", total_steps, steps_per_epoch)
        run_log.summary.update({"model": model_info, "rare_classes": rare, "class_weights": class_weights,
                                "class_counts": counts["by_class"], "class_counts_from": counts["from"],
                                "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
                                "world_size": world, "requested_mix": {s.name: s.weight for s in sources}})
        if resume_from:
            run_log.summary.setdefault("resumes", []).append(
                {"step": step, "checkpoint": str(resume_from), "changed": {k: list(v) for k, v in changes.items()}})
    if step == 0 and cfg.eval.before:
        result = _run_eval(accelerator, model, cfg, tokenizer, eval_data)
        if result:
            run_log.evaluation["before"] = result
            log.info("eval before: %s", json.dumps(result))
    accelerator.wait_for_everyone()

    keys_path = out_dir / f"sample_keys.rank{rank}.jsonl"
    with output_errors(keys_path, output=out_dir):
        keys_file = open_sample_keys(keys_path, resume_step=step) if cfg.train.log_sample_keys else None
    window: Counter = Counter()
    t0, step_t0 = time.time(), step
    bar = progress(total=total_steps, initial=step, disable=not accelerator.is_local_main_process, desc="stage2",
                   unit="step")
    model.train()
    micro, n_stop, checkpoint = 0, 0, None
    clip_ref = model_of(accelerator, model)
    # SIGTERM / SIGUSR1: finish the step, checkpoint, exit (training/preempt.py)
    loader = make_loader(spec, loader_saved) if step < total_steps else ()
    with StopSignals() as stop, worker_shutdown(loader) as batches:
        for batch in batches:
            loader_state.update(batch)
            count_batch(batch, counters, window)
            if keys_file:
                with output_errors(keys_path, output=out_dir):
                    keys_file.write(json.dumps({"step": step, "micro": micro, "keys": batch["keys"]}) + "\n")
                    keys_file.flush()
            # captions cut after the batch's last end-of-text token: exact for CLIP's causal text tower
            batch["text"] = trim_text(clip_ref, batch["text"])
            moved = {k: batch[k].to(accelerator.device, non_blocking=True) for k in _DEVICE_KEYS if k in batch}
            with accelerator.accumulate(model):
                with accelerator.autocast():
                    terms = forward_losses(model, moved, cfg)
                # One all-reduce per micro-batch: ranks with a finite loss, ranks that got a stop signal.
                # Every rank reads the same sums, so all skip, and all stop, at the same step.
                flags = torch.stack([torch.isfinite(terms["total_loss"].detach()).float(),
                                     torch.tensor(float(stop.received is not None), device=accelerator.device)])
                n_finite, n_stop = accelerator.reduce(flags, reduction="sum").tolist()
                if n_finite < world:
                    counters["nonfinite_steps"] += 1
                    optimizer.zero_grad(set_to_none=True)
                    log.warning("step %d: non-finite loss, skipped (%d so far)", step, counters["nonfinite_steps"])
                    if counters["nonfinite_steps"] > cfg.train.max_nonfinite_steps:
                        raise RuntimeError(f"aborting: {counters['nonfinite_steps']} steps with NaN/inf loss "
                                           f"(train.max_nonfinite_steps={cfg.train.max_nonfinite_steps})")
                else:
                    accelerator.backward(terms["total_loss"])
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    clamp_logit_scale(clip_ref)
            micro += 1
            if not accelerator.sync_gradients:
                continue
            scheduler.step()
            step += 1
            micro = 0
            bar.update(1)
            if step % cfg.train.log_every == 0 or step == total_steps:
                log_entry(accelerator, run_log, terms, step, steps_per_epoch, scheduler, window, counters,
                           (step - step_t0) * cfg.train.batch_size * cfg.train.grad_accum * world / (time.time() - t0))
                window = Counter()
                tracking.sync(step)
            # The last step is checkpointed too: a run killed while finishing resumes straight to the outputs.
            due = cfg.train.checkpoint_every and (step % cfg.train.checkpoint_every == 0 or step == total_steps)
            if due or n_stop:
                checkpoint = save_checkpoint(
                    accelerator, out_dir, step=step, keep=cfg.train.keep_checkpoints,
                    data_state={"loader": loader_state.to_dict(), "counters": dict(counters)},
                    trainer_state={"log": run_log.to_dict(), "scheduler": scheduler.state_dict(),
                                   "settings": resume_settings(cfg)})
            if n_stop or step >= total_steps:
                break
    bar.close()
    if keys_file:
        keys_file.close()
    if n_stop:
        tracking.close(step)
        raise Preempted(signal_name=stop.name or "a stop signal to another rank", step=step, checkpoint=checkpoint)
    result = _finish(accelerator, model, cfg, run_log, counters, tokenizer, eval_data, step)
    tracking.close(step)
    return result


def clamp_logit_scale(clip: nn.Module, *, max_scale: float = 100.0) -> None:
    """Keep the learned temperature in [0, ln 100] after each update, as open_clip's trainer does
    (an unbounded scale lets the loss collapse onto a few logits)."""
    with torch.no_grad():
        clip.logit_scale.clamp_(0, math.log(max_scale))


def model_of(accelerator, model: nn.Module) -> nn.Module:
    """The open_clip model inside DDP / compile wrappers."""
    return accelerator.unwrap_model(model).clip


def _finish(accelerator, model, cfg: Stage2Config, run_log: RunLog, counters: Counter, tokenizer, eval_data,
            step: int) -> dict:
    accelerator.wait_for_everyone()
    clip = model_of(accelerator, model)
    digests = gather_object([{"rank": accelerator.process_index, "lora_sha256": lora_digest(clip), "steps": step}])
    counters = sum_counters(gather_object([dict(counters)]))
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return {}
    out_dir = Path(cfg.train.output)
    result = _run_eval(accelerator, model, cfg, tokenizer, eval_data) if cfg.eval.after else None
    if result:
        run_log.evaluation["after"] = result
        log.info("eval after: %s", json.dumps(result))
    if len({d["lora_sha256"] for d in digests}) > 1:
        log.error("LoRA weights differ across ranks: %s", digests)
    run_log.summary.update({"ranks": digests, "counters": dict(counters), "steps": step,
                            "realised_synthetic_share": realised_share(counters)})
    log.info("realised mix: synthetic share %s over %d samples; quality drops %d; skips %s",
             run_log.summary["realised_synthetic_share"],
             sum(v for k, v in counters.items() if k.startswith("samples_")), counters.get("quality_dropped", 0),
             {k: v for k, v in counters.items() if k.startswith("skip_")})
    with output_errors(out_dir, output=out_dir):
        run_log.summary["outputs"] = save_final(clip, out_dir, lora_cfg=cfg.lora)
        run_log.write()
        plot_training_log(run_log.to_dict(), out_dir / "training_curves.png")
    accelerator.wait_for_everyone()
    return run_log.to_dict()
