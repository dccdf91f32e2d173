"""``python -m toolkit eval RECIPE``: quality and latency of every variant of a run; the report is rebuilt."""
from __future__ import annotations

import argparse

HELP = "evaluate a run's variants on the eval split (metrics with their conventions, latency per target)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("recipe", help="recipe TOML file (the one the run was made with)")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set eval.limit=200 (repeatable)")
    p.add_argument("--variant", dest="variants", action="append", default=[], metavar="NAME",
                   help="evaluate only this variant (repeatable; default: every variant)")
    p.add_argument("--metric", dest="metrics", action="append", default=[], metavar="NAME",
                   help="report only this metric (repeatable): accuracy | f1 | auc_roc | bleu | chrf | rouge | "
                        "perplexity ...; one that does not fit the task is an error")
    p.add_argument("--quiet", action="store_true", help="print only the result")


def run(args: argparse.Namespace) -> int:
    from toolkit.cli.common import resolve_recipe, run_dir_for
    from toolkit.console import ConsoleDisplay
    from toolkit.errors import UserError
    from toolkit.eval.stage import check_metrics, run_eval
    from toolkit.events import Emitter
    from toolkit.rundir import RunDir, RunLock

    recipe = resolve_recipe(args)
    check_metrics(args.metrics, recipe.task)  # before anything else: a wrong metric costs nothing
    run = RunDir(run_dir_for(args, recipe))
    if not run.path.is_dir():
        raise UserError(f"{run.path}: no such run directory; train first (python -m toolkit train {args.recipe}) "
                        f"or pass --out RUN_DIR")
    run.check_owner(recipe.name, recipe.task, force=False)
    with RunLock(run, "eval"), ConsoleDisplay(args.quiet) as display:
        emitter = Emitter(run.events, recipe.name, [display])
        emit = emitter.for_stage("eval")
        try:
            results = run_eval(recipe, run, emit, variants=args.variants or None, metrics=args.metrics or None)
        except Exception as e:
            if getattr(e, "exit_code", 0) != 130:
                emit("error", message=str(e).splitlines()[0] if str(e) else type(e).__name__)
            raise
        finally:
            emitter.close()
    for name, record in results.items():
        shown = "  ".join(f"{k} {v:.4g}" for k, v in record["metrics"].items() if isinstance(v, (int, float)))
        lat = "  ".join(f"{t} p50 {e['p50_ms']:.3g} ms ({e.get('runtime')}, {e.get('source')})"
                        for t, e in record["latency"].items() if isinstance(e.get("p50_ms"), (int, float)))
        print(f"{name}: {shown}" + (f"  |  {lat}" if lat else ""))
    print(f"report: {run.report_json}")
    return 0
