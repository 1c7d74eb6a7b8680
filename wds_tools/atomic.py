"""Write-then-rename helpers: nothing half-written is ever visible under a final name."""

from __future__ import annotations

import contextlib
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import IO


def temp_path_for(path: str | Path) -> Path:
    """A unique temporary sibling of ``path`` (same directory, so ``os.replace`` is atomic)."""
    path = Path(path)
    return path.with_name(f"{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "wb") -> Iterator[IO]:
    """Open a temp file; on clean exit fsync and rename it to ``path``; on any error (the close
    included) delete it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temp_path_for(path)
    f = open(tmp, mode)
    try:
        yield f
        f.flush()
        os.fsync(f.fileno())
        f.close()
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):  # closing flushes: on a full disk that raises again
            f.close()
        tmp.unlink(missing_ok=True)
        raise


def write_json(path: str | Path, obj: object) -> Path:
    """Atomically write ``obj`` as indented, key-sorted JSON."""
    with atomic_open(path, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.write("\n")
    return Path(path)
