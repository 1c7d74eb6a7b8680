"""Run shard units on workers: in-process, a local process pool, or a Ray cluster.

``run_units(fn, units, *args, ...)`` calls ``fn(unit, *args)`` for every unit and hands each
result to ``on_done`` as it finishes (completion order). Without ``on_error`` the first failing
unit stops the run with its exception; with it, ``on_error(unit, exc)`` records the failure and
the other units go on. Shards finished before a failure stay on disk for the rerun to skip.

GPUs: ``gpus_per_task > 0`` gives the local pool one worker per visible GPU. GPU workers are
spawned, never forked, and each interpreter starts with ``CUDA_VISIBLE_DEVICES`` already naming
its one GPU, so nothing it imports (diffusers asks ``torch.cuda.is_available()`` at import) can
see another device; this process never calls into CUDA (GPUs are found with NVML, see
:mod:`builders.common.gpus`). CPU pools fork workers from a fork server that preloads the
libraries once. Ray tasks request ``num_gpus=gpus_per_task`` (fractions share a device). A
script (not ``python -m``) that runs a GPU pool needs an ``if __name__ == "__main__":`` guard:
spawned workers import it again.

With Ray on more than one machine, every node must see the input images and the output folder
at the same paths (a shared file system), and this repository on its PYTHONPATH. Ray units are
spread over the nodes; a unit whose node or worker process is lost (a node removed, a worker
killed for memory) runs again elsewhere, up to :data:`RAY_RETRIES` times; an exception the unit
raises itself is its own failure and is not retried. A result object with a ``node`` attribute
gets the id of the Ray node that built it (the build summary lists them).
"""
from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing as mp
import multiprocessing.context
import multiprocessing.forkserver
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from pathlib import Path

from builders.common.gpus import visible_gpus
from wds_tools.lock import pid_alive, process_start_time

log = logging.getLogger(__name__)

EXECUTORS = ("local", "ray")
# Runs of a Ray unit after its first, when the node or worker process running it is lost. A unit's
# own exception is never retried (retry_exceptions=False): a unit that fails would fail again.
RAY_RETRIES = 3


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

    A CPU worker's parent is the fork server, which lives as long as its workers do, so after a
    kill -9 of the builder nothing would end them: each would wait for work forever.
    """
    def watch() -> None:
        while pid_alive(pid, start_time):
            time.sleep(interval)
        os._exit(1)  # the builder is gone: nobody will read this worker's result

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def local_pool(workers: int, units: int, *, gpus_per_task: float,
               gpus: Sequence[str] | None = None) -> tuple[int, list[str]]:
    """(worker count, GPU ids) of a local pool for ``units`` units.

    Units that ask for GPUs get one worker per GPU (``gpus``, default the visible ones;
    ``workers`` > 0: at most that many); otherwise ``workers`` workers (0: one per CPU). Never
    more workers than units.
    """
    units = max(units, 1)
    found = list(visible_gpus() if gpus is None else gpus) if gpus_per_task > 0 else []
    if found:
        pool = (found[:workers] if workers > 0 else found)[:units]
        return len(pool), pool
    return min(resolve_workers(workers), units), []


_ENV_LOCK = threading.Lock()


@contextlib.contextmanager
def _environ(**values: str) -> Iterator[None]:
    """Set environment variables while a child starts: spawn and the fork server start a fresh
    interpreter that copies this process's environment at that moment."""
    with _ENV_LOCK:
        saved = {k: os.environ.get(k) for k in values}
        os.environ.update(values)
        try:
            yield
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


class PinnedProcess(mp.context.SpawnProcess):
    """A spawned worker whose interpreter starts with CUDA_VISIBLE_DEVICES = its one GPU, so the
    setting holds before anything runs there (site hooks, the re-imported main script)."""

    gpu = ""

    def start(self) -> None:
        with _environ(CUDA_VISIBLE_DEVICES=self.gpu):
            super().start()


class _PinnedSpawnContext(mp.context.SpawnContext):
    """Spawn context that gives each process it makes the next GPU no other worker has."""

    def __init__(self, gpus: Sequence[str]):
        self._free = list(gpus)

    def Process(self, *args, **kwargs) -> PinnedProcess:  # noqa: N802 - multiprocessing's name
        if not self._free:  # a pool never replaces a dead worker; two on one GPU would be a bug
            raise RuntimeError("more GPU workers than GPUs")
        p = PinnedProcess(*args, **kwargs)
        p.gpu = self._free.pop(0)
        return p


def _init_worker(pid: int, start_time: int | None, preload: Sequence[str]) -> None:
    """Pool initializer: end with the parent; a GPU worker imports ``preload`` here, after its
    device is pinned (a CPU worker got them from the fork server)."""
    exit_with_parent(pid, start_time)
    gpu = getattr(mp.current_process(), "gpu", None)
    if gpu is None:
        return
    os.environ["CUDA_VISIBLE_DEVICES"] = gpu  # set since the interpreter started; kept explicit
    for name in preload:
        try:
            importlib.import_module(name)
        except ImportError as e:  # as the fork server does: the unit that needs it reports it
            log.debug("preload of %s failed: %s", name, e)


def _cpu_context(preload: Sequence[str]) -> mp.context.BaseContext:
    """The fork server context, its server started with the NVML-based CUDA check: diffusers'
    import-time ``torch.cuda.is_available()`` then reads NVML instead of initialising CUDA in the
    process every worker is forked from."""
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(preload))
    with _environ(PYTORCH_NVML_BASED_CUDA_CHECK=os.environ.get("PYTORCH_NVML_BASED_CUDA_CHECK", "1")):
        mp.forkserver.ensure_running()
    return ctx


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
    """One worker runs in-process; more use a process pool: CPU workers are forked from a fork
    server, GPU workers (``gpus``: one per id) are spawned, each pinned to its GPU.

    ``preload``: modules each worker starts with (besides ``fn``'s own), imported once by the fork
    server before it forks CPU workers, or by each GPU worker after its device is pinned. The
    fork server starts once per process and keeps the list it started with.
    """
    if workers <= 1 and not gpus:
        for u in units:
            _call(fn, u, args, on_done, on_error)
        return
    # CPU: forked straight from the parent, children would inherit its threads (tqdm, Ray, torch)
    # half-copied; a fork server is a clean process that imports the builder once, so each worker
    # starts warm instead of importing everything again as spawn would. GPU: a forked worker
    # inherits whatever CUDA state its parent has, so each is a fresh interpreter.
    if gpus:
        workers = len(gpus)
        ctx: mp.context.BaseContext = _PinnedSpawnContext(gpus)
        log.info("local pool: %d spawned workers, one per GPU (CUDA_VISIBLE_DEVICES %s)",
                 workers, ", ".join(gpus))
    else:
        ctx, preload = _cpu_context([fn.__module__, *preload]), ()
    me = os.getpid()
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                             initargs=(me, process_start_time(me), tuple(preload))) as pool:
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


def _ray_unit(fn: Callable, unit, *args):
    """A Ray task's body: ``fn(unit, *args)``, stamped with the node that ran it."""
    import ray

    result = fn(unit, *args)
    if hasattr(result, "node"):
        result.node = ray.get_runtime_context().get_node_id()
    return result


def run_ray(fn: Callable, units: Sequence, args: tuple, *, workers: int, address: str,
            on_done: Callable, on_error: Callable | None = None,
            gpus_per_task: float = 0.0) -> None:
    """Join the cluster at ``address`` (or RAY_ADDRESS), else start a local one of ``workers`` CPUs
    (a Ray session this process already started is used as it is)."""
    import ray

    started, pending = False, {}
    if not ray.is_initialized():
        repo_root = str(Path(__file__).resolve().parents[2])
        join = address or os.environ.get("RAY_ADDRESS", "")
        # "local", not None: None joins whatever cluster /tmp/ray/ray_current_cluster names (the
        # last one started on this machine, by anyone), where num_cpus is refused.
        ray.init(address=join or "local", num_cpus=None if join else workers,
                 include_dashboard=False, log_to_driver=False,
                 runtime_env={"env_vars": {"PYTHONPATH": repo_root}})
        started = True
    try:
        remote = ray.remote(num_cpus=1, num_gpus=gpus_per_task or 0, max_retries=RAY_RETRIES,
                            retry_exceptions=False, scheduling_strategy="SPREAD")(_ray_unit)
        pending = {remote.remote(fn, u, *args): u for u in units}
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
              preload: Sequence[str] = (), gpus: Sequence[str] | None = None) -> None:
    """Dispatch to the chosen executor; ValueError for an unknown one. ``preload``: see
    :func:`run_local`; ``gpus``: the local pool's GPU ids when units ask for GPUs (default: the
    visible ones)."""
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; choose from {EXECUTORS}")
    if gpus_per_task < 0:
        raise ValueError(f"gpus_per_task must be >= 0, got {gpus_per_task}")
    if executor == "local":
        n, pool = local_pool(workers, len(units), gpus_per_task=gpus_per_task, gpus=gpus)
        run_local(fn, units, args, workers=n, on_done=on_done, on_error=on_error, gpus=pool,
                  preload=preload)
    else:
        run_ray(fn, units, args, workers=resolve_workers(workers), address=address, on_done=on_done,
                on_error=on_error, gpus_per_task=gpus_per_task)
