"""Preemption: SIGTERM or SIGUSR1 stops Stage 2 at a step boundary with a checkpoint.

SLURM and Kubernetes send SIGTERM (then SIGKILL after a grace period); SLURM's
``--signal=USR1@SECONDS`` sends SIGUSR1 ahead of the time limit. While steps run, either signal only
sets a flag. Every rank adds its flag to the all-reduce the step already makes (the finite-loss
check), so all ranks see the same verdict at the same step: each finishes that step, the checkpoint
is written (a collective save), and the process exits with :data:`PREEMPTED_EXIT_CODE`. A rerun with
the same command resumes from that checkpoint exactly. Loader workers ignore both signals (a
signal sent to the whole process group must not kill them under the trainer); they exit when the
trainer shuts the loader down.
"""

from __future__ import annotations

import logging
import signal
import threading
from pathlib import Path

log = logging.getLogger(__name__)

# EX_TEMPFAIL of sysexits.h: "temporary failure, the user is invited to retry". Distinct from a
# user error (2), a crash (1) and a death by the signal itself (143 / -15).
PREEMPTED_EXIT_CODE = 75
STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


class Preempted(Exception):
    """Training stopped on a signal after writing a checkpoint."""

    def __init__(self, *, signal_name: str, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped on {signal_name} after step {step}; checkpoint {checkpoint}; "
                         "rerun the same command to resume")
        self.signal_name, self.step, self.checkpoint = signal_name, step, checkpoint


class StopSignals:
    """Context manager: while inside, SIGTERM / SIGUSR1 set :attr:`received` instead of killing.

    Outside the main thread (where handlers cannot be installed) it does nothing."""

    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def _handler(self, signum: int, frame) -> None:
        self.received = signum  # nothing else here: the step loop acts on it at its next boundary

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else ""

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handler)
        return self

    def __exit__(self, *exc) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)
        self._previous.clear()


def ignore_stop_signals(_worker_id: int = 0) -> None:
    """DataLoader ``worker_init_fn``: a loader worker ignores SIGTERM and SIGUSR1, so a signal sent to
    the whole process group reaches the trainer alone (a killed worker would crash the trainer
    before its checkpoint). The worker still ends when the loader is shut down or the trainer dies."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
