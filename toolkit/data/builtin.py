"""Built-in data sets (``builtin:<name>``): small sets that ship with installed libraries, never downloaded."""
from __future__ import annotations

from typing import Callable

import numpy as np

from toolkit.data.readers import Part
from toolkit.errors import UserError


def _digits() -> Part:
    """scikit-learn's 8x8 handwritten digits (1,797 images; pixel values 0..16, scaled to [0, 1])."""
    from sklearn.datasets import load_digits  # reads a file inside scikit-learn: no network

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)  # (N, 8, 8)
    examples = [{"image": img, "label": str(int(y))} for img, y in zip(images, bunch.target)]
    return Part(examples, [f"image {i}" for i in range(len(examples))], "builtin:digits")


# name -> (what its examples are: "images" with labels, loader)
BUILTINS: dict[str, tuple[str, Callable[[], Part]]] = {"digits": ("images", _digits)}


def load_builtin(value: str, task: str, key: str, images: bool) -> Part:
    """The built-in set ``value`` ("builtin:<name>") for ``task`` (which reads images or not).

    Raises:
        UserError: an unknown name (the known ones are listed) or a set of examples the task does not read.
    """
    name = value.split(":", 1)[1]
    if name not in BUILTINS:
        known = ", ".join(f"builtin:{n}" for n in BUILTINS)
        raise UserError(f"{key} = '{value}': no such built-in data set; known: {known}")
    kind, loader = BUILTINS[name]
    if (kind == "images") != images:
        raise UserError(f"{key} = '{value}' is a set of labelled images, but the recipe's task is {task}, "
                        f"which reads {'images' if images else 'text'}")
    return loader()
