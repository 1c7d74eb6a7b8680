"""User YAML, read strictly: safe tags only, no aliases, no key given twice; errors are one line.

PyYAML's safe loader keeps the last of two equal keys silently (``train:`` twice merges nothing
and drops the first), and expands nested aliases: a few hundred bytes of ``*a`` lists become
gigabytes once a config walks them. A config never needs either, so both are refused, naming the
line. Every value shown in a message goes through :func:`show`, capped in length.
"""

from __future__ import annotations

import reprlib
from typing import Any

import yaml


class YAMLInputError(ValueError):
    """User YAML that cannot be read; ``refused``: valid YAML that a config may not use."""

    def __init__(self, message: str, *, refused: bool = False):
        super().__init__(message)
        self.refused = refused


def cap(text: str, limit: int = 200) -> str:
    """``text`` cut to ``limit`` characters: a huge value never ends up whole in a message."""
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


# reprlib shortens while it walks: a huge value is never formatted whole only to be cut.
_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = 160
_REPR.maxlist = _REPR.maxtuple = _REPR.maxdict = _REPR.maxset = 8
_REPR.maxlevel = 3


def show(value: Any) -> str:
    """A value's repr for an error message, bounded in length (a config value may be megabytes)."""
    return cap(_REPR.repr(value), 400)


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that a config may not use (a duplicate key, an alias)."""


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, refusing what a hand-written config never needs and a hostile one abuses:
    a key given twice in one mapping (YAML would keep the last silently) and aliases (``*name``:
    nested ones expand a few hundred bytes into gigabytes)."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            if event.anchor in self.anchors:  # an undefined one stays the composer's own error
                raise _Refused(
                    None, None, f"alias *{cap(event.anchor, 40)} refused: write the value out in full "
                    "(aliases and merge keys are not allowed in configs)", event.start_mark)
        return super().compose_node(parent, index)

    def construct_mapping(self, node, deep=False):
        if isinstance(node, yaml.MappingNode):
            first: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:
                    continue  # an unhashable key: the base class names it
                if earlier is not key_node:
                    raise _Refused(
                        None, None, f"key {show(key)} given twice (lines {earlier.start_mark.line + 1} and "
                        f"{key_node.start_mark.line + 1}); YAML would keep the last one silently",
                        key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_undefined(self, node):
        raise _Refused(None, None, f"tag {cap(node.tag, 80)!r} refused: a config holds plain values only",
                       node.start_mark)


_StrictLoader.add_constructor(None, _StrictLoader.construct_undefined)  # the base registered its own


def _yaml_problem(e: yaml.YAMLError) -> str:
    """One line for a YAML error: the line and column, what is wrong, and what it was inside."""
    problem = getattr(e, "problem", None) or str(e)
    mark, context, context_mark = (getattr(e, k, None) for k in ("problem_mark", "context", "context_mark"))
    text = f"line {mark.line + 1}, column {mark.column + 1}: {problem}" if mark is not None else problem
    if context:
        since = f" from line {context_mark.line + 1}" if context_mark is not None else ""
        text += f" ({context}{since})"
    return cap(" ".join(text.split()), 300)


def load_yaml(text: str, where: str) -> Any:
    """Parse user YAML strictly (:class:`_StrictLoader`: the safe tags only, no alias, no key twice).

    Any YAML error raises :class:`YAMLInputError`, one line naming ``where`` and the line.
    """
    try:
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as e:
        raise YAMLInputError(f"{where}: {_yaml_problem(e)}", refused=isinstance(e, _Refused)) from None
