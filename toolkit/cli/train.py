"""``python -m toolkit train RECIPE``: the training stage alone."""
from __future__ import annotations

import argparse

from toolkit.cli.common import add_recipe_arguments, resolve_recipe, run_dir_for

HELP = "train a model from a recipe (checkpoints, resume after a crash with --resume)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")


def run(args: argparse.Namespace) -> int:
    from toolkit.console import ConsoleDisplay
    from toolkit.events import Emitter
    from toolkit.rundir import RunDir, RunLock
    from toolkit.train.stage import prepare_run_dir, run_train

    recipe = resolve_recipe(args)
    run = RunDir(run_dir_for(args, recipe))
    if args.resume and args.force:
        from toolkit.errors import UserError

        raise UserError("--resume and --force contradict each other: --force starts over")
    prepare_run_dir(recipe, run, args.force)
    with RunLock(run, "train"), ConsoleDisplay(args.quiet) as display:
        emitter = Emitter(run.events, recipe.name, [display])
        emit = emitter.for_stage("train")
        try:
            result = run_train(recipe, run, emit, resume=args.resume)
        except Exception as e:
            if not getattr(e, "exit_code", 0) == 130:
                emit("error", message=str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        finally:
            emitter.close()
    val = result.validation if result else {}
    shown = "  ".join(f"{k} {v:.4f}" for k, v in val.items())
    print(f"model: {run.final}" + (f"  (validation: {shown})" if shown else ""))
    return 0
