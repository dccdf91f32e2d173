"""Carving validation/eval out of the training data, and the order of class names.

Classification splits are stratified by label and seeded (``recipe.seed``) with scikit-learn's
``train_test_split``; when a class has too few members to be spread over the parts, the split falls back to an
unstratified one and says so. Seq2seq splits are seeded and unstratified. Language modelling carves contiguous
blocks from the end (validation, then eval, as nanoGPT does): a random split of lines would put neighbouring
lines of the same passage on both sides. Each part keeps the file's order.
"""
from __future__ import annotations

import math
import re
from typing import Sequence

from toolkit.errors import UserError


def natural_key(name: str) -> tuple:
    """Sort key that orders numbers by value: "2" < "10", "class2" < "class10"."""
    return tuple((0, int(t), t) if t.isdigit() else (1, 0, t) for t in re.split(r"(\d+)", name) if t)


def natural_sorted(names: Sequence[str]) -> list[str]:
    return sorted(set(names), key=natural_key)


def carve_size(n: int, fraction: float) -> int:
    """How many of ``n`` items a fraction is: rounded half up (at least one when the fraction is not 0).

    Rounding is done on a value rounded to 6 decimals first, so that 90 * 0.2 / 0.9 is 20, not 21.
    """
    if fraction <= 0:
        return 0
    return max(1, math.floor(round(n * fraction, 6) + 0.5))


def carve(n: int, k: int, seed: int, labels: Sequence[str] | None, contiguous: bool,
          what: str, source: str) -> tuple[list[int], list[int], str | None]:
    """Split ``range(n)`` into (kept, carved) index lists, ``k`` of them carved.

    Args:
        labels: per-item class names to stratify on, or None.
        contiguous: carve the last items instead of a random sample (language modelling).
        what: the carved split's name, for messages; source: the data's name, for messages.

    Returns:
        kept and carved indices, each in increasing order, and a note when stratification had to be dropped.

    Raises:
        UserError: too few items to carve from (nothing would be left to train on).
    """
    if k <= 0:
        return list(range(n)), [], None
    if k >= n:
        raise too_few(n, what, source)
    if contiguous:
        return list(range(n - k)), list(range(n - k, n)), None
    from sklearn.model_selection import train_test_split

    index = list(range(n))
    note = None
    if labels is not None:
        try:
            kept, carved = train_test_split(index, test_size=k, random_state=seed, stratify=list(labels))
            return sorted(kept), sorted(carved), None
        except ValueError as e:
            # e.g. "The least populated class in y has only 1 member" or a carve smaller than the class count
            note = f"{what} carved from {source} without stratification: {e}"
    kept, carved = train_test_split(index, test_size=k, random_state=seed)
    return sorted(kept), sorted(carved), note


def too_few(n: int, what: str | list[str], source: str) -> UserError:
    """The error for training data too small to carve ``what`` (a split name or several) from."""
    names = [what] if isinstance(what, str) else what
    return UserError(f"{source}: {n} examples are too few to carve {' and '.join(names)} from; add data or name "
                     f"{' and '.join('data.' + w for w in names)} in the recipe")
