"""Tasks: one module per task, each registered under the recipe's ``task`` name. A task owns everything that differs
by task (see ``base.Task``): data fields, the model class, metrics and the main metric, export inputs, token masks.

    from toolkit.tasks import get_task
    task = get_task(recipe.task)
    prepared = task.prepare(recipe, splits, work_dir)

The task modules import torch (their collate functions build tensors); transformers is imported when a task prepares
or loads a model.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, TypeVar

from toolkit.registry import TASKS
from toolkit.tasks.base import Bundled, DataSpec, MainMetric, Prepared, Task

T = TypeVar("T")


def register(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: ``@register("text-classification")`` sets ``cls.name`` and registers an instance."""

    def deco(cls: type[T]) -> type[T]:
        cls.name = name  # type: ignore[attr-defined]
        TASKS.add(name, cls())
        return cls

    return deco


def get_task(name: str) -> Task:
    """The registered task called ``name``. Raises UserError naming the valid tasks."""
    return TASKS.get(name, "task")


def as_task(task: "Task | str") -> Task:
    """A Task given as itself or by name (library functions take either)."""
    return get_task(task) if isinstance(task, str) else task


def prepare_folder(recipe: Any, splits: Any, model_dir: Path, work_dir: Path) -> Prepared:
    """The recipe's task prepared for a saved model folder: the model loaded, ``splits`` encoded with its
    tokenizer (what compression and export verification run on)."""
    import dataclasses

    model_cfg = dataclasses.replace(recipe.model, source=str(model_dir))
    return get_task(recipe.task).prepare(dataclasses.replace(recipe, model=model_cfg), splits, work_dir)


__all__ = ["TASKS", "Bundled", "DataSpec", "MainMetric", "Prepared", "Task", "as_task", "get_task", "prepare_folder", "register"]
