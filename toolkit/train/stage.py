"""The train stage: data → task → fit → ``train/final`` and the baseline variant ``variants/base``."""
from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch

from toolkit.config import Recipe, config_hash, dumps_toml
from toolkit.errors import UserError
from toolkit.events import StageEmitter
from toolkit.rundir import RunDir, atomic_dir, atomic_write_text, init_manifest, record_artifact, update_manifest
from toolkit.train import checkpoint as ckpt_io
from toolkit.train.loop import TrainResult, fit, seed_everything

STAGE = "train"


def train_config_hash(recipe: Recipe) -> str:
    """What the trained model depends on: seed, task, data, model and train settings."""
    from toolkit.config import to_dict

    d = to_dict(recipe)
    return config_hash({k: d[k] for k in ("seed", "task", "data", "model", "train")})


def prepare_run_dir(recipe: Recipe, run: RunDir, force: bool) -> None:
    """Refuse another recipe's run directory (unless --force, which starts over); write recipe.toml."""
    run.check_owner(recipe.name, recipe.task, force)
    if force:
        run.reset()
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.recipe, dumps_toml(recipe))
    init_manifest(run, recipe.name, recipe.task, recipe.seed)


def run_train(recipe: Recipe, run: RunDir, emit: StageEmitter, resume: bool = False) -> TrainResult | None:
    """Train per the recipe into ``run``; returns None when ``[train] enabled = false`` (model used as given).

    Without ``resume``, a run directory that already holds checkpoints is refused (UserError suggesting
    --resume or --force), so an earlier run is never overwritten by accident.
    """
    from toolkit.data import load_splits
    from toolkit.tasks import get_task

    if not resume and ckpt_io.list_checkpoints(run.checkpoints):
        raise UserError(f"{run.checkpoints}: holds checkpoints of an earlier run; use --resume to continue it "
                        f"or --force to start over")
    from toolkit.rundir import load_manifest

    chash = train_config_hash(recipe)
    previous = load_manifest(run).get("train_config_hash")
    if resume and previous and previous != chash:
        raise UserError(f"{run.checkpoints}: the checkpoints were made with other data/model/train settings than "
                        f"this recipe's; undo the change to resume, or use --force to start over")
    update_manifest(run, train_config_hash=chash)
    if recipe.model.source.endswith(".onnx"):
        return _onnx_base(recipe, run, emit)
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    seed_everything(recipe.seed, recipe.train.deterministic)
    splits = load_splits(recipe, log=emit.log)
    for note in splits.notes:
        emit.log(note)
    emit.log("data: " + ", ".join(f"{k} {v}" for k, v in splits.sizes().items()))
    update_manifest(run, data={"fingerprints": splits.fingerprints, "sources": splits.sources,
                               "sizes": splits.sizes(), "labels": splits.labels})
    task = get_task(recipe.task)
    prepared = task.prepare(recipe, splits, run.train)
    emit.log(f"model: {prepared.info.get('model_class', type(prepared.model).__name__)}, "
             f"{sum(p.numel() for p in prepared.model.parameters()):,} parameters")

    result = None
    if recipe.train.enabled:
        result = fit(recipe, task, prepared, run, emit, resume=resume)
        prepared.model.to("cpu")
    with atomic_dir(run.final) as tmp:
        prepared.save(prepared.model, tmp)
    record_artifact(run, "train/final", "model", run.final, STAGE, parent=None, config_hash=chash,
                    info=prepared.info)
    base = run.variant("base") / "model"
    with atomic_dir(base) as tmp:
        shutil.copytree(run.final, tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
    from toolkit.compress.registry import Variant

    Variant(name="base", parent=None, method="train", path=run.variant("base"), model_dir=base,
            info={k: v for k, v in prepared.info.items() if isinstance(v, (str, int, float, bool, type(None)))}).save()
    record_artifact(run, "base", "variant", base, STAGE, parent=None, config_hash=chash, method="train")
    if result is not None:
        update_manifest(run, train={"steps": result.state.step, "skipped_steps": result.state.skipped_steps,
                                    "stopped": result.state.stopped, "validation": result.validation,
                                    "samples_per_s": result.samples_per_s})
    emit("artifact", path=str(run.final), what="model")
    emit("done", final=str(run.final), validation=result.validation if result else {})
    return result


def _onnx_base(recipe: Recipe, run: RunDir, emit: StageEmitter) -> None:
    """An .onnx model.source: no training; it becomes the baseline variant for the ONNX Runtime methods."""
    from toolkit.compress.registry import Variant
    from toolkit.rundir import atomic_write_bytes

    src = recipe.resolve_path(recipe.model.source)
    if recipe.train.enabled:
        raise UserError(f"model.source = {recipe.model.source}: an ONNX file cannot be trained; "
                        f"set [train] enabled = false to compress it as given")
    if not src.is_file():
        raise UserError(f"{src}: no such ONNX file; check model.source in the recipe")
    target = run.variant("base") / "model.onnx"
    atomic_write_bytes(target, src.read_bytes())
    Variant(name="base", parent=None, method="given", path=run.variant("base"), onnx=target,
            info={"source": str(src)}).save()
    record_artifact(run, "base", "variant", target, STAGE, parent=None, config_hash=train_config_hash(recipe),
                    method="given")
    emit("done", final=str(target), validation={})
    return None


def _link_or_copy(src: str, dst: str) -> str:
    # Hard links: the baseline variant costs no disk; both names point at the same verified bytes.
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)
    return dst


def has_finished(run: RunDir, recipe: Recipe) -> bool:
    """True when train/final exists for exactly this recipe's data/model/train settings."""
    from toolkit.rundir import load_manifest

    if not Path(run.final).is_dir():
        return False
    for a in load_manifest(run).get("artifacts", []):
        if a.get("name") == "train/final":
            return a.get("config_hash") == train_config_hash(recipe)
    return False
