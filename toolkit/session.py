"""Sessions: one recipe runs train → compress → export → eval → report into one run directory.

The stages are data (``STAGES``): a name, the function that does the work, the recipe sections the work
depends on, and whether the recipe gives it any work. A stage is skipped (a ``skip`` event) when it finished
before with the same *stage hash*: its recipe sections, the local files the recipe names for it, and the
sha256 of its input artifacts as the manifest records them. A stage that runs makes every later stage run
too, so one changed setting reruns its stage and everything after it.

Nothing is lost on failure: every write goes through the atomic helpers of ``toolkit.rundir``; the manifest
records each stage's status (``running`` → ``done`` | ``failed`` | ``interrupted``), so running the same
command again retries from the first stage that is not done. Training resumes from its newest checkpoint
when the training settings are unchanged. Ctrl-C (SIGINT) or SIGTERM stops after a checkpoint (exit 130).

    report_json = run_session(recipe, RunDir("runs/demo"), listeners=[print])
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import shutil
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from toolkit.config import Recipe, config_hash, dumps_toml, hashed_dict, with_absolute_paths
from toolkit.errors import Interrupted, ToolkitError, UserError
from toolkit.events import Emitter, Listener, StageEmitter
from toolkit.rundir import (RunDir, RunLock, atomic_write_json, atomic_write_text, init_manifest, load_manifest,
                            sha256_path)

StageFn = Callable[[Recipe, RunDir, StageEmitter], Any]


@dataclass(frozen=True)
class Stage:
    """One row of the stage table."""

    name: str
    run: StageFn
    """does the work: (recipe, run, emit) -> anything; writes artifacts and records them in the manifest"""
    sections: tuple[str, ...]
    """top-level recipe keys whose values the stage's result depends on"""
    no_work: Callable[[Recipe], str | None] = lambda recipe: None
    """why the recipe gives this stage nothing to do (it is then skipped), or None"""
    files: Callable[[Recipe], dict[str, Path]] = lambda recipe: {}
    """local files the recipe names for this stage (data, model); their content is part of the stage hash"""
    resets: Callable[[Recipe, RunDir], None] | None = None
    """removes previous outputs the recipe no longer asks for, before the stage runs (no stale variant survives)"""


# ---- the real stages: thin adapters over the stage functions (imported lazily: they pull in torch) -------

def _train(recipe: Recipe, run: RunDir, emit: StageEmitter) -> Any:
    from toolkit.train import checkpoint as ckpt_io
    from toolkit.train.stage import run_train, train_config_hash

    checkpoints = ckpt_io.list_checkpoints(run.checkpoints)
    manifest = load_manifest(run)
    same_config = manifest.get("train_config_hash") in (None, train_config_hash(recipe))
    previous = manifest.get("stages", {}).get("train", {})
    same_files = previous.get("files") in (None, _files_digest(STAGE_BY_NAME["train"], recipe))
    resume = bool(checkpoints) and same_config and same_files
    if checkpoints and not resume:
        emit.log("the training settings or data changed since the checkpoints were written: training starts over",
                 "warning")
        shutil.rmtree(run.checkpoints)
    elif resume:
        emit.log(f"continuing the interrupted training from {checkpoints[-1].path.name}")
    return run_train(recipe, run, emit, resume=resume)


def _compress(recipe: Recipe, run: RunDir, emit: StageEmitter) -> Any:
    from toolkit.compress.stage import run_compress

    if recipe.train.threads:
        # Distillation and recovery fine-tunes are training too; a rerun that skipped training has not set it.
        import torch

        torch.set_num_threads(recipe.train.threads)
    return run_compress(recipe, run, emit)


def _export(recipe: Recipe, run: RunDir, emit: StageEmitter) -> Any:
    from toolkit.export.stage import run_export

    # In a session a failed check is flagged (a warning and a line in the report); the run goes on.
    return run_export(recipe, run, emit, strict=False)


def _eval(recipe: Recipe, run: RunDir, emit: StageEmitter) -> Any:
    from toolkit.eval.stage import run_eval

    return run_eval(recipe, run, emit)


def _report(recipe: Recipe, run: RunDir, emit: StageEmitter) -> Any:
    from toolkit.report import write_report

    path = write_report(recipe, run)
    emit("artifact", path=str(path), what="report")
    emit("done", report=str(path), markdown=str(run.report_md))
    return path


def _no_compress_steps(recipe: Recipe) -> str | None:
    return None if recipe.compress else "no [[compress]] steps in the recipe"


def _no_export_formats(recipe: Recipe) -> str | None:
    return None if recipe.export.formats else "no [export] formats in the recipe"


def _training_files(recipe: Recipe) -> dict[str, Path]:
    """Local data files and the model source: editing one of them retrains."""
    out: dict[str, Path] = {}
    for key in ("train", "validation", "eval"):
        value = getattr(recipe.data, key)
        for i, item in enumerate(value if isinstance(value, list) else [value]):
            if item and not item.startswith("builtin:"):
                out[f"data.{key}" + (f"[{i}]" if isinstance(value, list) else "")] = recipe.resolve_path(item)
    source = recipe.model.source
    if source and not source.startswith("builtin:"):
        out["model.source"] = recipe.resolve_path(source)
    return out


def _drop_stale_variants(recipe: Recipe, run: RunDir) -> None:
    """Before compression runs: remove variants of steps the recipe no longer has (the others the compress
    stage itself reuses or rebuilds, step by step)."""
    keep = {"base", *(s.name for s in recipe.steps)}
    if run.variants.is_dir():
        for child in run.variants.iterdir():
            if child.name not in keep and child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)


STAGES: list[Stage] = [
    Stage("train", _train, ("seed", "task", "data", "model", "train"), files=_training_files),
    Stage("compress", _compress, ("seed", "task", "data", "compress"), no_work=_no_compress_steps,
          resets=_drop_stale_variants),
    Stage("export", _export, ("task", "export"), no_work=_no_export_formats),
    Stage("eval", _eval, ("task", "data", "eval")),
    Stage("report", _report, ("task", "eval")),
]
STAGE_BY_NAME = {s.name: s for s in STAGES}


# ---- hashing ------------------------------------------------------------------------------------------

def _files_digest(stage: Stage, recipe: Recipe) -> str:
    """sha256 over the content of the local files the recipe names for ``stage`` ("" when none)."""
    files = stage.files(recipe)
    if not files:
        return ""
    h = hashlib.sha256()
    for key, path in sorted(files.items()):
        # A missing file hashes as such: the stage itself reports it properly when it runs.
        h.update(f"{key}\0{sha256_path(path) if path.exists() else 'missing'}\n".encode())
    return h.hexdigest()[:16]


def stage_hash(stage: Stage, recipe: Recipe, manifest: dict[str, Any], earlier: Sequence[str]) -> dict[str, str]:
    """The parts of a stage's identity: config (its recipe sections), files (their content) and inputs
    (sha256 of every artifact the earlier stages recorded), and ``hash`` over all three."""
    d = hashed_dict(recipe)
    config = config_hash({k: d[k] for k in stage.sections})
    inputs = sorted((a.get("name", ""), a.get("sha256", "")) for a in manifest.get("artifacts", [])
                    if a.get("stage") in earlier)
    inputs_hash = hashlib.sha256(json.dumps(inputs).encode()).hexdigest()[:16]
    files = _files_digest(stage, recipe)
    total = hashlib.sha256(f"{config}:{files}:{inputs_hash}".encode()).hexdigest()[:16]
    return {"hash": total, "config": config, "files": files, "inputs": inputs_hash}


# ---- the manifest's stage records -----------------------------------------------------------------------

def _write_stage(run: RunDir, name: str, record: dict[str, Any] | None) -> None:
    """Set (or with None remove) ``manifest["stages"][name]`` atomically."""
    m = load_manifest(run)
    stages = m.setdefault("stages", {})
    if record is None:
        stages.pop(name, None)
    else:
        stages[name] = record
    atomic_write_json(run.manifest, m)


def _forget_stages(run: RunDir, names: Sequence[str]) -> None:
    """A stage is about to run: its and every later stage's records are out of date until they finish again.

    Their artifacts stay recorded (they still describe files on disk, and a stage may reuse what is unchanged,
    as compression does step by step); what vanishes is dropped by :func:`_drop_vanished`.
    """
    m = load_manifest(run)
    for name in names:
        m.get("stages", {}).pop(name, None)
    atomic_write_json(run.manifest, m)


def _drop_vanished(run: RunDir, name: str | None = None) -> None:
    """Forget the artifacts (of stage ``name``, or of every stage) whose files are gone: variants of removed
    steps, or outputs a stage cleared before rebuilding them and then failed to rebuild."""
    m = load_manifest(run)
    kept = [a for a in m.get("artifacts", [])
            if (name is not None and a.get("stage") != name) or _artifact_path(run, a).exists()]
    if len(kept) != len(m.get("artifacts", [])):
        m["artifacts"] = kept
        atomic_write_json(run.manifest, m)


def _artifact_path(run: RunDir, artifact: dict[str, Any]) -> Path:
    p = Path(artifact.get("path", ""))
    return p if p.is_absolute() else run.path / p


def _outputs_present(run: RunDir, manifest: dict[str, Any], name: str) -> bool:
    return all(_artifact_path(run, a).exists() for a in manifest.get("artifacts", []) if a.get("stage") == name)


def _up_to_date(stage: Stage, recipe: Recipe, run: RunDir, manifest: dict[str, Any], ident: dict[str, str]) -> str | None:
    """Why ``stage`` can be skipped (its last run finished with the same hash and its outputs exist), or None."""
    record = manifest.get("stages", {}).get(stage.name)
    if record and record.get("status") == "done" and record.get("hash") == ident["hash"]:
        if _outputs_present(run, manifest, stage.name):
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(record.get("finished", 0)))
            return f"unchanged since its run of {when}"
        return None
    if stage.name == "train" and not record:
        # A run directory trained by `toolkit train`: its final model is reused when the settings match.
        from toolkit.train.stage import has_finished

        if has_finished(run, recipe) and (run.variant("base") / "variant.json").is_file():
            return "train/final is up to date with the recipe"
    return None


# ---- the session ------------------------------------------------------------------------------------------

def run_session(recipe: Recipe, run: RunDir, listeners: Sequence[Listener] = (), force: bool = False) -> Path:
    """Run ``recipe``'s stages in order into ``run``; returns the path of report.json.

    Args:
        recipe: the resolved recipe (overrides applied).
        run: the run directory; created when missing.
        listeners: called with every event (the console display, a test's list.append).
        force: start over: clear the run directory first (also lets another recipe's run directory be reused).

    Raises:
        UserError: another recipe's run directory (without ``force``), a live session holding it, bad data,
            a full disk (exit 2). Interrupted: Ctrl-C/SIGTERM, after a checkpoint (exit 130). Anything a stage
            raises, after recording the stage as failed (running the same command again retries from it).
    """
    preflight(recipe)
    with RunLock(run, "run"):
        run.check_owner(recipe.name, recipe.task, force)
        if force:
            _clear(run)
        run.path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run.recipe, dumps_toml(with_absolute_paths(recipe)))
        init_manifest(run, recipe.name, recipe.task, recipe.seed)
        emitter = Emitter(run.events, recipe.name, list(listeners))
        try:
            with _sigterm_as_interrupt():
                _run_stages(recipe, run, emitter)
        finally:
            emitter.close()
    return run.report_json


def preflight(recipe: Recipe) -> None:
    """What can be checked before any work, so a mistake costs seconds, not a training run: the device profiles
    ``[eval] targets`` names, and every [[compress]] step against the model's structure.

    Raises:
        UserError: naming the recipe file and the key or step.
    """
    from toolkit.compress.stage import check_steps
    from toolkit.eval.stage import check_targets

    try:
        check_targets(recipe)
    except UserError as e:
        raise UserError(f"{recipe.source_path or 'recipe'}: {e}") from None
    check_steps(recipe)


def _clear(run: RunDir) -> None:
    """--force: remove what an earlier run left, except the lock this session holds."""
    if run.path.exists():
        for child in run.path.iterdir():
            if child.name == run.lock.name:
                continue
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()


def _run_stages(recipe: Recipe, run: RunDir, emitter: Emitter) -> None:
    stages = list(STAGES)
    names = [s.name for s in stages]
    t0 = time.time()
    emitter.emit("session", "start", stages=names, recipe=recipe.name, task=recipe.task, run_dir=str(run.path))
    ran = False  # once a stage runs, every later one runs too
    for i, stage in enumerate(stages):
        emit = emitter.for_stage(stage.name)
        manifest = load_manifest(run)
        ident = stage_hash(stage, recipe, manifest, names[:i])
        reason = stage.no_work(recipe)
        if reason is not None:
            previous = manifest.get("stages", {}).get(stage.name) or {}
            if previous.get("hash") != ident["hash"] or previous.get("status") != "done":
                # The stage had work before (e.g. variants of removed [[compress]] steps): they go.
                if stage.resets:
                    stage.resets(recipe, run)
                _drop_vanished(run, stage.name)
                ran = ran or bool(previous)
                _write_stage(run, stage.name, {"status": "done", **ident, "finished": time.time(), "no_work": True})
            emit("skip", reason=reason)
            continue
        skip = None if ran else _up_to_date(stage, recipe, run, manifest, ident)
        if skip is not None:
            if not manifest.get("stages", {}).get(stage.name):
                _write_stage(run, stage.name, {"status": "done", **ident, "finished": time.time()})
            emit("skip", reason=skip)
            continue
        ran = True
        _run_one(stage, recipe, run, emit, ident, names[i:], i, len(stages))
    emitter.emit("session", "done", report=str(run.report_json), markdown=str(run.report_md),
                 seconds=round(time.time() - t0, 2))


def _run_one(stage: Stage, recipe: Recipe, run: RunDir, emit: StageEmitter, ident: dict[str, str],
             from_here: list[str], index: int, count: int) -> None:
    """Run one stage, recording its status in the manifest whatever happens."""
    _forget_stages(run, from_here)
    if stage.resets:
        stage.resets(recipe, run)
        _drop_vanished(run, stage.name)
    started, cpu0 = time.time(), time.process_time()
    _write_stage(run, stage.name, {"status": "running", **ident, "started": started})
    emit("start", index=index, of=count)
    seen: list[str] = []
    watcher = _kinds_of(stage.name, seen)
    emit.parent.listeners.append(watcher)
    try:
        stage.run(recipe, run, emit)
    except Interrupted as e:
        _fail(run, stage.name, ident, started, "interrupted", str(e))
        raise Interrupted(f"{str(e).split('; rerun')[0]}; run the same command again to continue") from None
    except KeyboardInterrupt:
        emit("interrupted", message=f"stopped during {stage.name}")
        _fail(run, stage.name, ident, started, "interrupted", "KeyboardInterrupt")
        raise Interrupted(f"stopped during the {stage.name} stage; run the same command again to continue "
                          f"from it") from None
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            _fail_and_report(emit, run, stage.name, ident, started, e)
            raise
        message = (f"disk full while the {stage.name} stage was writing {e.filename or 'its output'}: "
                   f"free some space, then run the same command again to continue from the {stage.name} stage")
        emit("error", message=message)
        _fail(run, stage.name, ident, started, "failed", message)
        raise UserError(message) from None
    except BaseException as e:
        _fail_and_report(emit, run, stage.name, ident, started, e)
        raise
    finally:
        emit.parent.listeners.remove(watcher)
    _drop_vanished(run)
    outputs = [a.get("path") for a in load_manifest(run).get("artifacts", []) if a.get("stage") == stage.name]
    finished = time.time()
    _write_stage(run, stage.name, {"status": "done", **ident, "started": started, "finished": finished,
                                   "seconds": round(finished - started, 3),
                                   "cpu_seconds": round(time.process_time() - cpu0, 3), "outputs": outputs})
    if "done" not in seen:
        emit("done", seconds=round(finished - started, 3))


def _kinds_of(stage: str, seen: list[str]) -> Listener:
    def listener(event: dict[str, Any]) -> None:
        if event["stage"] == stage:
            seen.append(event["kind"])

    return listener


def _fail(run: RunDir, name: str, ident: dict[str, str], started: float, status: str, message: str) -> None:
    # The manifest keeps describing exactly what is on disk: what the stage cleared and did not rebuild goes.
    _drop_vanished(run)
    _write_stage(run, name, {"status": status, **ident, "started": started, "finished": time.time(),
                             "error": message})


def _fail_and_report(emit: StageEmitter, run: RunDir, name: str, ident: dict[str, str], started: float,
                     e: BaseException) -> None:
    first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not isinstance(e, ToolkitError):
        first = f"{type(e).__name__}: {first}"
    emit("error", message=first)
    _fail(run, name, ident, started, "failed", first)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a session the way Ctrl-C does (training installs its own handler to checkpoint first)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


def stage_states(run: RunDir) -> dict[str, str]:
    """Each stage's last recorded status (done | failed | interrupted | running | pending), for front ends."""
    records = load_manifest(run).get("stages", {})
    return {s.name: records.get(s.name, {}).get("status", "pending") for s in STAGES}
