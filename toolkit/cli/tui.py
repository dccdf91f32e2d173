"""``python -m toolkit tui [RUN_DIR]``: the terminal UI (Textual, imported here only: the core never needs it)."""
from __future__ import annotations

import argparse

HELP = "the terminal UI: set up, run, watch and compare sessions (also `python -m tui`)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", nargs="?", metavar="RUN_DIR",
                   help="a run directory to open, or a folder of run directories to list (default: runs/)")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from toolkit.errors import UserError

    if args.path and not Path(args.path).is_dir():
        what = "is a file, not a folder" if Path(args.path).exists() else "does not exist"
        raise UserError(f"{args.path}: {what}; give a run directory (e.g. runs/demo) or a folder of them")
    try:
        from tui.app import ToolkitApp
    except ImportError as e:
        raise UserError(f"the terminal UI needs textual and textual-plotext ({e.name} is missing): "
                        "pip install 'edge-toolkit'") from None
    app = ToolkitApp(args.path)
    app.run()
    # Sessions started from the UI run on in their own process sessions: say where to find them.
    for run_dir, child in app.children_by_run.items():
        if child.alive:
            print(f"still running: {run_dir} (pid {child.pid}); watch it with: python -m toolkit tui {run_dir}")
    return 0
