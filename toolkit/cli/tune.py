"""``python -m toolkit tune RECIPE --target NAME``: search compression chains for the recipe's trained model and
write, per target, the Pareto front and the winning chain as a recipe (``tune/best-<target>.toml``).

Rerunning the same command (after Ctrl-C, or with a wider ``--budget``) reuses every finished trial.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from toolkit.cli.common import add_recipe_arguments, resolve_recipe, run_dir_for

HELP = "search compression chains per target device within a time budget; writes tune/best-<target>.toml"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p, force=False)
    for action in p._actions:  # the shared arguments' help, as tune uses them
        if action.dest == "recipe":
            action.help = "recipe TOML file: its data, model and [train] make the base; its [[compress]] is ignored"
        elif action.dest == "out":
            action.help = "run directory (default: runs/<recipe name>-tune)"
    p.add_argument("--target", dest="targets", action="append", default=[], metavar="NAME", required=True,
                   help="device profile to tune for (repeatable; the first one steers the search)")
    p.add_argument("--max-drop", type=float, default=0.01,
                   help="largest drop of the task's main metric vs the base (accuracy: 0.01 = one point)")
    p.add_argument("--budget", default="45m", help="wall-clock budget: 90s, 2m, 45m, 1h (a bare number: minutes)")


def run(args: argparse.Namespace) -> int:
    from toolkit.console import ConsoleDisplay
    from toolkit.errors import UserError
    from toolkit.events import Emitter
    from toolkit.rundir import RunDir, RunLock
    from toolkit.targets import load_target
    from toolkit.train.stage import prepare_run_dir
    from toolkit.tune.search import check_trainable, parse_budget, run_tune

    # every argument is checked before the recipe's model is touched, so a typo costs nothing
    budget_s = parse_budget(args.budget)
    if not 0 <= args.max_drop < 1:
        raise UserError(f"--max-drop {args.max_drop}: give a fraction in [0, 1), e.g. 0.01 for one accuracy point")
    targets = {}
    for name in dict.fromkeys(args.targets):
        try:
            targets[name] = load_target(name)
        except UserError as e:
            raise UserError(f"--target: {e}") from None
    recipe = resolve_recipe(args)
    check_trainable(recipe)
    # its own run directory by default: the trials' many variants in the recipe's session directory would all be
    # exported and evaluated by the next `toolkit run` there
    run = RunDir(run_dir_for(args, recipe) if args.out else Path("runs") / f"{recipe.name}-tune")
    with RunLock(run, "tune"), ConsoleDisplay(args.quiet) as display:
        prepare_run_dir(recipe, run, force=False)
        emitter = Emitter(run.events, recipe.name, [display])
        emit = emitter.for_stage("tune")
        try:
            summary = run_tune(recipe, run, emitter, targets, args.max_drop, budget_s)
        except Exception as e:
            if getattr(e, "exit_code", 0) != 130:
                emit("error", message=str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        finally:
            emitter.close()
    print(f"tune: {summary['trials_total']} trials ({summary['trials_run']} run, {summary['trials_reused']} reused) "
          f"in {summary['seconds']} s; report: {run.path / 'tune' / 'report.md'}")
    for target, w in summary["winners"].items():
        print(f"  {target}: " + (f"{w['speedup']:.2f}x the base, eval drop {w['eval_drop']:+.4f} -> {w['recipe']}"
                                 if w.get("trial") else f"no winner ({w['why']})"))
    return 0
