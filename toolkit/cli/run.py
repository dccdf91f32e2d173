"""``python -m toolkit run [RECIPE]``: the whole session — train → compress → export → eval → report — into one
run directory (no recipe: the packaged demo).

Running the same command again skips the finished stages whose settings and inputs are unchanged, continues
an interrupted training from its checkpoint, and retries a stage that failed.
"""
from __future__ import annotations

import argparse

from toolkit.cli.common import add_recipe_arguments, resolve_recipe, run_dir_for

HELP = "run a recipe's whole session (default: the packaged demo); rerun to continue"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p, optional=True)


def run(args: argparse.Namespace) -> int:
    import json

    from toolkit.console import ConsoleDisplay
    from toolkit.rundir import RunDir
    from toolkit.session import STAGES, run_session

    recipe = resolve_recipe(args)
    run_dir = RunDir(run_dir_for(args, recipe))
    with ConsoleDisplay(args.quiet, stages=[s.name for s in STAGES]) as display:
        report_json = run_session(recipe, run_dir, [display], force=args.force)
    print(f"report: {run_dir.report_md}")
    print(f"        {report_json}")
    if report_json.exists():
        report = json.loads(report_json.read_text(encoding="utf-8"))
        for target, name in report.get("recommendation", {}).items():
            why = report.get("no_recommendation", {}).get(target, "")
            print(f"  {target}: " + (f"ship {name}" if name else f"no variant meets the budget ({why})"))
    return 0
