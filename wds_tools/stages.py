"""Curried pipeline stages, in the style of webdataset's filters.

A stage is a plain generator function ``f(src, *args, **kwargs)``; ``stage(f)(*args, **kwargs)``
binds the arguments and returns a picklable callable that takes ``src``. The result slots into
``webdataset.DataPipeline`` and works just as well on a plain list, which keeps stages testable
without webdataset (and without importing torch, which webdataset pulls in).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator
from typing import Any


class BoundStage:
    """``fn`` with its arguments bound; picklable when ``fn`` is a module-level function."""

    def __init__(self, fn: Callable[..., Iterator], args: tuple, kwargs: dict[str, Any]):
        self.fn, self.args, self.kwargs = fn, args, kwargs

    def __call__(self, src: Iterable) -> Iterator:
        return self.fn(src, *self.args, **self.kwargs)

    def __repr__(self) -> str:
        return f"{self.fn.__name__}(*{self.args!r}, **{self.kwargs!r})"


def stage(fn: Callable[..., Iterator]) -> Callable[..., BoundStage]:
    """Curried wrapper: ``stage(f)(*a, **kw)(src) == f(src, *a, **kw)``."""

    @functools.wraps(fn)
    def bind(*args: Any, **kwargs: Any) -> BoundStage:
        return BoundStage(fn, args, kwargs)

    return bind
