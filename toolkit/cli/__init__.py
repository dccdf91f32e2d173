"""Subcommands of ``python -m toolkit``: one module each, listed in COMMANDS (the one registry).

A command module defines ``HELP`` (one line), ``add_arguments(parser)`` and ``run(args) -> int``. It
imports heavy libraries inside ``run`` so ``--help`` stays fast. Commands whose stage is not built yet
are absent, not stubs.
"""
from __future__ import annotations

COMMANDS: list[str] = ["run", "train", "compress", "export", "score", "targets", "bench", "eval", "report", "compare", "serve", "generate", "tune", "tui"]
