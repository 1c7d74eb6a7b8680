"""Run shard units on workers: in-process, a local process pool, or a Ray cluster.

``run_units(fn, units, *args, ...)`` calls ``fn(unit, *args)`` for every unit and hands each
result to ``on_done`` as it finishes (completion order). Without ``on_error`` the first failing
unit stops the run with its exception; with it, ``on_error(unit, exc)`` records the failure and
the other units go on. Shards finished before a failure stay on disk for the rerun to skip.

GPUs: ``gpus_per_task > 0`` gives the local pool one worker per visible GPU, each pinned to its
own device through ``CUDA_VISIBLE_DEVICES`` before it imports anything that touches CUDA; Ray
tasks request ``num_gpus=gpus_per_task`` (fractions share a device).

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


def visible_gpus() -> list[str]:
    """GPU ids this process may use: CUDA_VISIBLE_DEVICES, else every device nvidia-smi sees."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        return [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
    try:
        import torch  # only asks the driver for a count; no CUDA context in this process

        return [str(i) for i in range(torch.cuda.device_count())]
    except ImportError:
        return []


def _init_worker(pid: int, start_time: int | None, gpu_queue) -> None:
    """Pool initializer: end with the parent; with GPUs, take one id for this worker's life."""
    exit_with_parent(pid, start_time)
    if gpu_queue is not None:
        os.environ["CUDA_VISIBLE_DEVICES"] = gpu_queue.get()


def _call(fn: Callable, unit, args: tuple, on_done: Callable, on_error: Callable | None) -> None:
    try:
        result = fn(unit, *args)
    except Exception as e:  # noqa: BLE001 - handed to the caller's recorder
        if on_error is None:
            raise
        on_error(unit, e)
        return
    on_done(result)


def run_local(fn: Callable, units: Sequence, args: tuple, *, workers: int, on_done: Callable,
              on_error: Callable | None = None, gpus: Sequence[str] = (), preload: Sequence[str] = ()) -> None:
    """One worker runs in-process; more use a forkserver process pool.

    ``preload``: modules the fork server imports once before it forks the workers (besides
    ``fn``'s own), so heavy libraries are not imported again in every worker. The fork server
    starts once per process and keeps the list it started with.
    """
    if workers <= 1 and not gpus:
        for u in units:
            _call(fn, u, args, on_done, on_error)
        return
    # forkserver: forked straight from the parent, children would inherit its threads (tqdm, Ray,
    # torch) half-copied; a fork server is a clean process that imports the builder once, so each
    # worker starts warm instead of importing everything again as spawn would.
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload([fn.__module__, *preload])
    queue = None
    if gpus:
        workers = len(gpus)
        queue = ctx.Manager().Queue()
        for g in gpus:
            queue.put(g)
    me = os.getpid()
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(me, process_start_time(me), queue)) as pool:
        pending = {pool.submit(fn, u, *args): u for u in units}
        try:
            while pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for fut in done:
                    unit = pending.pop(fut)
                    exc = fut.exception()
                    if exc is None:
                        on_done(fut.result())
                    elif on_error is None or not isinstance(exc, Exception):
                        raise exc
                    else:
                        on_error(unit, exc)
        except BaseException:
            for fut in pending:
                fut.cancel()
            raise


def run_ray(fn: Callable, units: Sequence, args: tuple, *, workers: int, address: str,
            on_done: Callable, on_error: Callable | None = None,
            gpus_per_task: float = 0.0) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a local one of ``workers`` CPUs."""
    import ray

    started, pending = False, {}
    if not ray.is_initialized():
        repo_root = str(Path(__file__).resolve().parents[2])
        join = address or os.environ.get("RAY_ADDRESS", "")
        ray.init(address=join or None, num_cpus=None if join else workers,
                 include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": repo_root}})
        started = True
    try:
        remote = ray.remote(num_cpus=1, num_gpus=gpus_per_task or 0, max_retries=0)(fn)
        pending = {remote.remote(u, *args): u for u in units}
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            unit = pending.pop(done[0])
            try:
                result = ray.get(done[0])
            except Exception as e:  # noqa: BLE001 - a task error; recorded or re-raised
                if on_error is None:
                    raise
                on_error(unit, getattr(e, "cause", None) or e)
                continue
            on_done(result)
    except BaseException:
        for ref in pending:
            ray.cancel(ref, force=True)
        raise
    finally:
        if started:
            ray.shutdown()


def run_units(fn: Callable, units: Sequence, *args, executor: str = "local", workers: int = 0,
              address: str = "", on_done: Callable = lambda r: None,
              on_error: Callable | None = None, gpus_per_task: float = 0.0,
              preload: Sequence[str] = ()) -> None:
    """Dispatch to the chosen executor; ValueError for an unknown one. ``preload``: see :func:`run_local`."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose from {EXECUTORS}")
    if gpus_per_task < 0:
        raise ValueError(f"gpus_per_task must be >= 0, got {gpus_per_task}")
    n = resolve_workers(workers)
    if executor == "local":
        gpus = visible_gpus() if gpus_per_task > 0 else []
        if gpus and workers > 0:
            gpus = gpus[:workers]
        run_local(fn, units, args, workers=min(n, max(len(units), 1)), on_done=on_done,
                  on_error=on_error, gpus=gpus[:max(len(units), 1)], preload=preload)
    else:
        run_ray(fn, units, args, workers=n, address=address, on_done=on_done, on_error=on_error,
                gpus_per_task=gpus_per_task)
