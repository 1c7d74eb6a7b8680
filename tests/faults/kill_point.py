"""Run ``training.train`` and SIGKILL it at a named point (fault tests).

``python -m tests.faults.kill_point POINT REPORT.json [training.train args ...]``

The kill is a real ``kill -9`` of this process (no cleanup, no atexit), delivered at an exact
point so the test is deterministic. Points:

* ``step:N``: when the loader hands over batch N (1-based), mid-run between checkpoints;
* ``commit:NAME``: just before the rename that publishes ``NAME`` (a checkpoint folder such as
  ``step_0000006``, or a final output such as ``peft_adapter``): everything is written under its
  temporary name, nothing under the final one.

Just before dying it writes REPORT.json with its pid and its child processes (the loader
workers), so the test can check that none outlives it.

``signal:N`` is no kill -9 but a preemption: when the loader hands over batch N, it writes
REPORT.json and waits for a signal, which the test sends from outside to the whole process group
(the loader workers too, as SLURM signals every process of a job step; start it in a session of
its own). ``signal:N@R`` sends SIGUSR1 to this process only, and only on rank R (the other ranks
must stop at the same step without a signal of their own). Either way the run goes on to its own
exit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import psutil


def die(report: Path) -> None:
    children = [p.pid for p in psutil.Process().children(recursive=True)]
    report.write_text(json.dumps({"pid": os.getpid(), "children": children}))
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, report: Path) -> None:
    kind, _, arg = point.partition(":")
    if kind == "step":
        from training.data import LoaderState

        update = LoaderState.update

        def update_then_maybe_die(self, batch):
            update(self, batch)
            if self.batches == int(arg):
                die(report)

        LoaderState.update = update_then_maybe_die
    elif kind == "signal":
        from training.data import LoaderState

        batch, _, only_rank = arg.partition("@")
        update = LoaderState.update

        def update_then_maybe_signal(self, b):
            update(self, b)
            if self.batches == int(batch) and (not only_rank or os.environ.get("RANK", "0") == only_rank):
                children = [p.pid for p in psutil.Process().children(recursive=True)]
                report.write_text(json.dumps({"pid": os.getpid(), "children": children}))
                if only_rank:
                    os.kill(os.getpid(), signal.SIGUSR1)
                else:  # until the trainer's handler (training.preempt.StopSignals) has seen it
                    stop = getattr(signal.getsignal(signal.SIGTERM), "__self__", None)
                    deadline = time.monotonic() + 120  # without a handler the signal ends the process
                    while (stop is None or stop.received is None) and time.monotonic() < deadline:
                        time.sleep(0.01)

        LoaderState.update = update_then_maybe_signal
    elif kind == "commit":
        replace = os.replace

        def replace_unless_named(src, dst, *args, **kwargs):
            if Path(dst).name == arg:
                die(report)
            return replace(src, dst, *args, **kwargs)

        os.replace = replace_unless_named
    else:
        raise SystemExit(f"unknown kill point {point!r}")


def main(argv: list[str]) -> int:
    point, report, *train_args = argv
    arm(point, Path(report))
    from training.train import main as train_main

    return train_main(train_args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
