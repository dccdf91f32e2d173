"""``python -m toolkit run [RECIPE]``: the whole session into one run directory (no recipe: the demo).

Today the session runs the stages that exist: training. Rerunning the same command continues an
interrupted run and skips a finished stage whose settings are unchanged.
"""
from __future__ import annotations

import argparse

from toolkit.cli.common import add_recipe_arguments, resolve_recipe, run_dir_for

HELP = "run a recipe's whole session (default: the packaged demo); rerun to continue"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p, optional=True)


def run(args: argparse.Namespace) -> int:
    from toolkit.console import ConsoleDisplay
    from toolkit.events import Emitter
    from toolkit.rundir import RunDir, RunLock
    from toolkit.train import checkpoint as ckpt_io
    from toolkit.train.stage import has_finished, prepare_run_dir, run_train

    recipe = resolve_recipe(args)
    run = RunDir(run_dir_for(args, recipe))
    prepare_run_dir(recipe, run, args.force)
    with RunLock(run, "run"), ConsoleDisplay(args.quiet) as display:
        emitter = Emitter(run.events, recipe.name, [display])
        emit = emitter.for_stage("train")
        try:
            if has_finished(run, recipe):
                emit("skip", reason="train/final is up to date with the recipe")
            else:
                # A run whose recipe changed starts training over; an interrupted one continues.
                resume = bool(ckpt_io.list_checkpoints(run.checkpoints)) and _same_training(run, recipe)
                if not resume and ckpt_io.list_checkpoints(run.checkpoints):
                    emit.log("the recipe's training settings changed: training starts over", "warning")
                    import shutil

                    shutil.rmtree(run.checkpoints)
                run_train(recipe, run, emit, resume=resume)
        except Exception as e:
            if getattr(e, "exit_code", 0) != 130:
                emit("error", message=str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        finally:
            emitter.close()
    print(f"run directory: {run.path}")
    print(f"model: {run.final}  (baseline variant: {run.variant('base') / 'model'})")
    return 0


def _same_training(run, recipe) -> bool:
    from toolkit.rundir import load_manifest
    from toolkit.train.stage import train_config_hash

    return load_manifest(run).get("train_config_hash") in (None, train_config_hash(recipe))
