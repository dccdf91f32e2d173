"""``python -m toolkit targets [PROFILE ...] [--check] [--json]``: list device profiles; --check tries to reach each."""
from __future__ import annotations

import argparse
import json
import sys

HELP = "list device profiles (host and targets/*.toml); --check tries to reach each"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("profiles", nargs="*", metavar="PROFILE",
                        help="names or .toml files to show (default: host and every packaged profile)")
    parser.add_argument("--check", action="store_true",
                        help="try to reach each: local is reachable, ssh runs `true` there, none is estimate only; "
                             "exit 3 when an ssh target cannot be reached")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument("--timeout", type=int, default=5, metavar="S", help="ssh connect timeout, seconds (default 5)")


def run(args: argparse.Namespace) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from toolkit.reach import check_reach
    from toolkit.targets import SCHEMA_VERSION, list_targets, load_target

    from toolkit.errors import UserError

    if args.timeout < 1:
        raise UserError(f"--timeout must be at least 1 second (got {args.timeout})")
    targets = [load_target(p) for p in args.profiles] if args.profiles else list_targets()
    checks = None
    if args.check:
        # ssh checks wait on the network: run them side by side so n hosts take one timeout, not n.
        with ThreadPoolExecutor(max_workers=min(8, len(targets)) or 1) as pool:
            checks = list(pool.map(lambda t: check_reach(t, args.timeout), targets))
    failed = bool(checks) and any(c.status == "unreachable" for c in checks)

    if args.json:
        rows = []
        for i, t in enumerate(targets):
            row = t.to_dict()
            row["int8_label"] = t.int8.label
            if checks is not None:
                row["check"] = {"status": checks[i].status, "reason": checks[i].reason}
            rows.append(row)
        json.dump({"schema_version": SCHEMA_VERSION, "targets": rows}, sys.stdout, indent=2)
        sys.stdout.write("\n")
        return 3 if failed else 0

    from rich import box
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(box=box.SIMPLE_HEAD, show_edge=False)
    for column in ("name", "arch", "cores/threads", "runtime", "INT8", "reach") + (("check",) if checks else ()):
        table.add_column(column, no_wrap=column != "reach")
    styles = {"reachable": "green", "unreachable": "red", "estimate only": "yellow"}
    notes: list[Text] = []
    for i, t in enumerate(targets):
        # Text, not markup: names and ssh messages may hold brackets that rich would read as style tags.
        row = [Text(s) for s in (t.name, t.arch, f"{t.cores}/{t.threads}", t.runtime, t.int8.label, t.reach.label)]
        if checks is not None:
            c = checks[i]
            row.append(Text(c.status, style=styles[c.status]))
            if c.status == "unreachable":
                notes.append(Text.assemble((t.name, "bold"), ": ", c.reason))
        table.add_row(*row)
    # Piped into a file or a log, keep one row per line rather than wrapping at rich's default 80 columns.
    console = Console(highlight=False, width=None if sys.stdout.isatty() else 160)
    console.print(table)
    for note in notes:
        console.print(note, soft_wrap=True)
    return 3 if failed else 0
