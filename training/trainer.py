"""The Stage 2 training loop: Accelerate (DDP, bf16, accumulation), LoRA, resumable data position.

:func:`train` runs three parts: :func:`setup` (accelerator, model, data mix, optimizer, restored
checkpoint, loader spec, run log), :func:`train_loop` (the steps, logging and checkpoints) and
:func:`finish` (final evaluation and outputs). The optimizer and schedule are ``training.optim``,
the model and loss terms ``training.model``, the loader's mix ``training.mix`` and
``training.data``, the log ``training.runlog``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from torch import nn

from clip_models.loading import model_name
from clip_models.preprocess import image_size
from clip_models.text_tower import build_tokenizer, tokenizer_spec, trim_text
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
from training.data import LoaderState, make_loader, worker_shutdown
from training.evaluate import evaluate_model, load_eval_set
from training.lora import lora_state_dict
from training.losses import rare_class_weights
from training.mix import LoaderSpec, build_sources, read_manifests
from training.model import Stage2Model, build_model, clamp_logit_scale, forward_losses, model_of
from training.optim import SCHEDULES, cosine_with_warmup, make_optimizer, plan_steps
from training.plots import plot_training_log
from training.preempt import Preempted, StopSignals
from training.quality_gate import select_mix
from training.resume import apply_schedule_changes, check_resume, group_hyperparameters, resume_settings
from training.runlog import RunLog, count_batch, log_entry, realised_share, sum_counters
from training.tracking import RunTracking, accelerator_kwargs
from wds_tools.config import config_to_dict, save_config
from wds_tools.progress import progress

log = logging.getLogger(__name__)
# Re-exported: imported from here before the model, optimizer and schedule had their modules.
__all__ = ["SCHEDULES", "Stage2Model", "TrainRun", "build_model", "clamp_logit_scale", "cosine_with_warmup",
           "finish", "forward_losses", "make_optimizer", "plan_steps", "setup", "train", "train_loop"]
_DEVICE_KEYS = ("images", "text", "weights", "groups", "caption_ids")


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


@dataclass(kw_only=True)
class TrainRun:
    """What :func:`setup` makes and :func:`train_loop` and :func:`finish` share; ``step`` advances."""

    cfg: Stage2Config
    accelerator: Accelerator
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    spec: LoaderSpec
    loader_saved: dict | None        # this rank's saved loader position (None: from the start)
    loader_state: LoaderState
    counters: Counter                # this rank's counts (samples, drops, skips), checkpointed
    run_log: RunLog
    tracking: RunTracking
    tokenizer: object
    eval_data: object
    step: int
    steps_per_epoch: int
    total_steps: int

    @property
    def out_dir(self) -> Path:
        return Path(self.cfg.train.output)


def train(cfg: Stage2Config) -> dict:
    """Run (or resume) Stage 2 training; returns the final log dict (main process) or {}."""
    run = setup(cfg)
    stopped = train_loop(run)
    if stopped is not None:
        run.tracking.close(run.step)
        raise stopped
    result = finish(run)
    run.tracking.close(run.step)
    return result


def setup(cfg: Stage2Config) -> TrainRun:
    """Everything before the first step: checks, model, mix, optimizer, restored state, loader spec."""
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
    mix = _mix(cfg)
    steps_per_epoch, total_steps = plan_steps(cfg, mix["counts"]["total_samples"], world)
    optimizer = make_optimizer(model, cfg)
    scheduler = cosine_with_warmup(optimizer, warmup=cfg.train.warmup_steps, total=total_steps,
                                   schedule=cfg.train.schedule)
    if cfg.lora.compile:
        model = torch.compile(model)
    model, optimizer = accelerator.prepare(model, optimizer)
    # The scheduler's state goes into trainer_state.json, not register_for_checkpointing: Accelerate
    # loads registered objects with weights_only=False (an unpickle), and checkpoints never unpickle.
    trainer_state, data_state = _restore(accelerator, optimizer, scheduler, resume_from, changes)
    step = int(trainer_state.get("step", 0))
    run_log = RunLog(path=out_dir / "training_log.json", config=config_to_dict(cfg), saved=trainer_state.get("log"))
    spec = _loader_spec(cfg, mix, image_size=image_size(model_of(accelerator, model)), rank=rank, world=world)
    loader_saved = (data_state or {}).get("loader")
    run = TrainRun(cfg=cfg, accelerator=accelerator, model=model, optimizer=optimizer, scheduler=scheduler,
                   spec=spec, loader_saved=loader_saved,
                   loader_state=LoaderState(num_workers=cfg.data.num_workers, saved=loader_saved),
                   counters=Counter((data_state or {}).get("counters", {})), run_log=run_log,
                   tracking=RunTracking(accelerator, cfg, run_log, step=step),
                   tokenizer=build_tokenizer(spec.tokenizer), eval_data=_eval_data(cfg, spec, accelerator),
                   step=step, steps_per_epoch=steps_per_epoch, total_steps=total_steps)
    if accelerator.is_main_process:
        _log_plan(run, mix, model_info, resume_from, changes)
    if step == 0 and cfg.eval.before:
        result = _run_eval(accelerator, model, cfg, run.tokenizer, run.eval_data)
        if result:
            run_log.evaluation["before"] = result
            log.info("eval before: %s", json.dumps(result))
    accelerator.wait_for_everyone()
    return run


def _mix(cfg: Stage2Config) -> dict:
    """The weighted sources, the kept counts they were sized from, and the class weights."""
    sources = build_sources(cfg.data.real, cfg.data.synthetic, cfg.data.synthetic_ratio,
                            allow_pipe=cfg.data.allow_pipe)
    manifests = read_manifests([u for s in (cfg.data.real, cfg.data.synthetic) for u in s])
    # rare classes and the epoch size from what the quality filter kept, not from the manifests
    sources, counts = select_mix(cfg.data, sources, manifests)
    class_weights = rare_class_weights(counts["by_class"], rare_weight=cfg.loss.rare_class_weight,
                                       threshold=cfg.loss.rare_class_threshold)
    return {"sources": sources, "counts": counts, "class_weights": class_weights,
            "rare": sorted(c for c, w in class_weights.items() if w != 1.0)}


def _restore(accelerator, optimizer, scheduler, resume_from: Path | None, changes: dict) -> tuple[dict, dict | None]:
    """Load the checkpoint (if any) into the prepared objects; returns (trainer_state, data_state)."""
    if not resume_from:
        return {}, None
    fresh = group_hyperparameters(optimizer)
    trainer_state, data_state = load_checkpoint(accelerator, resume_from)
    scheduler.load_state_dict(trainer_state["scheduler"])
    if changes:  # only what train.resume_allow_changes allowed; a plain resume stays exact
        apply_schedule_changes(optimizer, scheduler, fresh)
        log.warning("resume: applying changed settings %s", {k: f"{a} -> {b}" for k, (a, b) in changes.items()})
    log.info("resumed from %s at step %d", resume_from, trainer_state["step"])
    return trainer_state, data_state


def _loader_spec(cfg: Stage2Config, mix: dict, *, image_size: int, rank: int, world: int) -> LoaderSpec:
    return LoaderSpec(sources=mix["sources"], batch_size=cfg.train.batch_size, image_size=image_size,
                      tokenizer=tokenizer_spec(model_name(cfg.model)), seed=cfg.train.seed, rank=rank,
                      world_size=world, num_workers=cfg.data.num_workers, stratified=cfg.data.stratified,
                      shards_per_chunk=cfg.data.shards_per_chunk,
                      shuffle_buffer=cfg.data.shuffle_buffer, crop_scale_min=cfg.data.crop_scale_min,
                      hflip=cfg.data.hflip, random_caption=cfg.data.random_caption,
                      quality_sidecar=cfg.data.quality_sidecar if cfg.data.use_quality else None,
                      allow_pipe=cfg.data.allow_pipe, class_weights=mix["class_weights"],
                      max_image_pixels=cfg.data.max_image_pixels, kinds=tuple(cfg.data.kinds))


def _eval_data(cfg: Stage2Config, spec: LoaderSpec, accelerator):
    """The held-out evaluation set, on the main process only (None elsewhere or without eval.shards)."""
    if not (cfg.eval.shards and accelerator.is_main_process):
        return None
    return load_eval_set(cfg.eval.shards, size=spec.image_size, max_samples=cfg.eval.max_samples,
                         allow_pipe=cfg.data.allow_pipe, caption_sources=cfg.eval.caption_sources,
                         max_pixels=cfg.data.max_image_pixels)


def _log_plan(run: TrainRun, mix: dict, model_info: dict, resume_from: Path | None, changes: dict) -> None:
    """Main process: the mix and run length in the log, and in the run log's summary."""
    cfg, sources, counts, rare = run.cfg, mix["sources"], mix["counts"], mix["rare"]
    log.info("mix: %s; rare classes (weight %.1f, counts from %s): %s; %d steps (%d per epoch)",
             ", ".join(f"{s.name} {s.weight:.2f} ({len(s.urls)} shards)" for s in sources),
             cfg.loss.rare_class_weight, counts["from"], rare or "none", run.total_steps, run.steps_per_epoch)
    run.run_log.summary.update({"model": model_info, "rare_classes": rare, "class_weights": mix["class_weights"],
                                "class_counts": counts["by_class"], "class_counts_from": counts["from"],
                                "steps_per_epoch": run.steps_per_epoch, "total_steps": run.total_steps,
                                "world_size": run.accelerator.num_processes,
                                "requested_mix": {s.name: s.weight for s in sources}})
    if resume_from:
        run.run_log.summary.setdefault("resumes", []).append(
            {"step": run.step, "checkpoint": str(resume_from), "changed": {k: list(v) for k, v in changes.items()}})


def train_loop(run: TrainRun) -> Preempted | None:
    """The steps from ``run.step`` to ``run.total_steps``: log, checkpoint, stop on a signal.

    Returns the :class:`Preempted` to raise when a stop signal ended the loop (after a checkpoint)."""
    cfg, accelerator, out_dir = run.cfg, run.accelerator, run.out_dir
    rank, world = accelerator.process_index, accelerator.num_processes
    keys_path = out_dir / f"sample_keys.rank{rank}.jsonl"
    with output_errors(keys_path, output=out_dir):
        keys_file = open_sample_keys(keys_path, resume_step=run.step) if cfg.train.log_sample_keys else None
    window: Counter = Counter()
    t0, step_t0 = time.time(), run.step
    bar = progress(total=run.total_steps, initial=run.step, disable=not accelerator.is_local_main_process,
                   desc="stage2", unit="step")
    run.model.train()
    micro, n_stop, checkpoint = 0, 0, None
    clip = model_of(accelerator, run.model)
    # SIGTERM / SIGUSR1: finish the step, checkpoint, exit (training/preempt.py)
    loader = (make_loader(run.spec, run.loader_saved, prefetch_factor=cfg.data.prefetch_factor)
              if run.step < run.total_steps else ())
    with StopSignals() as stop, worker_shutdown(loader) as batches:
        for batch in batches:
            run.loader_state.update(batch)
            count_batch(batch, run.counters, window)
            if keys_file:
                with output_errors(keys_path, output=out_dir):
                    keys_file.write(json.dumps({"step": run.step, "micro": micro, "keys": batch["keys"]}) + "\n")
                    keys_file.flush()
            terms, n_stop = _micro_step(run, clip, batch, stop_received=stop.received is not None)
            micro += 1
            if not accelerator.sync_gradients:
                continue
            run.scheduler.step()
            run.step += 1
            micro = 0
            bar.update(1)
            if run.step % cfg.train.log_every == 0 or run.step == run.total_steps:
                samples = (run.step - step_t0) * cfg.train.batch_size * cfg.train.grad_accum * world
                log_entry(accelerator, run.run_log, terms, run.step, run.steps_per_epoch, run.scheduler, window,
                          run.counters, samples / (time.time() - t0))
                window = Counter()
                run.tracking.sync(run.step)
            # The last step is checkpointed too: a run killed while finishing resumes straight to the outputs.
            due = cfg.train.checkpoint_every and (run.step % cfg.train.checkpoint_every == 0
                                                  or run.step == run.total_steps)
            if due or n_stop:
                checkpoint = _save(run)
            if n_stop or run.step >= run.total_steps:
                break
    bar.close()
    if keys_file:
        keys_file.close()
    if n_stop:
        return Preempted(signal_name=stop.name or "a stop signal to another rank", step=run.step,
                         checkpoint=checkpoint)
    return None


def _micro_step(run: TrainRun, clip: nn.Module, batch: dict, *, stop_received: bool) -> tuple[dict, float]:
    """Forward and backward of one loader batch (an optimizer step when accumulation is done);
    returns the loss terms and how many ranks have been asked to stop."""
    cfg, accelerator, model, optimizer = run.cfg, run.accelerator, run.model, run.optimizer
    # captions cut after the batch's last end-of-text token: exact for CLIP's causal text tower
    batch["text"] = trim_text(clip, batch["text"])
    moved = {k: batch[k].to(accelerator.device, non_blocking=True) for k in _DEVICE_KEYS if k in batch}
    with accelerator.accumulate(model):
        with accelerator.autocast():
            terms = forward_losses(model, moved, cfg)
        # One all-reduce per micro-batch: ranks with a finite loss, ranks that got a stop signal.
        # Every rank reads the same sums, so all skip, and all stop, at the same step.
        flags = torch.stack([torch.isfinite(terms["total_loss"].detach()).float(),
                             torch.tensor(float(stop_received), device=accelerator.device)])
        n_finite, n_stop = accelerator.reduce(flags, reduction="sum").tolist()
        if n_finite < accelerator.num_processes:
            run.counters["nonfinite_steps"] += 1
            optimizer.zero_grad(set_to_none=True)
            log.warning("step %d: non-finite loss, skipped (%d so far)", run.step, run.counters["nonfinite_steps"])
            if run.counters["nonfinite_steps"] > cfg.train.max_nonfinite_steps:
                raise RuntimeError(f"aborting: {run.counters['nonfinite_steps']} steps with NaN/inf loss "
                                   f"(train.max_nonfinite_steps={cfg.train.max_nonfinite_steps})")
        else:
            accelerator.backward(terms["total_loss"])
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            clamp_logit_scale(clip)
    return terms, n_stop


def _save(run: TrainRun) -> Path:
    """Collective: a checkpoint of the run at ``run.step``."""
    cfg = run.cfg
    return save_checkpoint(
        run.accelerator, run.out_dir, step=run.step, keep=cfg.train.keep_checkpoints,
        data_state={"loader": run.loader_state.to_dict(), "counters": dict(run.counters)},
        trainer_state={"log": run.run_log.to_dict(), "scheduler": run.scheduler.state_dict(),
                       "settings": resume_settings(cfg)})


def finish(run: TrainRun) -> dict:
    """Collective: final evaluation, per-rank LoRA digests and counts, and the outputs (main process).
    Returns the final log dict on the main process, {} elsewhere."""
    accelerator, cfg, run_log, step = run.accelerator, run.cfg, run.run_log, run.step
    accelerator.wait_for_everyone()
    clip = model_of(accelerator, run.model)
    digests = gather_object([{"rank": accelerator.process_index, "lora_sha256": lora_digest(clip), "steps": step}])
    counters = sum_counters(gather_object([dict(run.counters)]))
    if not accelerator.is_main_process:
        accelerator.wait_for_everyone()
        return {}
    out_dir = run.out_dir
    result = _run_eval(accelerator, run.model, cfg, run.tokenizer, run.eval_data) if cfg.eval.after else None
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
