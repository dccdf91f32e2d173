"""The contract between a task and the training loop (and, later, compression and evaluation).

A task turns the data stage's ``Splits`` into a model and encoded datasets. Every model, built-in or Hugging
Face, is called as ``model(**batch)`` on a batch from ``collate`` that includes ``labels`` and returns an
object with ``.loss`` (mean over the batch) and ``.logits``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Protocol, Sequence

import torch

from toolkit.config import Recipe
from toolkit.data.types import Splits


@dataclass
class Prepared:
    """A task's model and data, ready for the training loop."""

    model: torch.nn.Module
    train_set: Sequence[Any]
    """encoded training items (map-style: indexable, len())"""
    val_set: Sequence[Any]
    eval_set: Sequence[Any]
    collate: Callable[[list[Any]], dict[str, torch.Tensor]]
    """list of items -> batch of tensors (with "labels"); must be deterministic (augmentation draws from
    torch's global RNG only, so a checkpoint's RNG state replays it)"""
    primary_metric: str
    """the validation metric early stopping watches, e.g. "accuracy" or "loss" """
    higher_is_better: bool
    save: Callable[[torch.nn.Module, Path], None]
    """write the model as a standard directory (save_pretrained + safetensors, tokenizer, labels.json,
    preprocess.json) that from_pretrained and other tools load"""
    info: dict[str, Any] = field(default_factory=dict)
    """what was built: model class, parameter count, tokenizer (trained or loaded), vocab size"""
    # Added after the first version; all optional, so older constructors keep working.
    tokenizer: Any = None
    """the text tokenizer (a transformers tokenizer) or None for images: export and eval need it"""
    labels: list[str] = field(default_factory=list)
    """class names in id order (classification; usually ``Splits.labels``, but a loaded model folder's
    own order wins when it holds the same classes)"""
    preprocess: dict[str, Any] = field(default_factory=dict)
    """what ``save`` writes to preprocess.json (max_length, image size and scale, ...)"""


class Task(Protocol):
    name: str

    def prepare(self, recipe: Recipe, splits: Splits, work_dir: Path) -> Prepared:
        """Build (or load from ``recipe.model.source``) the model and encode the splits.

        ``work_dir`` is where a tokenizer trained on the training split may be cached (it must be
        deterministic: the same splits and recipe give the same tokenizer, so a resumed run rebuilds it
        identically). Raises UserError for a model directory that is not a model, etc.
        """
        ...

    def evaluate(self, model: torch.nn.Module, prepared: Prepared, dataset: Sequence[Any],
                 batch_size: int, device: torch.device) -> dict[str, float]:
        """Validation metrics on ``dataset`` (always includes "loss" and the primary metric)."""
        ...

    def load(self, model_dir: Path) -> torch.nn.Module:
        """Load a model directory written by ``Prepared.save``."""
        ...
