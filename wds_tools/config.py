"""Typed configs: one dataclass tree per stage, loaded from YAML with dotted command-line overrides.

Every value is checked against the dataclass field types before any work starts: an unknown key
or a wrong type raises :class:`ConfigError`, naming the key and the valid choices; a float field
must be finite (NaN and inf are refused, naming the key). A dataclass may define
``validate(self)`` for range checks (it runs after loading) and a classmethod
``check_keys(data)`` that rejects keys of older configs, saying what to write instead.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import errno
import logging
import math
import os
import sys
import types
import typing
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union

import yaml

from wds_tools.atomic import atomic_open
from wds_tools.user_yaml import YAMLInputError, cap, load_yaml, show

T = TypeVar("T")
log = logging.getLogger(__name__)
# What a user can fix (a bad value, key or path); anything else is a bug and keeps its traceback.
USER_ERRORS = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError)


class ConfigError(ValueError):
    """A config file or override does not fit the config's dataclass tree."""


def _type_name(tp) -> str:
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _coerce(value: Any, tp, where: str):
    """Check (and lightly coerce) ``value`` against type ``tp``; raise ConfigError on mismatch."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in (a for a in args if a is not type(None)):
            try:
                return _coerce(value, arg, where)
            except ConfigError as e:
                errors.append(str(e))
        if len(errors) == 1:  # ``X | None``: X's own message says more (e.g. "must be finite")
            raise ConfigError(errors[0])
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {show(value)}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{where}: {show(value)} is not one of the valid choices {list(args)}")
        return value
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if isinstance(value, str):
            value = [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {show(value)}")
        inner = args[0] if args else Any
        items = [_coerce(v, inner, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {show(value)}")
        vt = args[1] if len(args) == 2 else Any
        return {str(k): _coerce(v, vt, f"{where}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected bool (true/false), got {show(value)}")
    if tp is float:
        return _finite_float(value, where)
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected int, got {show(value)}")
    if tp is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
        raise ConfigError(f"{where}: expected str, got {show(value)}")
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {show(value)}")


def _finite_float(value: Any, where: str) -> float:
    """A float field's value; NaN and infinities are refused: every comparison against NaN is
    False, so a NaN bound would pass any range check and silently change every decision."""
    number = None
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        number = float(value)
    elif isinstance(value, str):
        # YAML 1.1 reads "1e-4" (no dot) as a string; accept any numeral Python accepts.
        try:
            number = float(value)
        except ValueError:
            pass
    if number is None:
        raise ConfigError(f"{where}: expected float, got {show(value)}")
    if not math.isfinite(number):
        raise ConfigError(f"{where}: must be a finite number, got {show(value)}")
    return number


def _build(cls, data: Any, where: str = ""):
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping for {cls.__name__}, got {show(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    if hasattr(cls, "check_keys"):  # keys of older configs, rejected with what to write instead
        try:
            cls.check_keys(data)
        except ValueError as e:
            raise ConfigError(f"{where or cls.__name__}: {e}") from e
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown config key {show(key)}; valid keys here: {sorted(fields)}")
    kwargs = {
        name: _coerce(value, hints[name], f"{where}.{name}" if where else name) for name, value in data.items()
    }
    obj = cls(**kwargs)
    if hasattr(obj, "validate"):
        try:
            obj.validate()
        except ValueError as e:
            raise ConfigError(f"{where or cls.__name__}: {e}") from e
    return obj


def _set_dotted(data: dict, dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = data
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {show(dotted)}: {show(p)} is not a section")
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"a.b=3"`` -> ``("a.b", 3)``; the value is parsed as a YAML scalar or list."""
    if "=" not in text:
        raise ConfigError(f"override {show(text)} must look like key.sub=value")
    key, raw = text.split("=", 1)
    if not raw.strip():
        return key.strip(), ""
    try:
        value = load_yaml(raw, f"override {show(key.strip())}")
    except YAMLInputError as e:
        if e.refused:
            raise ConfigError(str(e)) from None
        value = raw  # not YAML (a glob, a path with odd characters): the text itself
    return key.strip(), value


def load_config(
    cls: type[T],
    path: str | Path | None = None,
    overrides: Sequence[str] = (),
    *,
    values: dict[str, Any] | None = None,
) -> T:
    """Load ``cls`` from a YAML file (or defaults), apply ``values`` (dotted key -> value) and then
    ``key.sub=value`` overrides, and check the result."""
    data: dict = {}
    if path is not None:
        path = Path(path)
        if not path.exists():
            raise ConfigError(f"config file not found: {str(path)!r}")
        try:
            data = load_yaml(_read_text(path), f"config file {str(path)!r}") or {}
        except YAMLInputError as e:
            raise ConfigError(str(e)) from None
        if not isinstance(data, dict):
            raise ConfigError(f"config file {str(path)!r} must hold a mapping at top level")
    for key, value in (values or {}).items():
        _set_dotted(data, key, value)
    for text in overrides:
        _set_dotted(data, *parse_override(text))
    return _build(cls, data)


def _read_text(path: Path) -> str:
    """A config file's text; a byte-order mark is dropped, undecodable bytes are a ConfigError."""
    try:
        return path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text (byte {e.start})") from None
    except IsADirectoryError:
        raise ConfigError(f"config file {str(path)!r} is a folder") from None


def config_to_dict(cfg) -> dict:
    """Plain-dict form of a config tree (tuples become lists)."""
    return _plain(dataclasses.asdict(cfg))


_DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def save_config(cfg, path: str | Path) -> Path:
    """Write the resolved config as YAML (atomically), beside the outputs it produced."""
    with atomic_open(path, "w") as f:
        # libyaml's emitter when present: the pure-Python one takes ~50 ms for a builder config
        yaml.dump(config_to_dict(cfg), f, Dumper=_DUMPER, sort_keys=False)
    return Path(path)


def parse_cli(
    cls: type[T],
    argv: Sequence[str] | None = None,
    *,
    prog: str,
    description: str,
    flags: dict[str, str] | None = None,
    default_config: str | None = None,
) -> T:
    """Parse ``[--config FILE] [--flag VALUE ...] [key.sub=value ...]`` into a checked ``cls``.

    Precedence, lowest first: dataclass defaults, the config file, plain flags, dotted overrides.
    ``--print-config`` prints the resolved config and exits.
    """
    flags = flags or {}
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--config", default=default_config, help="YAML config file")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    for flag, key in flags.items():
        dest = key.replace(".", "__")
        if _field_type(cls, key) is bool:
            # A bool field's flag stands alone: "--overwrite" means overwrite=true.
            parser.add_argument(flag, dest=dest, action="append_const", const="true", help=f"sets {key}=true")
        else:
            parser.add_argument(flag, dest=dest, action="append", help=f"sets {key}")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4")
    args = parser.parse_args(argv)
    values = {}
    for key in flags.values():
        given = getattr(args, key.replace(".", "__"))
        if given:
            values[key] = _flag_value(cls, key, given)
    try:
        cfg = load_config(cls, args.config, args.overrides, values=values)
    except ConfigError as e:
        parser.exit(2, f"{prog}: config error: {e}\n")
    if args.print_config:
        yaml.safe_dump(config_to_dict(cfg), sys.stdout, sort_keys=False)
        parser.exit(0)
    return cfg


def _field_type(cls, dotted: str):
    tp = cls
    for part in dotted.split("."):
        if not dataclasses.is_dataclass(tp):
            return None
        tp = typing.get_type_hints(tp).get(part)
    return tp


def _flag_value(cls, key: str, given: list[str]):
    """A repeated or comma-separated flag fills a list field; otherwise the last value wins."""
    tp = _field_type(cls, key)
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        origin = next((typing.get_origin(a) for a in typing.get_args(tp) if a is not type(None)), None)
    if origin in (list, tuple):
        return [v.strip() for raw in given for v in raw.split(",") if v.strip()]
    if tp is str or tp == (str | None):
        return given[-1]
    return parse_override(f"{key}={given[-1]}")[1]


def prog_name(module: str) -> str:
    """How the user started the job: the console script's name, else ``python -m <module>``."""
    name = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return name if name and not name.endswith(".py") and name != "-c" else f"python -m {module}"


# OS errors a user fixes by choosing another path or freeing space: one line naming the path.
_PATH_ERRNOS = {errno.EACCES: "permission denied", errno.EPERM: "operation not permitted",
                errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
                errno.EDQUOT: "disk quota exceeded"}


def path_error(e: BaseException) -> OSError | None:
    """The permission, read-only or disk-full OSError behind ``e`` (``e`` itself or an explicit
    ``raise ... from`` cause), else None."""
    seen: set[int] = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno in _PATH_ERRNOS:
            return e
        e = e.__cause__
    return None


def path_error_message(e: OSError) -> str:
    """``'/out/x.tar': read-only file system`` (both paths of a rename); for an error that names no
    file (a failed ``write()``), the folders :func:`writing_under` gave."""
    reason = _PATH_ERRNOS.get(e.errno, e.strerror or type(e).__name__)
    names = [repr(str(n)) for n in (e.filename, e.filename2) if n is not None]
    if names:
        return f"{' -> '.join(names)}: {reason}"
    where = getattr(e, "writing_under", None)
    if where:
        return f"{reason} while writing under {' or '.join(repr(str(p)) for p in where)}"
    return f"{reason} (the system named no file)"


@contextlib.contextmanager
def writing_under(*folders: str | Path) -> Iterator[None]:
    """Around a job's writes: a permission, read-only or disk-full error that names no file (a
    ``write()`` or ``close()`` on a full disk) is told the ``folders`` it was writing under, so
    :func:`run_main`'s one line still names a path."""
    try:
        yield
    except Exception as e:
        err = path_error(e)
        if err is not None and err.filename is None and not getattr(err, "writing_under", None):
            err.writing_under = tuple(dict.fromkeys(str(f) for f in folders if f))
        raise


def _names_the_path(e: BaseException, os_error: OSError) -> bool:
    """A user error raised from ``os_error`` whose own words already name its path (Stage 2's
    ``cannot write PATH: ... (train.output=...)``) is kept: it says more than the bare OSError."""
    return e is not os_error and isinstance(e, USER_ERRORS) and os_error.filename is not None \
        and str(os_error.filename) in str(e)


def run_main(fn: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None, *,
             prog: str) -> int:
    """Run an entry point's body: a user error (:data:`USER_ERRORS`, config errors included) prints
    one line ``prog: error: ...`` and returns 2; so does a permission, read-only or disk-full
    error, naming the path (:func:`path_error`); any other exception propagates with its traceback.

    The traceback of a user error is still logged at DEBUG level.
    """
    try:
        return int(fn(argv) or 0)
    except Exception as e:
        os_error = path_error(e)
        if os_error is not None and not _names_the_path(e, os_error):
            message = path_error_message(os_error)
        elif isinstance(e, USER_ERRORS):
            message = str(e) or type(e).__name__
        else:
            raise
        log.debug("%s failed", prog, exc_info=True)
        message = " ".join(message.split())  # one line, whatever the message held
        print(f"{prog}: error: {cap(message, 2000)}", file=sys.stderr)
        return 2
