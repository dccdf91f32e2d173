"""What the compression methods that train (distill, prune, QAT) share: short fine-tunes through the trainer's own
loop.

A step's fine-tune is ``toolkit.train.loop.fit`` unchanged: the same optimizer, schedule, precision, gradient
clipping, validation and atomic checkpoints. Only the paths differ: :class:`VariantRunDir` points fit's
``checkpoints`` / ``metrics`` / ``final`` into ``variants/<name>/``, so a step's checkpoints land in
``variants/<name>/checkpoints/step-NNNNNN/`` and its metrics in ``variants/<name>/metrics.jsonl``.

The step's ``epochs`` / ``max_steps`` / ``lr`` / ``batch_size`` override ``[train]`` (0 = take [train]'s).
"""
from __future__ import annotations

import dataclasses
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from toolkit.config import Recipe, config_hash
from toolkit.errors import UserError
from toolkit.rundir import RunDir, atomic_write_json
from toolkit.schema import setting
from toolkit.steps import StepConfig, step_to_dict


@dataclass
class FinetuneKeys(StepConfig):
    """Keys of every step that fine-tunes (distill, prune); 0 = the value in [train]."""

    epochs: float = setting(0.0, "fine-tune epochs (0 = [train] epochs; ignored when max_steps > 0)")
    max_steps: int = setting(0, "fine-tune optimizer steps (0 = from epochs)")
    lr: float = setting(0.0, "fine-tune peak learning rate (0 = [train] lr)")
    batch_size: int = setting(0, "fine-tune batch size (0 = [train] batch_size)")

    def check(self, where: str) -> None:
        for key in ("epochs", "max_steps", "lr", "batch_size"):
            value = getattr(self, key)
            if value < 0:
                raise UserError(f"{where}: {key} = {value!r} must be >= 0 (0 = the value in [train])")


class VariantRunDir(RunDir):
    """The run directory as ``fit`` sees it for one step: training paths inside ``variants/<name>/``."""

    def __init__(self, run: RunDir, name: str) -> None:
        super().__init__(run.path)
        self.name = name

    checkpoints = property(lambda self: self.variant(self.name) / "checkpoints")
    metrics = property(lambda self: self.variant(self.name) / "metrics.jsonl")
    final = property(lambda self: self.variant(self.name) / "model")


class TaggedEmitter:
    """A StageEmitter that adds fields (variant, phase) to every event, so a step's fine-tune events are
    told apart from the stage's own."""

    def __init__(self, emit: Any, **tags: Any) -> None:
        self.emit, self.tags = emit, tags

    def __call__(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self.emit(kind, **{**self.tags, **fields})

    def log(self, message: str, level: str = "info") -> None:
        self.emit("log", level=level, message=message, **self.tags)


def train_settings(recipe: Recipe, *, epochs: float = 0, max_steps: int = 0, lr: float = 0.0,
                   batch_size: int = 0) -> Recipe:
    """``recipe`` with [train] replaced by a step's fine-tune settings (0 keeps [train]'s value).

    A step that sets ``epochs`` trains for epochs even when [train] sets max_steps.
    """
    t = recipe.train
    new_max = max_steps if max_steps > 0 else (0 if epochs > 0 else t.max_steps)
    new_batch = batch_size or t.batch_size
    train = dataclasses.replace(t, epochs=epochs or t.epochs, max_steps=new_max, lr=lr or t.lr,
                                batch_size=new_batch, grad_accum=min(t.grad_accum, new_batch), early_stopping=0)
    return dataclasses.replace(recipe, train=train)


def device_for(recipe: Recipe):
    """The device ``fit`` will train on (the same rule as the training loop)."""
    import torch

    want = recipe.train.device
    if want == "cuda" and not torch.cuda.is_available():
        raise UserError("train.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
    return torch.device("cuda" if want in ("auto", "cuda") and torch.cuda.is_available() else "cpu")


def finetune(ctx: Any, step: StepConfig, prepared: Any, model: Any, *, recipe: Recipe | None = None,
             phase: str = "finetune", sources: tuple[Path, ...] = (),
             on_resume: Callable[[int], None] | None = None) -> Any:
    """Fine-tune ``model`` on ``prepared``'s data with the training loop; checkpoints in variants/<name>/.

    Args:
        ctx: the compression context (recipe, run, emit).
        step: the step (its name places the files; its settings decide whether old checkpoints can resume).
        prepared: the task's Prepared (data, collate, evaluation); its model is replaced by ``model``.
        model: what ``fit`` trains: ``model(**batch).loss`` is minimised (a distillation wrapper, a masked model).
        recipe: the recipe whose [train] is used (default: ``train_settings`` of the step's keys).
        phase: a word for the events ("distill", "recovery", "qat").
        sources: model folders the training starts from (parent, teacher): their weights are part of what a
            checkpoint must match to be resumed.
        on_resume: called with the step a resumed fine-tune starts from (schedules that depend on the step).

    Returns:
        fit's TrainResult (final validation metrics, steps done). The model is left on the CPU.

    An interrupted step resumes from its newest valid checkpoint when it is rerun with the same step settings,
    [train] settings and parent weights (``checkpoints/finetune.json`` records them); otherwise, or when
    ``ctx.cache["resume"]`` is False, old checkpoints are removed first, so a step never mixes two trainings.
    """
    from toolkit.rundir import sha256_file
    from toolkit.train import checkpoint as ckpt_io
    from toolkit.train.loop import fit, seed_everything

    if recipe is None:
        recipe = train_settings(ctx.recipe, epochs=getattr(step, "epochs", 0), max_steps=getattr(step, "max_steps", 0),
                                lr=getattr(step, "lr", 0.0), batch_size=getattr(step, "batch_size", 0))
    run = VariantRunDir(ctx.run, step.name)
    stamp_file = run.checkpoints / "finetune.json"
    keys = step_to_dict(step) if dataclasses.is_dataclass(step) else dict(vars(step))
    weights = [w for folder in sources for w in sorted(Path(folder).glob("*.safetensors"))]
    stamp = {"step": config_hash(keys), "train": config_hash(recipe.train), "phase": phase,
             "parent": [sha256_file(w) for w in weights]}
    old = json.loads(stamp_file.read_text()) if stamp_file.is_file() else None
    resume = (ctx.cache.get("resume") is not False and old == stamp
              and ckpt_io.newest_valid(run.checkpoints, warn=lambda m: None) is not None)
    if not resume:
        shutil.rmtree(run.checkpoints, ignore_errors=True)
        run.metrics.unlink(missing_ok=True)
    atomic_write_json(stamp_file, stamp)
    if recipe.train.threads:
        import torch

        torch.set_num_threads(recipe.train.threads)
    seed_everything(recipe.seed, recipe.train.deterministic)
    emit = TaggedEmitter(ctx.emit, variant=step.name, phase=phase)
    if resume:
        newest = ckpt_io.newest_valid(run.checkpoints, warn=lambda m: emit.log(m, "warning"))
        emit.log(f"{step.name}: resuming the {phase} fine-tune from {newest.path.name}")
        if on_resume is not None:
            on_resume(newest.step)
    job = dataclasses.replace(prepared, model=model)
    try:
        result = fit(recipe, ctx.task, job, run, emit, resume=resume)
    finally:
        model.to("cpu")
    return result


def weights_bytes(model_dir: Path) -> int:
    """Bytes of the weight files in a saved model folder (safetensors / bin)."""
    return sum(p.stat().st_size for p in Path(model_dir).iterdir()
               if p.is_file() and (p.suffix in (".safetensors", ".bin") or p.name.endswith(".index.json")))


def pytorch_parent(parent: Any, where: str, what: str) -> Path:
    """The parent's PyTorch model folder, or a UserError saying that ``what`` needs one."""
    if not parent.has_pytorch:
        raise UserError(f"{where}: {what} needs a PyTorch model, but variant '{parent.name}' is ONNX only "
                        f"({parent.onnx}); put this step before the ONNX Runtime steps, or set from = 'base'")
    return Path(parent.model_dir)
