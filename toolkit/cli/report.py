"""``python -m toolkit report RUN_DIR [--verify] [--json]``: print a run's report; --verify re-hashes every artifact
the manifest records and exits 3 naming any that changed or vanished."""
from __future__ import annotations

import argparse
import sys

HELP = "print a run's report (report.md, or report.json with --json); --verify re-hashes every artifact"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory (runs/<recipe name>)")
    p.add_argument("--verify", action="store_true",
                   help="re-hash every artifact in manifest.json; exit 3 naming any that changed or vanished")
    p.add_argument("--json", action="store_true", help="print report.json instead of report.md")


def run(args: argparse.Namespace) -> int:
    from pathlib import Path

    from toolkit.errors import CheckFailed, UserError
    from toolkit.report import verify_run
    from toolkit.rundir import RunDir

    run_dir = RunDir(Path(args.run_dir))
    if not run_dir.path.is_dir():
        raise UserError(f"{run_dir.path}: no such run directory (give the folder a `run` wrote, e.g. runs/demo)")
    if not run_dir.manifest.exists():
        raise UserError(f"{run_dir.path}: not a run directory (no manifest.json); run `python -m toolkit run` first")
    from toolkit.rundir import TornFile, read_json_file

    shown = run_dir.report_json if args.json else run_dir.report_md
    if run_dir.report_json.exists():
        try:  # a torn report.json is a failed check, not a report to print
            read_json_file(run_dir.report_json, "report", "rebuild it with `python -m toolkit eval RECIPE` or run "
                                                          "the session again")
        except TornFile as e:
            raise CheckFailed(str(e)) from None
    if shown.exists():
        text = shown.read_text(encoding="utf-8")
        if not args.json and sys.stdout.isatty():
            from rich.console import Console
            from rich.markdown import Markdown

            Console().print(Markdown(text))
        else:
            sys.stdout.write(text if text.endswith("\n") else text + "\n")
    elif not args.verify:
        raise UserError(f"{shown}: no report yet; the session has not reached its report stage "
                        f"(run the same `python -m toolkit run` command again to continue)")
    if args.verify:
        from toolkit.rundir import load_manifest

        try:
            problems = verify_run(run_dir)
        except TornFile as e:  # the record everything is checked against is itself broken
            raise CheckFailed(str(e)) from None
        if problems:
            raise CheckFailed(f"{len(problems)} artifact(s) changed or missing in {run_dir.path}: "
                              + "; ".join(problems))
        count = len(load_manifest(run_dir).get("artifacts", []))
        print(f"verified: all {count} artifacts in {run_dir.manifest} match their sha256", file=sys.stderr)
    return 0
