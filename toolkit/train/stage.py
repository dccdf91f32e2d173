"""The train stage: data → task → fit → ``train/final`` and the baseline variant ``variants/base``.

Under torchrun every rank runs it (each trains on its shard); rank 0 alone writes. With ``[train.lora]``
the model trains as a frozen base plus adapters; ``train/adapter/`` keeps the adapter and ``train/final/``
the verified merge, an ordinary model for compression and export.
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch

from toolkit.config import Recipe, config_hash, dumps_toml, with_absolute_paths
from toolkit.errors import UserError
from toolkit.events import StageEmitter, null_emitter
from toolkit.rundir import RunDir, atomic_dir, atomic_write_text, init_manifest, record_artifact, update_manifest
from toolkit.train import checkpoint as ckpt_io
from toolkit.train import distributed
from toolkit.train.loop import TrainResult, fit, seed_everything

STAGE = "train"


def train_config_hash(recipe: Recipe) -> str:
    """What the trained model depends on: seed, task, data, model and train settings."""
    from toolkit.config import hashed_dict

    d = hashed_dict(recipe)
    return config_hash({k: d[k] for k in ("seed", "task", "data", "model", "train")})


def prepare_run_dir(recipe: Recipe, run: RunDir, force: bool) -> None:
    """Refuse another recipe's run directory (unless --force, which starts over); write recipe.toml."""
    run.check_owner(recipe.name, recipe.task, force)
    if force:
        run.reset()
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.recipe, dumps_toml(with_absolute_paths(recipe)))
    init_manifest(run, recipe.name, recipe.task, recipe.seed)


def run_train(recipe: Recipe, run: RunDir, emit: StageEmitter, resume: bool = False) -> TrainResult | None:
    """Train per the recipe into ``run``; returns None when ``[train] enabled = false`` (model used as given).

    Without ``resume``, a run directory that already holds checkpoints is refused (UserError suggesting
    --resume or --force), so an earlier run is never overwritten by accident. Under DDP (see
    ``distributed.init``) every rank calls this; the others return after training, having written nothing.
    """
    from toolkit.data import load_splits
    from toolkit.tasks import get_task
    from toolkit.train import lora

    env = distributed.current()
    if not env.is_main:
        emit = null_emitter(STAGE)
    lora.check_config(recipe)
    if not resume and ckpt_io.list_checkpoints(run.checkpoints):
        raise UserError(f"{run.checkpoints}: holds checkpoints of an earlier run; use --resume to continue it "
                        f"or --force to start over")
    from toolkit.rundir import load_manifest

    chash = train_config_hash(recipe)
    previous = load_manifest(run).get("train_config_hash")
    if resume and previous and previous != chash:
        raise UserError(f"{run.checkpoints}: the checkpoints were made with other data/model/train settings than "
                        f"this recipe's; undo the change to resume, or use --force to start over")
    if resume:
        ckpt_io.check_world_size(run.checkpoints, env.world)  # say so now, not after building the model
    if env.is_main:
        update_manifest(run, train_config_hash=chash)
    if recipe.model.source.endswith(".onnx"):
        return _onnx_base(recipe, run, emit) if env.is_main else None
    if recipe.train.threads:
        torch.set_num_threads(recipe.train.threads)
    # Each rank draws its own dropout/augmentation stream (rank 0's is the single-process one); model
    # initialisation is seeded separately by the tasks, so every rank builds the same model.
    seed_everything(recipe.seed + env.rank, recipe.train.deterministic)
    splits = load_splits(recipe, log=emit.log)
    for note in splits.notes:
        emit.log(note)
    emit.log("data: " + ", ".join(f"{k} {v}" for k, v in splits.sizes().items()))
    if env.is_main:
        update_manifest(run, data={"fingerprints": splits.fingerprints, "sources": splits.sources,
                                   "sizes": splits.sizes(), "labels": splits.labels})
    task = get_task(recipe.task)
    with distributed.main_first(env):  # rank 0 may train and cache a tokenizer; the others then load it
        prepared = task.prepare(recipe, splits, run.train)
    emit.log(f"model: {prepared.info.get('model_class', type(prepared.model).__name__)}, "
             f"{sum(p.numel() for p in prepared.model.parameters()):,} parameters")
    setup = None
    if lora.enabled(recipe):
        prepared.model, setup = lora.apply_lora(recipe, prepared.model)
        _check_base(run, setup, resume)
        emit.log(f"LoRA r={setup.r} on {', '.join(setup.target_modules)} ({setup.adapted_modules} layers)"
                 + (f", training {', '.join(setup.modules_to_save)} in full" if setup.modules_to_save else "")
                 + f": {setup.trainable_params:,} of {setup.total_params:,} parameters train "
                 f"({setup.trainable_fraction:.2%})")
        emit("metric", values={"step": 0, "trainable_params": setup.trainable_params,
                               "total_params": setup.total_params, "trainable_fraction": setup.trainable_fraction})
        if env.is_main:
            update_manifest(run, lora=setup.info())
    if env.active:
        emit.log(f"distributed: {env.world} processes ({env.backend}); batch_size {recipe.train.batch_size} is "
                 f"split into {recipe.train.batch_size // env.world} per process")

    result = None
    if recipe.train.enabled:
        meta = {"base": setup.base} if setup else None
        result = fit(recipe, task, prepared, run, emit, resume=resume, dist=env, meta=meta)
        prepared.model.to("cpu")
    if not env.is_main:
        return result
    if setup is not None:
        _save_adapter_and_merge(recipe, run, prepared, setup, chash, emit)
    with atomic_dir(run.final) as tmp:
        prepared.save(prepared.model, tmp)
    record_artifact(run, "train/final", "model", run.final, STAGE, parent=None, config_hash=chash,
                    info=prepared.info)
    base = run.variant("base") / "model"
    with atomic_dir(base) as tmp:
        shutil.copytree(run.final, tmp, dirs_exist_ok=True, copy_function=_link_or_copy)
    from toolkit.variants import Variant

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


def _check_base(run: RunDir, setup: Any, resume: bool) -> None:
    """On --resume, the LoRA base must be the one the checkpoints' adapters were trained on."""
    from toolkit.rundir import load_manifest

    before = load_manifest(run).get("lora", {}).get("base", {})
    if resume and before.get("sha256") and before.get("sha256") != setup.base["sha256"]:
        raise UserError(f"{setup.base['path']}: the LoRA base model changed since the checkpoints were made "
                        f"(sha256 {before['sha256'][:12]}… then, {setup.base['sha256'][:12]}… now); restore it "
                        f"or use --force to start over")


def _save_adapter_and_merge(recipe: Recipe, run: RunDir, prepared: Any, setup: Any, chash: str,
                            emit: StageEmitter) -> None:
    """train/adapter/ (the PeftModel's save_pretrained), then the verified merge into prepared.model."""
    from toolkit.train import lora

    adapter = run.train / "adapter"
    with atomic_dir(adapter) as tmp:
        prepared.model.save_pretrained(str(tmp))
    record_artifact(run, "train/adapter", "adapter", adapter, STAGE, parent=None, config_hash=chash,
                    base=setup.base)
    samples = next((s for s in (prepared.val_set, prepared.eval_set, prepared.train_set) if len(s)), [])
    n = min(len(samples), recipe.export.verify_samples)
    prepared.model, check = lora.merge_and_verify(prepared.model, [samples[i] for i in range(n)], prepared.collate)
    emit.log(f"LoRA merged into the base: {check['changed_modules']} layers changed; outputs match the adapter "
             f"model within {check['max_abs_diff']:.2g} on {check['samples']} validation samples")
    update_manifest(run, lora={**setup.info(), "adapter": "train/adapter", "merge": check})
    prepared.info.update(lora_r=setup.r, trainable_fraction=setup.trainable_fraction)  # shown with variant base


def _onnx_base(recipe: Recipe, run: RunDir, emit: StageEmitter) -> None:
    """An .onnx model.source: no training; it becomes the baseline variant for the ONNX Runtime methods."""
    from toolkit.rundir import atomic_write_bytes
    from toolkit.variants import Variant

    src = recipe.resolve_path(recipe.model.source)
    if recipe.train.enabled:
        raise UserError(f"model.source = {recipe.model.source}: an ONNX file cannot be trained; "
                        f"set [train] enabled = false to compress it as given")
    if not src.is_file():
        raise UserError(f"{src}: no such ONNX file; check model.source in the recipe")
    try:
        import onnx

        onnx.load(str(src), load_external_data=False)
    except Exception as e:  # onnx raises DecodeError and others for a file that is not a model
        from toolkit.errors import first_line

        raise UserError(f"{src}: model.source is not an ONNX model ({first_line(e, 120)}); export one with "
                        f"optimum-cli or torch.onnx.export") from None
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
