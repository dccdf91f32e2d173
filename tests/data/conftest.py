"""Helpers for the data-stage tests: recipes built in code, and small image folders written with Pillow."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np
import pytest

from toolkit.config import Recipe, recipe_from_dict

DATA = Path(__file__).resolve().parents[1] / "fixtures" / "data"


@pytest.fixture
def data_dir() -> Path:
    """tests/fixtures/data: the committed data files, good and broken."""
    return DATA


@pytest.fixture
def make_recipe() -> Callable[..., Recipe]:
    """make_recipe(task=..., seed=..., train=..., ...): a validated Recipe; keyword arguments go to [data]."""

    def make(task: str = "text-classification", seed: int = 0, **data: Any) -> Recipe:
        data = {k: (str(v) if isinstance(v, Path) else [str(x) for x in v] if isinstance(v, tuple) else v)
                for k, v in data.items()}
        return recipe_from_dict({"task": task, "seed": seed, "data": data}, file="x.toml")

    return make


@pytest.fixture
def write_images() -> Callable[..., Path]:
    """write_images(root, {"cat": [array, ...], ...}): a class-per-subfolder image folder of PNGs.

    Arrays are uint8, (H, W) for grayscale or (H, W, 3) for colour; files are named 0.png, 1.png, ….
    """
    from PIL import Image

    def write(root: Path, classes: dict[str, list[np.ndarray]]) -> Path:
        for name, images in classes.items():
            (root / name).mkdir(parents=True, exist_ok=True)
            for i, a in enumerate(images):
                Image.fromarray(a.astype(np.uint8)).save(root / name / f"{i}.png")
        return root

    return write
