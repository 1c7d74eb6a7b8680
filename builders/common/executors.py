"""Run shard units on workers: in-process, a local process pool, or a Ray cluster.

``run_units(fn, units, *args, ...)`` calls ``fn(unit, *args)`` for every unit and hands each
result to ``on_done`` as it finishes (completion order); the first failing unit stops the run
with its exception, and shards finished before it stay on disk for the rerun to skip.

With Ray on more than one machine, every node must see the input images and the output folder
at the same paths (a shared file system), and this repository on its PYTHONPATH.
"""
from __future__ import annotations

import multiprocessing as mp
import os
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from wds_tools.lock import pid_alive, process_start_time

EXECUTORS = ("local", "ray")


def resolve_workers(workers: int) -> int:
    """0 means one worker per available CPU."""
    if workers > 0:
        return workers
    try:
        return max(len(os.sched_getaffinity(0)), 1)
    except AttributeError:
        return max(os.cpu_count() or 1, 1)


def exit_with_parent(pid: int, start_time: int | None, interval: float = 0.5) -> None:
    """Pool-worker initializer: end this worker soon after the process ``pid`` is gone.

    A worker's parent is the fork server, which lives as long as its workers do, so after a
    kill -9 of the builder nothing would end them: each would wait for work forever.
    """
    def watch() -> None:
        while pid_alive(pid, start_time):
            time.sleep(interval)
        os._exit(1)  # the builder is gone: nobody will read this worker's result

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def run_local(fn: Callable, units: Sequence, args: tuple, *, workers: int,
              on_done: Callable) -> None:
    """One worker runs in-process; more use a spawn-context process pool."""
    if workers <= 1:
        for u in units:
            on_done(fn(u, *args))
        return
    # forkserver: forked straight from the parent, children would inherit its threads (tqdm, Ray,
    # torch) half-copied; a fork server is a clean process that imports the builder once, so each
    # worker starts warm instead of importing everything again as spawn would.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([fn.__module__])
    me = os.getpid()
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=exit_with_parent,
                             initargs=(me, process_start_time(me))) as pool:
        pending = {pool.submit(fn, u, *args) for u in units}
        try:
            while pending:
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    on_done(fut.result())
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def run_ray(fn: Callable, units: Sequence, args: tuple, *, workers: int, address: str,
            on_done: Callable) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a local one of ``workers`` CPUs."""
    import ray

    started, pending = False, []
    if not ray.is_initialized():
        repo_root = str(Path(__file__).resolve().parents[2])
        join = address or os.environ.get("RAY_ADDRESS", "")
        ray.init(address=join or None, num_cpus=None if join else workers,
                 include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": repo_root}})
        started = True
    try:
        remote = ray.remote(num_cpus=1, max_retries=0)(fn)
        pending = [remote.remote(u, *args) for u in units]
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            on_done(ray.get(done[0]))
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def run_units(fn: Callable, units: Sequence, *args, executor: str = "local", workers: int = 0,
              address: str = "", on_done: Callable = lambda r: None) -> None:
    """Dispatch to the chosen executor; ValueError for an unknown one."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose from {EXECUTORS}")
    n = resolve_workers(workers)
    if executor == "local":
        run_local(fn, units, args, workers=min(n, max(len(units), 1)), on_done=on_done)
    else:
        run_ray(fn, units, args, workers=n, address=address, on_done=on_done)
