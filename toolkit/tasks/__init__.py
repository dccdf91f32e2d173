"""The task registry: one module per task, each registered under the recipe's ``task`` name.

    from toolkit.tasks import get_task
    task = get_task(recipe.task)
    prepared = task.prepare(recipe, splits, work_dir)

Importing this package is cheap: transformers is imported only when a task prepares or loads a model.
"""
from __future__ import annotations

from typing import Callable, TypeVar

from toolkit.errors import UserError, did_you_mean
from toolkit.tasks.base import Prepared, Task

TASKS: dict[str, Task] = {}
"""task name -> task instance; the registry is the only list of tasks"""

T = TypeVar("T")


def register(name: str) -> Callable[[type[T]], type[T]]:
    """Class decorator: ``@register("text-classification")`` sets ``cls.name`` and adds an instance to TASKS."""

    def deco(cls: type[T]) -> type[T]:
        if name in TASKS:
            raise ValueError(f"task {name!r} is registered twice")
        cls.name = name  # type: ignore[attr-defined]
        TASKS[name] = cls()  # type: ignore[assignment]
        return cls

    return deco


def get_task(name: str) -> Task:
    """The registered task called ``name``. Raises UserError naming the valid tasks."""
    try:
        return TASKS[name]
    except KeyError:
        raise UserError(f"task = '{name}' is not a task{did_you_mean(name, sorted(TASKS))}") from None


# Importing the modules registers them (after register() exists, to avoid an import cycle).
from toolkit.tasks import image_classification, language_modeling, seq2seq, text_classification  # noqa: E402,F401

__all__ = ["TASKS", "Prepared", "Task", "get_task", "register"]
