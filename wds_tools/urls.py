"""Shard sources: brace patterns, directories, ``.txt`` URL lists, or lists of these.

Local paths and object-store URLs (``s3://``, ``gs://``, ``https://``) are opened through fsspec.
``pipe:`` URLs run a shell command taken from the URL list, so they are refused unless the caller
passes ``allow_pipe=True``.
"""

from __future__ import annotations

import contextlib
import os
import posixpath
import re
import subprocess
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import IO

import braceexpand
import fsspec

REMOTE_SCHEMES = ("s3://", "gs://", "gcs://", "https://", "http://", "file://", "memory://")
# Two or more letters before "://", so a Windows drive ("C:/x") is not a scheme.
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+://")
CLOUD_EXTRA_HINT = "pip install 'remoteclip-wds[cloud]'"


class MissingBackendError(ValueError):
    """An object-store URL whose fsspec backend (s3fs, gcsfs) is not installed."""


class StoreAccessError(PermissionError, ValueError):
    """The object store refused the request or found no credentials: a user error (one line at
    start), and still a ``PermissionError`` for readers that skip refused shards mid-run."""


# Credential errors of the stores' client libraries, by name: wds_tools imports neither botocore
# nor google-auth, and a missing key is not an OSError there.
_CREDENTIAL_ERRORS = frozenset({"NoCredentialsError", "PartialCredentialsError", "DefaultCredentialsError",
                                "RefreshError", "InvalidAccessKeyId", "SignatureDoesNotMatch"})
CREDENTIALS_HINT = ("check the store's credentials and endpoint (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY, "
                    "AWS_PROFILE, AWS_ENDPOINT_URL; GOOGLE_APPLICATION_CREDENTIALS for gs://)")


@contextlib.contextmanager
def store_errors(url: str) -> Iterator[None]:
    """Around a call on remote ``url``: a refusal or missing credentials becomes a one-line
    :class:`StoreAccessError` naming the URL (a missing object stays ``FileNotFoundError``)."""
    try:
        yield
    except StoreAccessError:
        raise
    except Exception as e:
        names = {t.__name__ for t in type(e).__mro__}
        if not is_remote(url) or not (isinstance(e, PermissionError) or names & _CREDENTIAL_ERRORS):
            raise
        raise StoreAccessError(f"{url!r}: the object store refused access ({type(e).__name__}: "
                               f"{' '.join(str(e).split())}); {CREDENTIALS_HINT}") from None


class UrlOutputError(ValueError):
    """An output given as a URL to a tool that writes only to local folders."""


class ShardNotFoundError(FileNotFoundError):
    """A shard (or sidecar) that is not there, deleted or moved, say, while a job streams it.

    Raised in a DataLoader worker, it reaches the main process rebuilt from a message that holds
    the whole worker traceback (torch re-raises ``type(e)(text)``); the constructor keeps only this
    exception's own line of that text, so the user still reads one line naming the path.
    """

    def __init__(self, message: str):
        mark = f"{__name__}.{type(self).__qualname__}: "
        own = [line[len(mark):] for line in str(message).splitlines() if line.startswith(mark)]
        super().__init__(own[-1] if own else message)


class PipeRefusedError(ValueError):
    """A ``pipe:`` URL was given without ``allow_pipe=True``."""


def _check_pipe(url: str, allow_pipe: bool) -> None:
    if url.startswith("pipe:") and not allow_pipe:
        raise PipeRefusedError(
            f"refusing {url!r}: 'pipe:' URLs run a shell command; pass allow_pipe=True "
            "(or allow_pipe=true in the config) only for URL lists you trust"
        )


def is_remote(url: str) -> bool:
    return url.startswith(REMOTE_SCHEMES)


def is_shard_name(name: str) -> bool:
    """A data shard is ``X.tar`` with no dot in ``X``; ``X.<name>.tar`` is a sidecar."""
    return name.endswith(".tar") and "." not in name[: -len(".tar")]


def sidecar_url(shard_url: str, name: str) -> str:
    """``.../X.tar`` -> ``.../X.<name>.tar``."""
    if not shard_url.endswith(".tar"):
        raise ValueError(f"shard URL must end in .tar, got {shard_url!r}")
    if not name or "." in name or "/" in name:
        raise ValueError(f"sidecar name must be a plain word, got {name!r}")
    return f"{shard_url[: -len('.tar')]}.{name}.tar"


def has_scheme(path: str | Path) -> bool:
    """True for ``scheme://...`` (``s3://b/x``, ``file:///x``): a URL, not a local path."""
    return bool(_SCHEME.match(str(path)))


def local_output(value: str | Path, arg: str) -> Path:
    """``value`` as a local Path; a URL is a :class:`UrlOutputError` naming ``arg`` (else
    ``Path("s3://b/x")`` would quietly become a local folder named ``s3:``)."""
    if has_scheme(value):
        raise UrlOutputError(f"{arg}={str(value)!r} is a URL: this tool writes only to a local folder; "
                             "write there and upload the finished folder (e.g. aws s3 sync)")
    return Path(value)


def _backend_error(url: str, e: ImportError) -> MissingBackendError:
    return MissingBackendError(f"{url!r} needs an fsspec backend that is not installed ({e}): "
                               f"{CLOUD_EXTRA_HINT}")


def url_to_fs(url: str):
    """``(filesystem, path)`` for ``url``; a missing backend is a one-line :class:`MissingBackendError`."""
    try:
        return fsspec.core.url_to_fs(url)
    except ImportError as e:
        raise _backend_error(url, e) from None


_fs_and_path = url_to_fs


def url_exists(url: str) -> bool:
    if url.startswith("pipe:"):
        return True
    fs, path = _fs_and_path(url)
    with store_errors(url):
        return fs.exists(path)


def _list_dir(url: str) -> list[str]:
    fs, path = _fs_and_path(url)
    with store_errors(url):
        listed = fs.ls(path, detail=False)
    names = sorted(p for p in listed if is_shard_name(p.rsplit("/", 1)[-1]))
    if not names:
        raise FileNotFoundError(f"no shards (*.tar) in directory {url!r}")
    if is_remote(url):
        proto = url.split("://", 1)[0]
        return [n if "://" in n else f"{proto}://{n}" for n in names]
    return names


def _join(base: str, rel: str) -> str:
    """``base/rel``; on a store ``..`` is resolved here, as keys have no parent folders to follow."""
    if not is_remote(base):
        return f"{base}/{rel}"
    proto, path = base.split("://", 1)
    return f"{proto}://{posixpath.normpath(f'{path}/{rel}')}"


def _read_list_file(url: str) -> list[str]:
    base = url.rsplit("/", 1)[0] if "/" in url else "."
    out = []
    with open_url(url, "rb") as f:
        for line in f.read().decode("utf-8").splitlines():
            line = line.split("#", 1)[0].strip()
            if not line:
                continue
            # Relative entries are relative to the list file, so a list travels with its shards.
            if not (is_remote(line) or line.startswith(("/", "pipe:"))):
                line = _join(base, line)
            out.append(line)
    if not out:
        raise ValueError(f"URL list {url!r} names no shards")
    return out


def is_folder(url: str) -> bool:
    """True when ``url`` is a local directory or a folder (prefix with objects) on a store."""
    if is_remote(url):
        fs, path = _fs_and_path(url)
        with store_errors(url):
            return fs.isdir(path)
    return os.path.isdir(url)


def _list_identity(url: str) -> str:
    """One spelling per list file, so ``a/./x.txt`` and ``a/x.txt`` count as the same list."""
    return url if is_remote(url) else os.path.realpath(url)


def expand_urls(
    source: str | Path | Sequence, *, allow_pipe: bool = False, check_exists: bool = True,
    _lists: tuple[str, ...] = (),
) -> list[str]:
    """Expand ``source`` into a flat list of shard URLs, checking each exists.

    A URL list that names itself, directly or through other lists, is a ``ValueError`` naming
    the chain of list files.
    """
    if isinstance(source, (list, tuple)):
        urls = [u for s in source
                for u in expand_urls(s, allow_pipe=allow_pipe, check_exists=check_exists, _lists=_lists)]
        if not urls:
            raise ValueError(f"source list {source!r} is empty")
        return urls
    if not isinstance(source, (str, Path)):
        raise ValueError(f"shard source must be a path, URL or list, got {type(source).__name__}")
    source = str(source)
    _check_pipe(source, allow_pipe)
    if source.startswith("pipe:"):
        return [source]
    urls: list[str] = []
    missing: list[str] = []
    expanded = list(braceexpand.braceexpand(source))
    for url in expanded:
        _check_pipe(url, allow_pipe)
        if url.endswith(".txt"):
            ident = _list_identity(url)
            if ident in _lists:
                chain = " -> ".join(repr(u) for u in (*_lists[_lists.index(ident):], ident))
                raise ValueError(f"URL list {url!r} includes itself: {chain}")
            for u in _read_list_file(url):
                urls.extend(expand_urls(u, allow_pipe=allow_pipe, check_exists=check_exists,
                                        _lists=(*_lists, ident)))
        elif is_folder(url):
            urls.extend(_list_dir(url))
        elif check_exists and not url_exists(url):
            missing.append(url)
        else:
            urls.append(url)
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5])
        raise FileNotFoundError(f"shard not found: {shown} ({len(missing)} of {len(expanded)} missing)")
    return urls


def unique_urls(urls: Sequence[str]) -> tuple[list[str], dict[str, int]]:
    """``urls`` with each shard kept once, at its first place, and how often each repeated one was
    listed. Local paths compare by their real path (``a/./x.tar`` is ``a/x.tar``), URLs as written."""
    kept: list[str] = []
    seen: dict[str, str] = {}
    repeats: dict[str, int] = {}
    for url in urls:
        ident = url if is_remote(url) or url.startswith("pipe:") else os.path.realpath(url)
        if ident in seen:
            first = seen[ident]
            repeats[first] = repeats.get(first, 1) + 1
            continue
        seen[ident] = url
        kept.append(url)
    return kept, repeats


def open_url(url: str, mode: str = "rb", *, allow_pipe: bool = False) -> IO:
    """Open a local path, object-store URL or (when allowed) ``pipe:`` command for reading."""
    _check_pipe(url, allow_pipe)
    if url.startswith("pipe:"):
        proc = subprocess.Popen(url[len("pipe:"):], shell=True, stdout=subprocess.PIPE)
        return proc.stdout
    try:
        with store_errors(url):
            return fsspec.open(url, mode).open()
    except ImportError as e:
        raise _backend_error(url, e) from None
    except FileNotFoundError as e:
        raise ShardNotFoundError(f"shard not found: {url!r} (deleted or moved?)") from e
