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


def first_line(exc: BaseException, limit: int | None = None) -> str:
    """The first line of an exception's message (its type's name when it has none), cut to ``limit``."""
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0].strip()
    return line if limit is None or len(line) <= limit else line[: limit - 1] + "…"


class UnsupportedOpError(UserError):
    """A runtime cannot run an operator of the model. Exit 2: the message names the op and the format."""

    def __init__(self, message: str, op: str | None, format: str):
        super().__init__(message)
        self.op = op
        self.format = format


# How ONNX Runtime and ExecuTorch name an op they cannot run (the op is group 1).
_OP_PATTERNS = (
    r"Could not find an implementation for (\S+?)\(\d+\)",         # ORT: no kernel for this op/type
    r"No Op registered for (\S+) with domain_version",               # ORT: unknown op in a known domain
    r"Fatal error: (\S+?)\(-?\d+\) is not a registered function/op",  # ORT: unknown domain
    r"of operator \((\S+)\) in node",                                  # ORT: type not allowed by the schema
    r"(?:Operator|op) [`'\"]?([\w.:]+)[`'\"]? (?:is )?not (?:implemented|supported)",  # torch / ExecuTorch
    r"not implemented for (?:op|operator) [`'\"]?([\w.:]+)",
    r"Missing out variants: \{'([^']+)'",                              # ExecuTorch to_executorch
    r"is not Aten Canonical.*?([\w.]+\.default)",
)


def unsupported_op(message: str) -> str | None:
    """The op a runtime's error message names, or None."""
    import re

    for pattern in _OP_PATTERNS:
        hit = re.search(pattern, message, flags=re.S)
        if hit:
            return hit.group(1)
    return None


def op_error(exc: BaseException, fmt: str, path: object) -> UnsupportedOpError | None:
    """An UnsupportedOpError for ``exc`` when its message names an op, else None."""
    op = unsupported_op(str(exc))
    if op is None:
        return None
    return UnsupportedOpError(f"{path}: {fmt} cannot run operator '{op}' ({first_line(exc)[:300]})", op, fmt)
