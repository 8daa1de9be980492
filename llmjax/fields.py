"""The one checker of typed config sections: a mapping of raw values -> a frozen dataclass.

Every section of an experiment (model, data, optimizer, training, mesh) is a dataclass whose
fields carry a type hint and, in `metadata`, a one-line meaning (`help`) and optional bounds
(`ge`, `gt`, `le`, `lt`). `parse(cls, values, prefix)` rejects unknown keys, checks each value's
type against its hint, refuses NaN and infinities for every float, applies the bounds, builds
the dataclass and then calls its `check()` (cross-field rules) — and every failure is one
`UserError` that names the field as `prefix.field=value` with the allowed values.

Imports nothing of llmjax but `errors`, so model, data and config all use it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from llmjax.errors import UserError


def field(default: Any = dataclasses.MISSING, help: str = "", *, factory: Any = None,
          **bounds: float) -> Any:
    """A dataclass field with a meaning and optional bounds (ge/gt/le/lt) for `parse`."""
    meta = {"help": help, **bounds}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def describe(hint: Any) -> str:
    """A type hint in words: "one of 'a', 'b'", "int or None", ..."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(hint))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(describe(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if hint is Any:
        return "any value"
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return "a mapping"
    if origin in (list, tuple, Sequence) or hint in (list, tuple):
        return "a list"
    if isinstance(hint, type):
        return {"int": "an integer", "float": "a number", "bool": "true/false",
                "str": "a string"}.get(hint.__name__, hint.__name__)
    return str(hint).replace("typing.", "")


def type_ok(value: Any, hint: Any) -> bool:
    """`value` fits type hint `hint` (bool is not an int; an int is a float)."""
    origin = typing.get_origin(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(type_ok(value, a) for a in typing.get_args(hint))
    if origin is Literal:
        return any(type(value) is type(a) and value == a for a in typing.get_args(hint))
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, int | float) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (tuple, list) or hint in (tuple, list) or origin is Sequence:
        if not isinstance(value, tuple | list):
            return False
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return all(type_ok(v, args[0]) for v in value)
        if args and len(args) == len(value):
            return all(type_ok(v, a) for v, a in zip(value, args, strict=True))
        return not args
    if origin in (dict, Mapping) or hint in (dict, Mapping):
        return isinstance(value, Mapping) or hasattr(value, "to_dict")
    if isinstance(hint, type):
        return isinstance(value, hint)
    return True


def _non_finite(value: Any) -> bool:
    if isinstance(value, float):
        return not math.isfinite(value)
    if isinstance(value, tuple | list):
        return any(_non_finite(v) for v in value)
    return False


_BOUNDS = {"ge": (lambda v, b: v >= b, ">="), "gt": (lambda v, b: v > b, ">"),
           "le": (lambda v, b: v <= b, "<="), "lt": (lambda v, b: v < b, "<")}


def check_value(name: str, value: Any, hint: Any, meta: Mapping[str, Any] | None = None) -> Any:
    """`value` checked against `hint` and the bounds in `meta`; returns it (ints as floats for
    float fields). UserError "name=value: ..." otherwise."""
    if not type_ok(value, hint):
        raise UserError(f"{name}={value!r}: wrong type; allowed: {describe(hint)}")
    if _non_finite(value):
        raise UserError(f"{name}={value!r}: must be a finite number")
    bounds = [(k, v) for k, v in (meta or {}).items() if k in _BOUNDS]
    if bounds and isinstance(value, int | float) and not isinstance(value, bool):
        for key, bound in bounds:
            ok, sign = _BOUNDS[key]
            if not ok(value, bound):
                allowed = " and ".join(f"{_BOUNDS[k][1]} {b}" for k, b in bounds)
                raise UserError(f"{name}={value!r}: allowed values are {allowed}")
    if hint is float and isinstance(value, int):
        return float(value)
    return value


def hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def defaults(cls: type) -> dict[str, Any]:
    """Field -> default value (MISSING for a required field)."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
            out[f.name] = f.default_factory()  # type: ignore[misc]
        else:
            out[f.name] = dataclasses.MISSING
    return out


def parse(cls: type, values: Any, prefix: str) -> Any:
    """`values` (a mapping or ConfigDict) -> `cls(...)`, checked; UserError naming the field.

    `prefix` is the section's dotted name ("optimizer"; "" for the top level).
    """
    if hasattr(values, "to_dict"):
        values = values.to_dict()
    where = prefix or "the top level"
    if not isinstance(values, Mapping):
        raise UserError(f"config section {where} must be a mapping, got {type(values).__name__}")
    dot = f"{prefix}." if prefix else ""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise UserError(f"{dot}{key}: unknown config key; allowed keys in {where}: "
                            f"{', '.join(sorted(fields))}")
    type_hints = hints(cls)
    kwargs = {}
    for name, f in fields.items():
        if name not in values:
            if (f.default is dataclasses.MISSING
                    and f.default_factory is dataclasses.MISSING):  # type: ignore[misc]
                raise UserError(f"{dot}{name} is required ({describe(type_hints[name])})")
            continue
        kwargs[name] = check_value(f"{dot}{name}", values[name], type_hints[name], f.metadata)
    obj = cls(**kwargs)
    check = getattr(obj, "check", None)
    if check is not None:
        check()
    return obj


__all__ = ["check_value", "defaults", "describe", "field", "hints", "parse", "type_ok"]
