"""``python -m toolkit export RECIPE``: every variant's deployable files, each verified against PyTorch.

Exit 0 when every file matched, 3 when a file failed its check (the message names file, measured value and
bound), 2 for bad input (no run directory or variants, an unknown format, a format whose extra is missing).
"""
from __future__ import annotations

import argparse

HELP = "export every variant of a run to ONNX / .ort / .pte / TorchScript, each file verified on real samples"


def add_arguments(p: argparse.ArgumentParser) -> None:
    from toolkit.cli.common import add_recipe_arguments

    add_recipe_arguments(p, force=False, example="export.atol=1e-3")
    p.add_argument("--format", dest="formats", action="append", default=[], metavar="F",
                   help="onnx | ort | pte | torchscript (repeatable; default: the recipe's [export] formats)")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from toolkit.cli.common import existing_run, resolve_recipe, stage_events
    from toolkit.errors import UserError, did_you_mean
    from toolkit.registry import FORMATS

    for fmt in args.formats:  # before anything heavy: a typo costs nothing
        if fmt not in FORMATS:
            raise UserError(f"--format {fmt}: unknown format{did_you_mean(fmt, FORMATS.names())}")
    recipe = resolve_recipe(args)
    if args.formats:
        recipe = dataclasses.replace(recipe, export=dataclasses.replace(recipe.export, formats=list(args.formats)))
    if not recipe.export.formats:
        raise UserError(f"{args.recipe}: [export] formats is empty; name one, e.g. --format onnx")
    run = existing_run(args, recipe)
    from toolkit.export.stage import run_export

    with stage_events(run, recipe, "export", args.quiet) as emit:
        results = run_export(recipe, run, emit, strict=True)
    _print_table(results)
    print(f"run directory: {run.path}")
    return 0


def _print_table(results: dict[str, list[dict]]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(title="exported files", title_justify="left")
    for col in ("variant", "format", "file", "size", "verified", "check"):
        table.add_column(col, justify="right" if col == "size" else "left")
    for variant, records in results.items():
        for r in records:
            mark = {True: Text("yes", style="green"), False: Text("FAILED", style="bold red"),
                    None: Text("-", style="dim")}[r["verified"]]
            check = r.get("check", {})
            if check.get("mode") == "lossy":
                shown = f"agreement {check['agreement']:.3f}, cosine {check['cosine']:.4f}"
            elif "max_abs_diff" in check:
                shown = f"max |diff| {check['max_abs_diff']:.2g} <= {check['atol']:g}"
            else:
                shown = r.get("reason", "")
            size = f"{r['size_bytes'] / 2**20:.2f} MiB" if r["path"] else ""
            table.add_row(Text(variant), Text(r["format"]), Text(r["path"] or ""), size, mark, Text(shown))
    Console(width=160).print(table)
