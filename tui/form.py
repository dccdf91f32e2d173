"""The new-session form's logic, without Textual: a recipe's main fields in, ``--set`` overrides out.

The form edits a recipe file without rewriting it: each changed field becomes one ``--set key=value`` (the
CLI's own mechanism), so starting a session is ``python -m toolkit run RECIPE --set ...`` and the core's own
checks (``recipe_from_dict``) validate exactly what will run. Paths in the form are relative to the current
folder (what a terminal user types); relative paths in a recipe are relative to the recipe's folder, so they
are shown converted and written back absolute (or, when saving, relative to the new file). Saving edits the
loaded file's TOML (tui.recipe_file), so its comments and layout stay.
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.config import Recipe, dumps_toml, load_recipe, recipe_from_dict, with_absolute_paths
from toolkit.errors import UserError

# The compression steps the form offers, in the order a session applies them (DESIGN.md), with their main
# settings: (key, kind, default, choices).
# Defaults are the core's (toolkit/compress/*.py); a setting equal to its default is not written.
STEP_SETTINGS: dict[str, list[tuple[str, str, Any, tuple[str, ...]]]] = {
    "distill": [("layers", "ints", [], ()), ("widths", "ints", [], ())],
    "prune": [("kind", "choice", "unstructured", ("unstructured", "structured")), ("sparsity", "float", 0.5, ())],
    "quantize": [("scheme", "choice", "int8-dynamic", ("int8-dynamic", "int8-static", "qat", "pt2e")),
                 ("max_accuracy_drop", "float", 0.01, ())],
    "fp16": [],
}
PATH_FIELDS = ("data.train", "data.validation", "data.eval", "model.source")


@dataclass
class FormState:
    """A recipe file and the values its form shows."""

    path: Path
    raw: dict[str, Any]
    recipe: Recipe
    values: dict[str, Any] = field(default_factory=dict)
    steps: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    custom_steps: bool = False
    text: str = ""  # the file as loaded: saving edits this text ("" = a new recipe, written plainly)


def load_form(path: str | Path) -> FormState:
    """Read a recipe and the form's values. Raises UserError on a recipe the core refuses."""
    p = Path(path)
    recipe = load_recipe(p)
    text = p.read_text(encoding="utf-8")
    raw = tomllib.loads(text)
    base = recipe.base_dir()
    values = {
        "name": recipe.name, "task": recipe.task,
        "model.source": show_path(recipe.model.source, base),
        "data.train": show_path(recipe.data.train, base),
        "data.validation": show_path(recipe.data.validation, base),
        "data.eval": show_path(recipe.data.eval, base),
        "train.epochs": recipe.train.epochs, "train.precision": recipe.train.precision,
        "export.formats": list(recipe.export.formats), "eval.targets": list(recipe.eval.targets),
    }
    steps, custom = split_steps(recipe.compress)
    return FormState(path=p, raw=raw, recipe=recipe, values=values, steps=steps, custom_steps=custom, text=text)


def split_steps(compress: list[dict[str, Any]]) -> tuple[dict[str, dict[str, Any] | None], bool]:
    """The recipe's [[compress]] steps as one optional step per method, or (all None, True) when they do not
    fit that shape (a method twice, another order, a `from` other than the previous step, an unknown method).

    A `from` that names the previous step (or base, for the first) is what the core assumes anyway: it is
    dropped, so switching a step off leaves the next one taking the step before."""
    order = list(STEP_SETTINGS)
    steps: dict[str, dict[str, Any] | None] = {m: None for m in order}
    last, previous = -1, "base"
    for table in compress:
        m = table.get("method")
        if m not in steps or steps[m] is not None or order.index(m) < last \
                or table.get("from", previous) != previous:
            return {k: None for k in order}, True
        last = order.index(m)
        steps[m] = {k: v for k, v in table.items() if k != "from"}
        previous = table.get("name") or m
    return steps, False


def build_steps(steps: dict[str, dict[str, Any] | None]) -> list[dict[str, Any]]:
    """The enabled steps, in session order, as [[compress]] tables."""
    return [dict(t, method=m) for m in STEP_SETTINGS if (t := steps.get(m)) is not None]


def _as_written(compress: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The file's steps without the redundant `from`s split_steps dropped (to compare like with like)."""
    steps, custom = split_steps(compress)
    return build_steps(steps) if not custom else compress


def show_path(value: str | list[str], base: Path) -> str:
    """A recipe path (relative to ``base``) as the form shows it: relative to the cwd when inside it."""
    if isinstance(value, list):
        return ", ".join(show_path(v, base) for v in value)
    if not value or value.startswith("builtin:"):
        return value
    p = Path(value).expanduser()
    p = p if p.is_absolute() else (base / p)
    p = Path(os.path.normpath(p))
    try:
        return str(p.relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def entered_path(text: str) -> str | list[str]:
    """What the user typed (cwd-relative) as a recipe value: absolute paths; 'a, b' is a two-file pair."""
    text = text.strip()
    if "," in text:
        return [entered_path(part) for part in text.split(",")]  # type: ignore[misc]
    if not text or text.startswith("builtin:"):
        return text
    return str(Path(os.path.normpath(Path.cwd() / Path(text).expanduser())))


def toml_literal(value: Any) -> str:
    """A value as the TOML literal ``--set`` reads (strings always quoted)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_literal(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{json.dumps(k) if not k.replace('_', '').isalnum() else k} = {toml_literal(v)}"
                                for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {value!r} as TOML")


def parse_number(text: str, key: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise UserError(f"{key} = {text!r}: expected a number") from None


def parse_ints(text: str, key: str) -> list[int]:
    try:
        return [int(x) for x in text.replace(",", " ").split()]
    except ValueError:
        raise UserError(f"{key} = {text!r}: expected whole numbers, e.g. 0, 2") from None


def overrides(state: FormState, values: dict[str, Any], steps: dict[str, dict[str, Any] | None],
              extra: str = "") -> list[str]:
    """``--set`` items for what differs from the recipe file, then the extra ``key=value`` words typed."""
    out: list[str] = []
    for key, value in values.items():
        before = state.values.get(key)
        if key in PATH_FIELDS:
            if str(value).strip() == str(before).strip():
                continue
            value = entered_path(str(value))
        elif key == "train.epochs":
            value = parse_number(str(value), key)
            if value == before:
                continue
        elif key == "eval.targets":
            if set(value) == set(before or []):
                continue  # the same targets, listed in another order
            value = [t for t in before or [] if t in value] + [t for t in value if t not in (before or [])]
        elif value == before:
            continue
        out.append(f"{key}={toml_literal(value)}")
    if not state.custom_steps and build_steps(steps) != _as_written(state.recipe.compress):
        out.append(f"compress={toml_literal(build_steps(steps))}")
    out += split_extra(extra)
    return out


def split_extra(text: str) -> list[str]:
    """'a.b=1 c=["x", "y"]' -> ['a.b=1', 'c=["x", "y"]']: a new item starts only where a ``key=`` does, so
    values may hold spaces (TOML lists) and keep their quotes."""
    import re

    return [part.strip() for part in re.split(r"\s+(?=[A-Za-z_][\w.-]*=)", text.strip()) if part.strip()]


def check(state: FormState, items: list[str]) -> Recipe:
    """The core's own checks on the recipe file plus ``items``; raises the core's UserError."""
    recipe = recipe_from_dict(state.raw, str(state.path), items)
    recipe.source_path = str(state.path.resolve())
    return recipe


class WouldOverwrite(UserError):
    """The file to save exists and overwriting it was not confirmed."""


def check_destination(dest: str | Path) -> Path:
    """``dest`` as a Path, if a recipe may be saved there (a .toml file that is not a packaged recipe).

    Raises:
        UserError: it may not.
    """
    from toolkit.resources import packaged_recipes

    dest = Path(dest)
    if dest.suffix != ".toml":
        raise UserError(f"{dest}: save the recipe as a .toml file")
    if dest.resolve() in {p.resolve() for p in packaged_recipes().values()}:
        raise UserError(f"{dest}: that is a packaged recipe; save under another file name")
    return dest


def save(state: FormState, items: list[str], dest: str | Path, overwrite: bool = False) -> Path:
    """Write the recipe with ``items`` applied at ``dest``; paths stay valid there.

    A recipe loaded from a file is written as that file with only the keys ``items`` set changed (comments
    and layout kept); one without a file is written whole. Nothing is written unless the core accepts both
    the recipe and the text about to be written.

    Raises:
        WouldOverwrite: ``dest`` exists and ``overwrite`` is False.
        UserError: the core refuses the recipe, or ``dest`` is a packaged recipe or not a .toml file.
    """
    from toolkit.rundir import atomic_write_text
    from tui.recipe_file import edited

    dest = check_destination(dest)
    recipe = check(state, items)
    if dest.exists() and not overwrite:
        raise WouldOverwrite(f"{dest} exists; confirm to overwrite it")
    folder = dest.resolve().parent
    if state.text:
        text = edited(state.text, items, recipe, recipe.base_dir(), folder)
    else:
        plain = with_absolute_paths(recipe)
        for key in PATH_FIELDS:
            section, name = key.split(".")
            obj = getattr(plain, section)
            setattr(obj, name, _relative_to(getattr(obj, name), plain, folder))
        text = dumps_toml(plain)
    written = recipe_from_dict(tomllib.loads(text), str(dest))
    written.source_path = str(dest.resolve())
    if _comparable(written) != _comparable(recipe):
        # The edit must mean what the core checked; a mismatch is a bug here, and writing would hide it.
        raise UserError(f"{dest}: not saved: the edited file would not read back as the checked recipe")
    dest.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest, text)  # a crash mid-write never leaves a torn recipe where a good one was
    return dest


def _comparable(recipe: Recipe) -> dict[str, Any]:
    """The recipe as a dict with its data/model paths absolute and normalised (written files name them
    relative to another folder)."""
    from toolkit.schema import to_dict

    d = to_dict(with_absolute_paths(recipe))
    for key in PATH_FIELDS:
        section, name = key.split(".")
        value = d[section][name]
        d[section][name] = [os.path.normpath(v) for v in value] if isinstance(value, list) \
            else os.path.normpath(value) if value and not value.startswith("builtin:") else value
    return d


def _relative_to(value: str | list[str], recipe: Recipe, folder: Path) -> str | list[str]:
    if isinstance(value, list):
        return [_relative_to(v, recipe, folder) for v in value]  # type: ignore[misc]
    if not value or value.startswith("builtin:"):
        return value
    return os.path.relpath(recipe.resolve_path(value), folder)
