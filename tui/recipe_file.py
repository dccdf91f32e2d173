"""Saving the form as a recipe file by editing the TOML it was loaded from (tomlkit), not re-serialising it.

A recipe's comments say why its values are what they are; rewriting the file from a dict loses them and
reorders everything. So only the keys the form's ``--set`` items name are changed, in place, each to the value
the core validated (read back from the checked ``Recipe``). Relative data/model paths are relative to the
recipe's folder: when the file is saved into another folder they are rewritten to name the same files.
No Textual here.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import tomlkit
from tomlkit.items import AoT, InlineTable, Table

from toolkit.config import Recipe, parse_override
from toolkit.schema import to_dict

PATH_KEYS = {("data", "train"), ("data", "validation"), ("data", "eval"), ("model", "source")}


def edited(text: str, items: list[str], recipe: Recipe, source_dir: Path, dest_dir: Path) -> str:
    """``text`` (the loaded recipe) with each key an item sets changed to its value in ``recipe``.

    Args:
        items: the ``--set key=value`` items the form made; only their keys change.
        recipe: the recipe the core built from the file and ``items`` (the values written come from it).
        source_dir: the folder the loaded file's relative paths are relative to.
        dest_dir: the folder of the file being written.
    """
    doc = tomlkit.parse(text)
    resolved = to_dict(recipe)
    changed: set[tuple[str, ...]] = set()
    for item in items:
        path, _ = parse_override(item)
        key = tuple(path)
        if key in changed:
            continue  # a key set twice (the form, then the extra field): the recipe holds the last value
        changed.add(key)
        value = _lookup(resolved, path)
        if key in PATH_KEYS:
            value = _relative(value, recipe.base_dir(), dest_dir)
        if key == ("compress",):
            _set_steps(doc, value)
        else:
            _set(doc, path, value)
    if source_dir.resolve() != dest_dir.resolve():
        _move_paths(doc, changed, source_dir, dest_dir)
    return tomlkit.dumps(doc)


def _lookup(resolved: dict[str, Any], path: list[str]) -> Any:
    node: Any = resolved
    for part in path:
        node = node[part]
    return node


def _set(doc: Any, path: list[str], value: Any) -> None:
    """Set ``path`` to ``value``, creating missing tables; the line keeps its comment."""
    node = doc
    for part in path[:-1]:
        if part not in node:
            node[part] = tomlkit.table()
        node = node[part]
    key = path[-1]
    old = node.get(key)
    if isinstance(value, float) and value.is_integer() and isinstance(old, int) and not isinstance(old, bool):
        value = int(value)  # the core reads an int for a float field; keep the file's "epochs = 8" style
    node[key] = value


def _set_steps(doc: Any, steps: list[dict[str, Any]]) -> None:
    """The [[compress]] tables become ``steps``: a step the file had (same method; the form allows one per
    method) is edited in place with its comments; a step switched off goes; a new one is added in order."""
    if not steps:
        if "compress" in doc:
            del doc["compress"]
        return
    aot = doc.get("compress")
    if not isinstance(aot, AoT):
        doc["compress"] = steps  # absent, or written as an inline array: tomlkit lays out a new one
        return
    wanted = [s.get("method") for s in steps]
    for i in reversed(range(len(aot))):
        if aot[i].get("method") not in wanted:
            del aot[i]
    for i, step in enumerate(steps):
        if i < len(aot) and aot[i].get("method") == step.get("method"):
            table = aot[i]
            for key in [k for k in table if k not in step]:
                del table[key]  # e.g. a `from` naming a step that was switched off
            for key, value in step.items():
                if table.get(key) != value:
                    table[key] = value
        else:
            table = tomlkit.table()
            for key, value in step.items():
                table[key] = value
            table.add(tomlkit.nl())  # a blank line before the next table, as the file's own have
            aot.insert(i, table)


def _relative(value: Any, base: Path, folder: Path) -> Any:
    """A path value (or a [source, target] pair) relative to ``folder``; builtin: names and "" stay."""
    if isinstance(value, list):
        return [_relative(v, base, folder) for v in value]
    if not isinstance(value, str) or not value or value.startswith("builtin:"):
        return value
    p = Path(value).expanduser()
    return os.path.relpath(p if p.is_absolute() else base / p, folder)


def _move_paths(doc: Any, changed: set[tuple[str, ...]], source_dir: Path, dest_dir: Path) -> None:
    """Relative paths the form did not change, rewritten for the new folder."""
    for section, key in PATH_KEYS:
        table = doc.get(section)
        if (section, key) in changed or not isinstance(table, (Table, InlineTable)) or key not in table:
            continue
        value = table[key]
        plain = value.unwrap() if hasattr(value, "unwrap") else value
        if _is_relative(plain):
            table[key] = _relative(plain, source_dir, dest_dir)


def _is_relative(value: Any) -> bool:
    if isinstance(value, list):
        return any(_is_relative(v) for v in value)
    return isinstance(value, str) and bool(value) and not value.startswith("builtin:") \
        and not Path(value).expanduser().is_absolute()
