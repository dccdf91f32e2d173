"""``python -m toolkit train RECIPE``: the training stage alone.

``--nproc N`` launches torchrun for the user (N local processes, DDP); under torchrun
(``torchrun --nproc_per_node=N -m toolkit train RECIPE``) this same command is each worker.
"""
from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from toolkit.cli.common import add_recipe_arguments, resolve_recipe, run_dir_for

HELP = "train a model from a recipe (checkpoints, resume after a crash with --resume, --nproc N for DDP)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_recipe_arguments(p)
    p.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint")
    p.add_argument("--nproc", type=int, default=0, metavar="N",
                   help="train on N local processes with DDP (launches torchrun; gloo on CPU, nccl on GPU)")


def run(args: argparse.Namespace) -> int:
    from toolkit.errors import UserError
    from toolkit.train import distributed

    if args.resume and args.force:
        raise UserError("--resume and --force contradict each other: --force starts over")
    if args.nproc < 0:
        raise UserError(f"--nproc {args.nproc}: give a number of processes, at least 1")
    if distributed.under_torchrun():
        if args.nproc and args.nproc != distributed.env_world():
            raise UserError(f"--nproc {args.nproc}: already running under torchrun with "
                            f"{distributed.env_world()} processes; leave --nproc out")
        return _worker(args)
    if args.nproc > 1:
        return _launch(args)
    return _train(args, resolve_recipe(args), distributed.SINGLE)


def _train(args: argparse.Namespace, recipe: Any, env: Any) -> int:
    """Train in this process: the whole job, or this rank's part of it (rank 0 alone writes)."""
    from toolkit.console import ConsoleDisplay
    from toolkit.events import null_emitter
    from toolkit.rundir import RunDir, RunLock
    from toolkit.train import distributed
    from toolkit.train.stage import prepare_run_dir, run_train

    run = RunDir(run_dir_for(args, recipe))
    if args.resume:
        from toolkit.train.checkpoint import check_world_size

        check_world_size(run.checkpoints, env.world)  # before anything starts: one clear line
    if not env.is_main:
        distributed.barrier(env)  # the others start once rank 0 holds the lock and has (re)set the run directory
        run_train(recipe, run, null_emitter("train"), resume=args.resume)
        return 0
    # The lock first: --force must not clear a run directory another process is working in.
    with RunLock(run, "train"):
        prepare_run_dir(recipe, run, args.force)
        distributed.barrier(env)
        with ConsoleDisplay(args.quiet) as display:
            result = _run_logged(recipe, run, display, args.resume)
    val = result.validation if result else {}
    shown = "  ".join(f"{k} {v:.0f}" if k == "examples" else f"{k} {v:.4f}" for k, v in val.items())
    print(f"model: {run.final}" + (f"  (validation: {shown})" if shown else ""))
    return 0


def _run_logged(recipe: Any, run: Any, display: Any, resume: bool) -> Any:
    """run_train with events to events.jsonl and the console; a failure leaves an "error" event."""
    from toolkit.events import Emitter
    from toolkit.train.stage import run_train

    emitter = Emitter(run.events, recipe.name, [display])
    emit = emitter.for_stage("train")
    try:
        return run_train(recipe, run, emit, resume=resume)
    except Exception as e:
        if not getattr(e, "exit_code", 0) == 130:
            emit("error", message=str(e).splitlines()[0] if str(e) else type(e).__name__)
        raise
    finally:
        emitter.close()


def _worker(args: argparse.Namespace) -> int:
    """One rank under torchrun: join the group, train, report the outcome to the launcher (if any)."""
    from toolkit.train import distributed

    debug = getattr(args, "debug", False) or os.environ.get("TOOLKIT_DEBUG") == "1"
    if os.environ.get(distributed.STATUS_ENV) and os.environ.get("RANK", "0") != "0" and not debug:
        distributed.silence_stderr()
    env, code, line = None, 0, ""
    try:
        recipe = resolve_recipe(args)
        env = distributed.init(recipe.train.device)
        return _train(args, recipe, env)
    except BaseException as e:
        code, line = _describe(e)
        raise
    finally:
        distributed.write_status(code, line)
        if env is not None:
            distributed.finish(env, wait=code in (0, 2, 3, 130))


def _describe(e: BaseException) -> tuple[int, str]:
    """The exit code and the one line ``python -m toolkit`` prints for this exception."""
    from toolkit.errors import ToolkitError

    if isinstance(e, ToolkitError):
        return e.exit_code, f"{'interrupted' if e.exit_code == 130 else 'error'}: {e}"
    if isinstance(e, KeyboardInterrupt):
        return 130, "interrupted"
    if isinstance(e, SystemExit):
        return int(e.code or 0) if isinstance(e.code, int) else 1, str(e.code or "")
    return 1, f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)"


def _launch(args: argparse.Namespace) -> int:
    """Check what can be checked here (one clear line, no processes started), then run torchrun."""
    import torch

    from toolkit.errors import UserError
    from toolkit.rundir import RunDir, lock_is_live, read_lock
    from toolkit.train import distributed, lora

    recipe = resolve_recipe(args)
    lora.check_config(recipe)
    file = recipe.source_path or args.recipe
    distributed.check_batch(recipe.train.batch_size, recipe.train.grad_accum, args.nproc, file)
    cuda = recipe.train.device == "cuda" or (recipe.train.device == "auto" and torch.cuda.is_available())
    if cuda and args.nproc > torch.cuda.device_count():
        raise UserError(f"--nproc {args.nproc}: this machine has {torch.cuda.device_count()} CUDA device(s); "
                        f"use at most that many processes, or train.device = 'cpu'")
    run = RunDir(Path(run_dir_for(args, recipe)).resolve())
    run.check_owner(recipe.name, recipe.task, args.force)
    info = read_lock(run)
    if lock_is_live(info):
        raise UserError(f"{run.path}: a live run holds it (pid {info.get('pid')} on {info.get('host')}, "
                        f"'{info.get('command')}'); wait for it or stop it first")
    forwarded = ["train", str(Path(args.recipe).resolve()), "--out", str(run.path)]
    for text in args.overrides:
        forwarded += ["--set", text]
    forwarded += [flag for flag, on in (("--resume", args.resume), ("--force", args.force),
                                        ("--quiet", args.quiet), ("--debug", getattr(args, "debug", False))) if on]
    return distributed.launch(forwarded, args.nproc, debug=getattr(args, "debug", False))
