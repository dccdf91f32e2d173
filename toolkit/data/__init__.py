"""The data stage: loading, cleaning, splitting and fingerprinting a recipe's data.

``load_splits(recipe)`` is the one entry point; it returns a ``Splits`` (see ``types.py`` for the examples each
task gets). Modules: ``readers`` (csv/tsv/jsonl/txt and parallel files), ``images`` (image folders, constant
images, ``augment_image``), ``builtin`` (builtin:digits), ``clean`` (text cleaning steps), ``split`` (carving
validation/eval), ``fingerprint`` (sha256 per split), ``load`` (the stage in order).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Callable

from toolkit.data.types import Example, Splits

if TYPE_CHECKING:
    from toolkit.config import Recipe

__all__ = ["Example", "Splits", "load_splits"]


def load_splits(recipe: "Recipe", log: Callable[[str], None] | None = None) -> Splits:
    """Read, clean and split the data a recipe names.

    Args:
        recipe: ``recipe.data`` says where the data is (paths relative to the recipe's folder) and how to clean
            and split it; ``recipe.task`` decides the fields of each example; ``recipe.seed`` the split.
        log: called with progress lines ("train: reading …", "train: 872 examples from …"); what the stage
            did to the data (rows dropped, splits carved, images flagged) is in ``Splits.notes`` instead, for
            the caller to report once.

    Returns:
        the train/validation/eval examples, the class names (classification), sha256 fingerprints per split,
        the notes and where each split came from.

    Raises:
        UserError: missing or empty file, non-UTF-8 or non-JSON line, missing column, unknown label in
            validation/eval data, unreadable image, unknown builtin, too few examples to carve from; the
            message is one line naming the file (and line) and what to do.
    """
    # Imported here: modules that only need the types (tasks, the TUI) should not pay for scikit-learn.
    from toolkit.data.load import load_splits as _load

    return _load(recipe, log)
