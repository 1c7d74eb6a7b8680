"""Experiment trackers for Stage 2: TensorBoard, Weights & Biases, trackio, through Accelerate.

``train.report_to: [tensorboard]`` (any tracker Accelerate's ``log_with`` knows; empty = none)
sends every figure of ``training_log.json`` to the trackers as it is logged: the loss terms,
in-batch accuracies, realised synthetic share, classes and same-source pairs per batch, lr,
samples/s, quality drops (``train/...``), the held-out evaluation before and after
(``eval/before/...`` at step 0, ``eval/after/...`` at the last step) and the run's closing counts
(``summary/...``). Only the main process logs. Everything stays under ``train.output``:
TensorBoard events in ``<output>/tensorboard/stage2``, a wandb run in ``<output>/wandb`` (set
``WANDB_MODE=offline`` to keep it local), trackio's database in ``<output>/trackio`` unless
``TRACKIO_DIR`` is set. ``training_log.json`` and the PNG curves are written as before.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
from pathlib import Path

from training.config import Stage2Config
from wds_tools.config import config_to_dict

log = logging.getLogger(__name__)
PROJECT = "stage2"  # the run's name in every tracker (TensorBoard: the events' sub-folder)
PIP_NAMES = {"comet_ml": "comet-ml"}
ENTRY_POINTS = ("training/train.py", "remoteclip-train", "stage2-train")


def check_trackers(names: list[str]) -> None:
    """ValueError naming the tracker when one is unknown to Accelerate or not installed here
    (Accelerate itself would drop a missing one with only a debug message)."""
    from accelerate.tracking import LOGGER_TYPE_TO_CLASS, get_available_trackers

    available = {str(t) for t in get_available_trackers()}
    for name in names:
        if name not in LOGGER_TYPE_TO_CLASS:
            raise ValueError(f"train.report_to: unknown tracker {name!r}; Accelerate supports "
                             f"{sorted(LOGGER_TYPE_TO_CLASS)}")
        if name not in available:
            raise ValueError(f"train.report_to: {name} is not installed here "
                             f"(pip install {PIP_NAMES.get(name, name)}), or leave it out of train.report_to")


def accelerator_kwargs(cfg: Stage2Config) -> dict:
    """Keyword arguments for ``Accelerator(...)``: the trackers and their folder (none when off)."""
    names = list(cfg.train.report_to)
    if not names:
        return {}
    check_trackers(names)
    from accelerate.utils import ProjectConfiguration

    out = Path(cfg.train.output)
    return {"log_with": names,
            "project_config": ProjectConfiguration(project_dir=str(out), logging_dir=str(out / "tensorboard"))}


def launch_command(argv: list[str] | None = None) -> str | None:
    """The Stage 2 command line as typed (``python -m training.train ...``); None when training
    was started from Python rather than the entry point."""
    argv = list(sys.argv if argv is None else argv)
    if not argv or not argv[0].replace(os.sep, "/").endswith(ENTRY_POINTS):
        return None
    return shlex.join(["python", "-m", "training.train", *argv[1:]])


def flat_config(cfg: Stage2Config) -> dict:
    """The config as ``section.key -> scalar`` (lists as text): what TensorBoard's hparams take."""
    out = {}
    for section, values in config_to_dict(cfg).items():
        for key, value in (values or {}).items():
            out[f"{section}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return out


def _numbers(values: dict, prefix: str) -> dict:
    """Nested dict -> ``prefix/key/sub: number`` (None, text and lists left out)."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}/{key}"))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out[f"{prefix}/{key}"] = value
    return out


class RunTracking:
    """Sends what a ``RunLog`` gathers to the trackers; main process only, resumable."""

    def __init__(self, accelerator, cfg: Stage2Config, run_log, *, step: int) -> None:
        self.accelerator, self.run_log = accelerator, run_log
        self.main = accelerator.is_main_process
        self.on = self.main and bool(accelerator.log_with)
        # a resumed run has logged these already (and TensorBoard purges the steps it repeats)
        self.entries_done = len(run_log.entries)
        self.eval_done = set(run_log.evaluation)
        if not self.main:
            return
        run_log.summary.setdefault("command", launch_command())
        if self.on:
            out = Path(cfg.train.output)
            os.environ.setdefault("TRACKIO_DIR", str(out / "trackio"))
            init = {"wandb": {"dir": str(out)}, "tensorboard": {"purge_step": step} if step else {}}
            accelerator.init_trackers(PROJECT, config=flat_config(cfg), init_kwargs=init)
            log.info("trackers %s writing under %s", ", ".join(map(str, accelerator.log_with)), out)

    def sync(self, step: int) -> None:
        """Log the entries and evaluations added to the run log since the last call."""
        if not self.on:
            return
        for entry in self.run_log.entries[self.entries_done:]:
            self.accelerator.log(_numbers({k: v for k, v in entry.items() if k != "step"}, "train"),
                                 step=entry["step"])
        self.entries_done = len(self.run_log.entries)
        for when, result in self.run_log.evaluation.items():
            if when not in self.eval_done and result:
                self.accelerator.log(_numbers(result, f"eval/{when}"), step=0 if when == "before" else step)
                self.eval_done.add(when)

    def close(self, step: int) -> None:
        """Last sync, the run's closing counts, then each tracker's finish (main process only)."""
        if not self.on:
            return
        self.sync(step)
        summary = self.run_log.summary
        closing = {"realised_synthetic_share": summary.get("realised_synthetic_share"),
                   **{k: v for k, v in (summary.get("counters") or {}).items()}}
        self.accelerator.log(_numbers(closing, "summary"), step=step)
        for tracker in self.accelerator.trackers:
            tracker.finish()  # not accelerator.end_training(): that also tears the process group down
