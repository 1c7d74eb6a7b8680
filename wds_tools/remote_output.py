"""Writing a dataset to an object store (any fsspec URL: ``s3://``, ``gs://``, ...).

Object stores have no rename and no partial objects: a PUT (multipart included) makes an object
visible whole, or not at all. So a tool that writes to a URL output finishes every file in a
local staging folder and uploads it whole, in an order that keeps the set readable at every
moment:

1. the build files a resumed run checks (``build_config.yaml``, ``build_plan.json``) first;
2. per shard: the tar, its ``.skips.json``, then its ``.stats.json`` last: a shard counts as
   finished on the store only when its stats object exists and the tar object has the size the
   stats name (a kill mid-upload leaves no stats, so the shard is built again);
3. the index files (``dataset.json``, ``sizes.json``, ``selection.json``, the build summary)
   after every shard they list.

A killed build resumes from what is on the store, not from its staging folder (which may be on a
machine that is gone). One writer per output: :class:`StoreLock` is an object created with a
conditional PUT (``If-None-Match: *``, S3's create-if-absent), refreshed by its holder and taken
over with ``If-Match`` on the stale lock's ETag, so two takers cannot both win. Stores without
conditional writes (``gs://`` through gcsfs, ``memory://``) get create-if-absent where fsspec has
it and a plain delete-then-create take-over: there only ``--break-lock`` discipline guards it.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import posixpath
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from hashlib import sha1
from pathlib import Path

from wds_tools.lock import LockHeld, describe_holder, holder_record, is_this_process, pid_alive
from wds_tools.urls import CREDENTIALS_HINT, StoreAccessError, has_scheme, store_errors, url_to_fs

log = logging.getLogger("wds_tools")
STAGING_ENV = "WDS_STAGING_DIR"  # where URL outputs are staged (default: the system temp folder)


def is_url_output(value: str | Path) -> bool:
    """True when an output is a URL (written through :class:`Store`), not a local folder."""
    return has_scheme(value)


def staging_dir(url: str) -> Path:
    """The local folder where files for ``url`` are finished before upload: the same path on every
    machine (a cluster worker stages there too), one per output URL."""
    root = Path(os.environ.get(STAGING_ENV) or tempfile.gettempdir()) / "wds-staging"
    return root / sha1(url.rstrip("/").encode()).hexdigest()[:16]


class Store:
    """One output prefix on an object store; paths are relative to it (``train/x.tar``)."""

    def __init__(self, url: str):
        self.url = str(url).rstrip("/")
        self.fs, self.root = url_to_fs(self.url)
        self.proto = self.url.split("://", 1)[0]

    def key(self, rel: str) -> str:
        return f"{self.root}/{rel}" if rel else self.root

    def url_of(self, rel: str) -> str:
        return f"{self.url}/{rel}" if rel else self.url

    def check_access(self) -> None:
        """List the prefix: missing credentials or a refusal is a one-line StoreAccessError, a
        missing bucket a one-line FileNotFoundError, before any work is done."""
        bucket = self.root.split("/", 1)[0]
        try:
            with store_errors(self.url):
                try:
                    self.fs.ls(self.root, detail=False, refresh=True)
                except FileNotFoundError:  # a new prefix; on an object store its bucket must exist
                    if self.proto in ("s3", "s3a", "gs", "gcs") and not self.fs.exists(bucket):
                        raise FileNotFoundError(f"output {self.url!r}: the bucket {bucket!r} does not exist "
                                                f"(or is not visible with these credentials)") from None
        except (StoreAccessError, FileNotFoundError):
            raise
        except Exception as e:  # an unreachable endpoint: botocore's errors are not OSErrors
            raise StoreAccessError(f"{self.url!r}: cannot reach the object store ({type(e).__name__}: "
                                   f"{' '.join(str(e).split())}); {CREDENTIALS_HINT}") from None

    def list(self, rel: str = "") -> list[str]:
        """Names (not paths) of the objects directly under ``rel``; [] when there are none."""
        with store_errors(self.url):
            try:
                found = self.fs.ls(self.key(rel), detail=False, refresh=True)
            except FileNotFoundError:
                return []
        return sorted(p.rstrip("/").rsplit("/", 1)[-1] for p in found)

    def size(self, rel: str) -> int | None:
        """The object's size, None when it does not exist."""
        self.fs.invalidate_cache(self.key(rel))
        with store_errors(self.url):
            try:
                return int(self.fs.info(self.key(rel))["size"])
            except FileNotFoundError:
                return None

    def read(self, rel: str) -> bytes | None:
        """The object's bytes, None when it does not exist."""
        with store_errors(self.url):
            try:
                return self.fs.cat_file(self.key(rel))
            except FileNotFoundError:
                return None

    def download(self, rel: str, local: Path) -> bool:
        """Copy object ``rel`` to ``local`` (via a temp name); False when it does not exist."""
        local.parent.mkdir(parents=True, exist_ok=True)
        tmp = local.with_name(f"{local.name}.tmp-{os.getpid()}-dl")
        with store_errors(self.url):
            try:
                self.fs.get_file(self.key(rel), str(tmp))
            except FileNotFoundError:
                tmp.unlink(missing_ok=True)
                return False
        os.replace(tmp, local)
        return True

    def upload(self, local: Path, rel: str) -> None:
        """Put the finished file ``local`` at ``rel``: visible whole once this returns."""
        with store_errors(self.url):
            self.fs.put_file(str(local), self.key(rel))
        self.fs.invalidate_cache(self.key(rel))

    def upload_in_order(self, staging: Path, rels: Iterable[str]) -> None:
        """Upload ``staging/rel`` for each ``rel`` that exists there, in the order given."""
        for rel in rels:
            if (staging / rel).is_file():
                self.upload(staging / rel, rel)

    def remove(self, rels: Iterable[str]) -> None:
        """Delete the objects ``rels`` (absent ones are fine), in the order given."""
        for rel in rels:
            with store_errors(self.url):
                try:
                    self.fs.rm_file(self.key(rel))
                except FileNotFoundError:
                    pass
            self.fs.invalidate_cache(self.key(rel))


@contextlib.contextmanager
def staged_upload(url: str) -> Iterator[Path]:
    """A local temporary path to finish one file in; uploaded whole to ``url`` when the block ends
    without an error (a sidecar, a ``selection.json`` beside remote shards)."""
    fs, path = url_to_fs(url)
    with tempfile.TemporaryDirectory(prefix="upload-") as tmp:
        local = Path(tmp) / posixpath.basename(path)
        yield local
        with store_errors(url):
            fs.put_file(str(local), path)
        fs.invalidate_cache(path)


def fresh_staging(url: str) -> Path:
    """An empty staging folder for ``url``: the store, not an earlier run's staging, says what
    is done (that folder may hold a killed run's files of another recipe)."""
    d = staging_dir(url)
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    return d


class StoreLock:
    """The output lock of a store prefix: object ``build.lock`` created only if absent.

    Its content names the holder as :class:`wds_tools.lock.OutputLock`'s does; the holder rewrites
    it every ``heartbeat_s`` (``time`` moves on). A lock is stale when its host is this host and
    its pid is dead, or, with ``break_foreign``, when it was not refreshed for ``foreign_stale_s``.
    """

    def __init__(self, store: Store, name: str = "build.lock", *, tool: str, break_foreign: bool = False,
                 foreign_stale_s: float = 600.0, heartbeat_s: float = 30.0):
        self.store, self.rel = store, name
        self.tool, self.break_foreign = tool, break_foreign
        self.foreign_stale_s, self.heartbeat_s = foreign_stale_s, heartbeat_s
        self.etag: str | None = None
        self.held = False
        self._stop = threading.Event()
        self._beat: threading.Thread | None = None

    @property
    def _key(self) -> str:
        return self.store.key(self.rel)

    def _record(self) -> bytes:
        return json.dumps(holder_record(self.tool, store=True)).encode()

    def _put(self, **condition) -> bool:
        """Write the record under ``condition``; False when the store says the condition failed."""
        fs = self.store.fs
        try:
            with store_errors(self.store.url):
                fs.pipe_file(self._key, self._record(), **condition)
        except FileExistsError:
            return False
        except OSError as e:
            if "condition" in str(e).lower():  # S3 PreconditionFailed (If-Match), EINVAL in s3fs
                return False
            raise
        fs.invalidate_cache(self._key)
        self.etag = fs.info(self._key).get("ETag")
        return True

    def _create(self) -> bool:
        try:
            return self._put(mode="create")
        except (TypeError, NotImplementedError):  # a backend without create-if-absent
            if self.store.fs.exists(self._key):
                return False
            return self._put()

    def _holder(self) -> tuple[dict | None, str | None]:
        """The lock's content and ETag; (None, None) when there is no lock."""
        self.store.fs.invalidate_cache(self._key)
        try:
            etag = self.store.fs.info(self._key).get("ETag")
            raw = self.store.fs.cat_file(self._key)
        except FileNotFoundError:
            return None, None
        try:
            h = json.loads(raw)
        except ValueError:
            h = {}
        return (h if isinstance(h, dict) else {}), etag

    def stale_reason(self, holder: dict) -> str | None:
        """Why ``holder``'s lock may be taken over, or None while it may be alive."""
        if holder.get("host") == socket.gethostname():
            pid = int(holder.get("pid", -1))
            return None if pid_alive(pid, holder.get("start_time")) else f"its process {pid} is gone"
        idle = time.time() - float(holder.get("time", 0))
        if self.break_foreign and idle > self.foreign_stale_s:
            return f"it was last refreshed {idle:.0f} s ago and breaking it was asked for"
        return None

    def _refusal(self, holder: dict) -> LockHeld:
        idle = time.time() - float(holder.get("time", time.time()))
        msg = f"{self.store.url} is in use by {describe_holder(holder)} (lock object {self.store.url_of(self.rel)})"
        if holder.get("host") != socket.gethostname():
            msg += (f"; it was last refreshed {idle:.0f} s ago: if that job is dead, rerun with "
                    f"break_lock=true to take the lock over" if idle > self.foreign_stale_s
                    else f"; it was refreshed {idle:.0f} s ago, so that job is alive")
        return LockHeld(msg, holder)

    def acquire(self) -> StoreLock:
        for _ in range(20):
            if self._create():
                break
            holder, etag = self._holder()
            if holder is None:
                continue  # released meanwhile
            reason = self.stale_reason(holder)
            if reason is None:
                raise self._refusal(holder)
            log.warning("taking over the lock %s of %s: %s", self.store.url_of(self.rel),
                        describe_holder(holder), reason)
            taken = self._put(IfMatch=etag) if etag else self._put()
            if taken:  # only one taker's If-Match on the stale ETag succeeds
                break
        else:
            raise self._refusal(self._holder()[0] or {})
        self.held = True
        self._beat = threading.Thread(target=self._heartbeat, name="store-lock-heartbeat", daemon=True)
        self._beat.start()
        return self

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                if not (self._put(IfMatch=self.etag) if self.etag else self._put()):
                    log.error("the lock %s was taken over by another job", self.store.url_of(self.rel))
                    return
            except Exception:  # noqa: BLE001 - a missed beat is retried; the build goes on
                log.warning("could not refresh the lock %s", self.store.url_of(self.rel), exc_info=True)

    def release(self) -> None:
        """Stop refreshing and delete the lock while it is still this job's."""
        if not self.held:
            return
        self._stop.set()
        if self._beat is not None:
            self._beat.join(timeout=5)
        holder, etag = self._holder()
        if is_this_process(holder):
            self.store.remove([self.rel])
        self.held = False

    def __enter__(self) -> StoreLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def publish(store: Store, staging: Path, *, shards: Sequence[str], index: Sequence[str],
            stale: Sequence[str] = ()) -> None:
    """Upload a finished folder: the old ``index`` objects removed first (no reader follows an
    index into a set being replaced), each shard then its stats, the ``stale`` objects of an
    earlier, larger set removed, and the new ``index`` files last."""
    store.remove(index)
    for name in shards:
        store.upload_in_order(staging, (name, name[: -len(".tar")] + ".stats.json"))
    store.remove(stale)
    store.upload_in_order(staging, index)
