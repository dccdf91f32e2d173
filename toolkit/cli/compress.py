"""``python -m toolkit compress RECIPE``: the compression stage alone (training first when the baseline is missing)."""
from __future__ import annotations

import argparse

from toolkit.cli.common import add_recipe_arguments, resolve_recipe, run_dir_for

HELP = "run a recipe's [[compress]] steps (distill, prune, quantize, fp16); trains the baseline first if needed"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)


def run(args: argparse.Namespace) -> int:
    from toolkit.console import ConsoleDisplay
    from toolkit.errors import UserError
    from toolkit.events import Emitter
    from toolkit.rundir import RunDir, RunLock

    recipe = resolve_recipe(args)
    if not recipe.compress:
        raise UserError(f"{args.recipe}: the recipe has no [[compress]] steps; add one, e.g. a table "
                        f"[[compress]] with method = \"quantize\"")
    from toolkit.compress.stage import check_steps
    from toolkit.train.stage import prepare_run_dir

    check_steps(recipe)  # before anything is written: a step the family cannot do is one line
    run = RunDir(run_dir_for(args, recipe))
    with RunLock(run, "compress"), ConsoleDisplay(args.quiet) as display:  # the lock before --force clears
        prepare_run_dir(recipe, run, args.force)
        emitter = Emitter(run.events, recipe.name, [display])
        try:
            _train_if_needed(recipe, run, emitter)
            emit = emitter.for_stage("compress")
            try:
                from toolkit.compress.stage import run_compress

                variants = run_compress(recipe, run, emit)
            except Exception as e:
                if getattr(e, "exit_code", 0) != 130:
                    emit("error", message=str(e).splitlines()[0] if str(e) else type(e).__name__)
                raise
        finally:
            emitter.close()
    _print_table(variants)
    print(f"run directory: {run.path}")
    return 0


def _train_if_needed(recipe, run, emitter) -> None:
    """Train (resuming from checkpoints of the same settings) unless variants/base is up to date with the recipe."""
    from toolkit.variants import load_variants
    from toolkit.rundir import load_manifest
    from toolkit.train import checkpoint as ckpt_io
    from toolkit.train.stage import has_finished, run_train, train_config_hash

    emit = emitter.for_stage("train")
    same = load_manifest(run).get("train_config_hash") in (None, train_config_hash(recipe))
    base = load_variants(run.variants).get("base")
    if base is not None and same and (has_finished(run, recipe) or base.onnx is not None):
        emit("skip", reason="the baseline variant is up to date with the recipe")
        return
    resume = bool(ckpt_io.list_checkpoints(run.checkpoints)) and same
    if not resume and ckpt_io.list_checkpoints(run.checkpoints):
        import shutil

        emit.log("the recipe's training settings changed: training starts over", "warning")
        shutil.rmtree(run.checkpoints)
    emit.log("no up-to-date baseline variant: training first" + (" (resuming)" if resume else ""))
    try:
        run_train(recipe, run, emit, resume=resume)
    except Exception as e:
        if getattr(e, "exit_code", 0) != 130:
            emit("error", message=str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise


def _print_table(variants) -> None:
    from rich.console import Console
    from rich.table import Table

    from toolkit.variants import main_file, size_bytes

    table = Table(title="variants")
    for col in ("name", "from", "method", "MB", "metric", "value", "parent's", "kept in float", "in budget"):
        table.add_column(col, overflow="fold")
    for v in variants.values():
        info = v.info or {}
        try:
            size = info.get("size_bytes") or size_bytes(main_file(v))
        except Exception:  # a variant without a model file still gets its row
            size = 0
        val = info.get("validation") or {}
        num = (lambda x: f"{x:.4f}" if isinstance(x, (int, float)) else "")
        table.add_row(v.name, v.parent or "", v.method + (f" {info['scheme']}" if info.get("scheme") else ""),
                      f"{size / 1e6:.2f}" if size else "", str(val.get("metric", "")), num(val.get("variant")),
                      num(val.get("parent")), ", ".join(info.get("layers_in_float", [])),
                      {True: "yes", False: "NO", None: ""}[v.within_budget])
    Console().print(table)
