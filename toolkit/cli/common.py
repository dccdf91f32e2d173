"""Arguments and helpers shared by the commands that work on a recipe and a run directory."""
from __future__ import annotations

import argparse
import contextlib
from pathlib import Path
from typing import Iterator

from toolkit.config import Recipe, load_recipe
from toolkit.events import StageEmitter
from toolkit.resources import demo_recipe
from toolkit.rundir import RunDir


def add_recipe_arguments(p: argparse.ArgumentParser, optional: bool = False, force: bool = True,
                         example: str = "train.lr=3e-4") -> None:
    """RECIPE, --out, --set (``example`` in its help), --force (when the command can start over) and --quiet."""
    if optional:
        p.add_argument("recipe", nargs="?", help="recipe TOML file (default: the packaged demo)")
    else:
        p.add_argument("recipe", help="recipe TOML file" + ("" if force else " (the one the run was made with)"))
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help=f"override a recipe key, e.g. --set {example} (repeatable)")
    if force:
        p.add_argument("--force", action="store_true", help="start over: clear the run directory first")
    p.add_argument("--quiet", action="store_true", help="print only the result")


def resolve_recipe(args: argparse.Namespace) -> Recipe:
    path = args.recipe or str(demo_recipe())
    return load_recipe(path, args.overrides)


def run_dir_for(args: argparse.Namespace, recipe: Recipe) -> Path:
    return Path(args.out) if args.out else Path("runs") / recipe.name


def existing_run(args: argparse.Namespace, recipe: Recipe) -> RunDir:
    """The run directory a stage command works on: it must exist and belong to this recipe (UserError if not)."""
    from toolkit.errors import UserError

    run = RunDir(run_dir_for(args, recipe))
    if not run.path.is_dir():
        raise UserError(f"{run.path}: no such run directory; train first (python -m toolkit train {args.recipe}) "
                        f"or pass --out RUN_DIR")
    run.check_owner(recipe.name, recipe.task, force=False)
    return run


@contextlib.contextmanager
def stage_events(run: RunDir, recipe: Recipe, stage: str, quiet: bool) -> Iterator[StageEmitter]:
    """One stage run from the command line: the run lock, the console display and events.jsonl; a failure leaves
    an "error" event (an interruption has its own)."""
    from toolkit.console import ConsoleDisplay
    from toolkit.events import Emitter
    from toolkit.rundir import RunLock

    with RunLock(run, stage), ConsoleDisplay(quiet) as display:
        emitter = Emitter(run.events, recipe.name, [display])
        emit = emitter.for_stage(stage)
        try:
            yield emit
        except Exception as e:
            if getattr(e, "exit_code", 0) != 130:
                emit("error", message=str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        finally:
            emitter.close()
