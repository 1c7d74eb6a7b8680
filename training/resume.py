"""What a resumed Stage 2 run must share with the checkpoint it resumes from.

A checkpoint holds weights, optimizer, scheduler, RNG and data position made under one set of
settings. Resumed under others, it would run the old schedule while ``config.yaml`` and
``training_log.json`` record the new values, or fail deep in a state-dict load (another LoRA rank
or model). So every checkpoint stores its settings (``trainer_state.json`` ``"settings"``: every
config key except those that cannot change the trained weights, :data:`FREE_KEYS`), and a resume
refuses any difference in one line naming the keys (old -> new). Keys listed in
``train.resume_allow_changes`` (from :data:`training.config.RESUME_MAY_CHANGE`) may differ: their
new values are applied (:func:`apply_schedule_changes`) and the change is logged in the summary.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from training.config import RESUME_MAY_CHANGE, Stage2Config
from wds_tools.config import config_to_dict

log = logging.getLogger(__name__)

# Where outputs go, how often the run logs and saves, evaluation, and how inference devices are
# chosen (Stage 2 takes its device and precision from Accelerate): none changes the trained weights.
FREE_KEYS = frozenset({
    "train.output", "train.resume", "train.resume_allow_changes", "train.log_every", "train.checkpoint_every",
    "train.keep_checkpoints", "train.max_nonfinite_steps", "train.log_sample_keys", "model.device",
    "model.precision", "data.allow_pipe", "data.prefetch_factor",
})
FREE_SECTIONS = ("eval.",)
_ABSENT = "<absent>"


class ResumeMismatchError(ValueError):
    """The checkpoint was written with settings that differ from this run's."""


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _settings_of(tree: dict) -> dict:
    return {k: v for k, v in _flat(tree).items() if k not in FREE_KEYS and not k.startswith(FREE_SECTIONS)}


def resume_settings(cfg: Stage2Config) -> dict:
    """The flat ``{"section.key": value}`` settings a checkpoint of ``cfg`` is bound to."""
    return _settings_of(config_to_dict(cfg))


def saved_settings(trainer_state: dict) -> dict | None:
    """A checkpoint's settings; checkpoints written before they were stored carry the whole config
    in their training log, which serves as well."""
    if isinstance(trainer_state.get("settings"), dict):
        return trainer_state["settings"]
    config = (trainer_state.get("log") or {}).get("config")
    return _settings_of(config) if isinstance(config, dict) else None


def _short(value) -> str:
    text = json.dumps(value)
    return text if len(text) <= 80 else text[:77] + "..."


def settings_diff(saved: dict, now: dict) -> dict[str, tuple]:
    """``{key: (old, new)}`` of every setting that differs. A key the checkpoint lacks (added to the
    config after it was written) counts as its default value."""
    defaults = resume_settings(Stage2Config())
    diff = {}
    for key in sorted(now):
        old = saved.get(key, defaults.get(key, _ABSENT))
        if old != now[key]:
            diff[key] = (old, now[key])
    return diff


def check_resume(checkpoint: Path, cfg: Stage2Config) -> dict[str, tuple]:
    """Raise :class:`ResumeMismatchError` unless ``cfg`` matches the checkpoint's settings (keys of
    ``train.resume_allow_changes`` excepted); returns the allowed changes ``{key: (old, new)}``."""
    state = json.loads((checkpoint / "trainer_state.json").read_text())
    saved = saved_settings(state)
    if saved is None:
        log.warning("checkpoint %s stores no settings: a resume under changed settings cannot be refused", checkpoint)
        return {}
    diff = settings_diff(saved, resume_settings(cfg))
    refused = {k: v for k, v in diff.items() if k not in cfg.train.resume_allow_changes}
    if refused:
        shown = "; ".join(f"{k} {_short(old)} -> {_short(new)}" for k, (old, new) in refused.items())
        allowable = [k for k in refused if k in RESUME_MAY_CHANGE]
        hint = (f"; train.resume_allow_changes=[{','.join(allowable)}] would apply the new "
                f"value{'s' if len(allowable) > 1 else ''} of {', '.join(allowable)}" if allowable else "")
        raise ResumeMismatchError(
            f"train.resume: checkpoint {checkpoint} was written with other settings: {shown}. Resume with the "
            f"checkpoint's settings, or start afresh in another train.output (or with train.resume=''){hint}")
    return diff


def group_hyperparameters(optimizer) -> list[dict]:
    """Each parameter group's base learning rate and weight decay as this run's config sets them
    (read before the checkpoint's optimizer state replaces them)."""
    return [{"initial_lr": g["initial_lr"], "weight_decay": g["weight_decay"]} for g in optimizer.param_groups]


def apply_schedule_changes(optimizer, scheduler, fresh: list[dict]) -> None:
    """After loading a checkpoint: this run's base learning rates and weight decay, and the learning
    rate of the next step from this run's schedule (length, warm-up, shape), instead of the
    checkpoint's. Called only when an allowed change was made, so a plain resume stays exact."""
    if len(fresh) != len(optimizer.param_groups):
        raise RuntimeError(f"optimizer has {len(optimizer.param_groups)} parameter groups, the config {len(fresh)}")
    scheduler.base_lrs = [g["initial_lr"] for g in fresh]
    for group, new, lr_lambda in zip(optimizer.param_groups, fresh, scheduler.lr_lambdas):
        group.update(new)
        group["lr"] = new["initial_lr"] * lr_lambda(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in optimizer.param_groups]
