"""Typed config dataclasses from plain mappings (a recipe, a config.json): the package's one unknown-key and
type check, so that a typo or a YAML spelling that reads as something else is never silently accepted."""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from typing import Any


def from_mapping(cls: Any, data: Any, where: str, error: type[ValueError] = ValueError) -> Any:
    """`cls(**data)` for a config dataclass, refusing keys it has no field for: the one unknown-field check of the
    package (BSRConfig, a training recipe, RFSConfig, DegradationMix), so that a typo is never silently ignored.

    Raises:
        error: naming the unknown keys and the known ones.
    """
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise error(f"{where}: unknown setting(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    hints = _field_types(cls)
    for name, value in data.items():
        if not _conforms(value, hints[name]):
            raise error(f"{where}: {name} must be {_describe(hints[name])}, got {value!r}{_hint(value)}")
    return cls(**data)


def _field_types(cls: Any) -> dict[str, Any]:
    """Each field's annotation as a type; one that names what its module imports only for type checkers (a
    circle avoided) is left unchecked (Any)."""
    import sys

    namespace = vars(sys.modules[cls.__module__])
    types_: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        try:
            # Postponed annotations are strings; this evaluates our own dataclasses' annotations, nothing read in.
            types_[f.name] = eval(f.type, namespace) if isinstance(f.type, str) else f.type
        except NameError:
            types_[f.name] = Any
    return types_


def _conforms(value: Any, kind: Any) -> bool:
    """Whether a recipe or config.json value has its field's annotated type: a bool is not a number (YAML's
    `max_steps: true`), a number is finite, a list is not a string (`eval_dirs: ../Set5` would be walked letter
    by letter). A nested section may be given as a mapping; an annotation not handled here (a Literal: each
    section names its choices itself) is not checked."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if kind is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, arg) for arg in args)
    if kind is type(None):
        return value is None
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if kind is str:
        return isinstance(value, (str, os.PathLike))
    if origin in (list, tuple):
        return isinstance(value, (list, tuple)) and all(_conforms(v, args[0]) for v in value) if args else True
    if origin is dict or kind is dict:
        return isinstance(value, dict)
    if dataclasses.is_dataclass(kind):
        return isinstance(value, (kind, dict))
    return True


def _describe(kind: Any) -> str:
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin in (list, tuple):
        return f"a list of {_describe(args[0]).removeprefix('a ').removeprefix('an ')}s" if args else "a list"
    names = {bool: "true or false", int: "an integer", float: "a finite number", str: "a string", dict: "a mapping",
             type(None): "none"}
    return names.get(kind, f"a {getattr(kind, '__name__', kind)}")


def _hint(value: Any) -> str:
    """What to write instead, for the spellings that read as something else in YAML."""
    if isinstance(value, str):
        try:
            float(value)
        except ValueError:
            return ""
        return (" (text, not a number: YAML reads 1e-3 without a decimal point as a string; write 1.0e-3, or "
                "0.001)")
    return ""
