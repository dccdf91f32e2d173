"""Typed settings read from TOML: dataclass fields with one-line docs, type checks, unknown-key errors.

The recipe (``toolkit.config``), each compression step (``toolkit.steps``) and the target profiles are dataclasses
built from TOML tables by :func:`build`; every field carries its doc string (``setting``), which the README's
reference and the TUI's form read. Errors name the file, the key and the nearest valid key.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import field
from typing import Any

from toolkit.errors import UserError, did_you_mean


def setting(default: Any, doc: str, **kw: Any) -> Any:
    """A dataclass field with its one-line doc string."""
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"doc": doc, **kw})
    return field(default=default, metadata={"doc": doc, **kw})


def fields_of(cls: type) -> dict[str, dataclasses.Field]:
    """The user-visible fields of a settings dataclass, by name."""
    return {f.name: f for f in dataclasses.fields(cls) if not f.metadata.get("internal")}


def type_name(tp: Any) -> str:
    if tp is type(None):
        return "none"
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is list:
        return f"a list of {type_name(typing.get_args(tp)[0])}"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            dict: "a table"}.get(tp, str(tp))


def coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; ints widen to floats. Raises UserError."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for arg in typing.get_args(tp):
            try:
                return coerce(value, arg, where)
            except UserError:
                continue
    elif origin is list:
        if isinstance(value, list):
            (item,) = typing.get_args(tp)
            return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    elif tp is dict:
        if isinstance(value, dict):
            return value
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    shown = repr(value) if not isinstance(value, str) else f'"{value}"'
    raise UserError(f"{where} = {shown}: expected {type_name(tp)}")


def build(cls: type, table: dict[str, Any], section: str, file: str,
          aliases: dict[str, dict[str, str]] | None = None) -> Any:
    """Make ``cls`` from a TOML table; unknown keys and wrong types are UserErrors naming the key.

    ``aliases``: per section, names other tools use for a key (``learning_rate`` -> ``lr``), suggested when such
    a name is written.
    """
    hints = typing.get_type_hints(cls)
    known = fields_of(cls)
    kwargs: dict[str, Any] = {}
    label = f"[{section}]" if section else "the top level"
    for key, value in table.items():
        if key not in known:
            choices = {**{k: k for k in known}, **(aliases or {}).get(section, {})}
            raise UserError(f"{file}: unknown key '{key}' in {label}{did_you_mean(key, choices)}")
        tp = hints[key]
        where = f"{file}: {section + '.' if section else ''}{key}"
        if dataclasses.is_dataclass(tp):
            if not isinstance(value, dict):
                raise UserError(f"{where}: expected a table [{key}]")
            kwargs[key] = build(tp, value, key if not section else f"{section}.{key}", file, aliases)
        else:
            kwargs[key] = coerce(value, tp, where)
    return cls(**kwargs)


def to_dict(obj: Any) -> dict[str, Any]:
    """A settings dataclass as a TOML-ready dict (internal fields left out)."""
    out: dict[str, Any] = {}
    for name in fields_of(type(obj)):
        value = getattr(obj, name)
        out[name] = to_dict(value) if dataclasses.is_dataclass(value) else value
    return out
