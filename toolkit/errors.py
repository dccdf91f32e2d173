"""Errors that the command line turns into exit codes (DESIGN.md: 2 user error, 3 check failed)."""
from __future__ import annotations


class ToolkitError(Exception):
    """Base of the errors the command line reports in one line, without a traceback."""

    exit_code = 1


class UserError(ToolkitError):
    """Bad input: a recipe, data file, model directory or argument the user can fix. Exit 2.

    The message names the file/key and what to do, in one line.
    """

    exit_code = 2


class CheckFailed(ToolkitError):
    """A verification failed (export mismatch, changed artifact). Exit 3."""

    exit_code = 3


class Interrupted(ToolkitError):
    """The work was stopped by SIGINT/SIGTERM after saving a checkpoint. Exit 130."""

    exit_code = 130


def nearest(word: str, choices: list[str] | dict[str, str]) -> str | None:
    """The closest valid name to ``word``, or None. A dict maps aliases to the name they stand for."""
    import difflib

    table = dict(choices) if isinstance(choices, dict) else {c: c for c in choices}
    hits = difflib.get_close_matches(word.lower(), list(table), n=1, cutoff=0.6)
    return table[hits[0]] if hits else None


def did_you_mean(word: str, choices: list[str] | dict[str, str]) -> str:
    """'; did you mean 'x'?' or, with no close match, the list of valid names."""
    hit = nearest(word, choices)
    if hit is not None:
        return f"; did you mean '{hit}'?"
    names = sorted(set(choices.values()) if isinstance(choices, dict) else choices)
    return "; valid: " + ", ".join(names)
