"""``python -m toolkit eval RECIPE``: quality and latency of every variant of a run; the report is rebuilt."""
from __future__ import annotations

import argparse

HELP = "evaluate a run's variants on the eval split (metrics with their conventions, latency per target); rebuilds the report"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from toolkit.cli.common import add_recipe_arguments

    add_recipe_arguments(p, force=False, example="eval.limit=200")
    p.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME",
                   help="evaluate only this variant (repeatable; default: every variant)")
    p.add_argument("--metric", dest="metrics", action="append", default=[], metavar="NAME",
                   help="report only this metric (repeatable): accuracy | f1 | auc_roc | bleu | chrf | rouge | "
                        "perplexity ...; one that does not fit the task is an error")


def run(args: argparse.Namespace) -> int:
    from toolkit.cli.common import existing_run, resolve_recipe, stage_events
    from toolkit.eval.stage import check_metrics, run_eval

    from toolkit.eval.stage import check_targets, select_variants

    recipe = resolve_recipe(args)
    check_metrics(args.metrics, recipe.task)  # before anything else: a wrong metric costs nothing
    run = existing_run(args, recipe)
    # A refused command line writes nothing into the run: the names are checked before the stage starts.
    select_variants(run, args.variants or None)
    check_targets(recipe)
    from toolkit.report import write_report

    with stage_events(run, recipe, "eval", args.quiet) as emit:
        results = run_eval(recipe, run, emit, variants=args.variants or None, metrics=args.metrics or None)
    with stage_events(run, recipe, "report", True) as emit:  # the report stage, as a session runs it after eval
        emit("done", report=str(write_report(recipe, run)))
    for name, record in results.items():
        shown = "  ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items() if isinstance(v, (int, float)))
        lat = "  ".join(f"{t} p50 {e['p50_ms']:.3g} ms ({e.get('runtime')}, {e.get('source')})"
                        for t, e in record["latency"].items() if isinstance(e.get("p50_ms"), (int, float)))
        print(f"{name}: {shown}" + (f"  |  {lat}" if lat else ""))
    print(f"report: {run.report_json}")
    return 0
