"""The contract between a task and every stage: the ``Task`` protocol and the records it hands out.

A task turns the data stage's ``Splits`` into a model and encoded datasets (``Prepared``); every model, built-in or
Hugging Face, is called as ``model(**batch)`` on a batch from ``collate`` that includes ``labels`` and returns an
object with ``.loss`` (mean over the batch) and ``.logits``. Beyond that a task answers everything else that
differs by task (data fields, metrics, export inputs, token masks ...), so no stage compares task names.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Protocol, Sequence

if TYPE_CHECKING:
    import numpy as np
    import torch

    from toolkit.config import DataConfig, Recipe
    from toolkit.data.types import Example, Splits


@dataclass(frozen=True)
class MainMetric:
    """The metric the recommendation weighs, and how its drop against the baseline is measured."""

    name: str
    higher_is_better: bool
    drop: str
    """absolute (fractions) | points (0-100 scale, divided by 100) | relative (fraction of the baseline)"""

    def drop_of(self, baseline: float, value: float) -> float:
        """How much worse ``value`` is than ``baseline`` (negative: better), in the budget's units."""
        if self.drop == "relative":
            worse = (value - baseline) if not self.higher_is_better else (baseline - value)
            return worse / abs(baseline) if baseline else float("inf") if worse > 0 else 0.0
        worse = (baseline - value) if self.higher_is_better else (value - baseline)
        return worse / 100.0 if self.drop == "points" else worse

    def describe(self) -> str:
        return {"absolute": f"{self.name} drop = baseline − variant (fractions)",
                "points": f"{self.name} drop = (baseline − variant) / 100 (points on the 0–100 scale / 100)",
                "relative": f"{self.name} drop = (variant − baseline) / baseline (relative increase; lower is better)",
                }[self.drop]


@dataclass(frozen=True)
class DataSpec:
    """What a task's examples are made of, for the data stage (``toolkit.data``)."""

    images: bool = False
    """reads image folders (and builtin image sets), not text files"""
    text_files: bool = False
    """a .txt file is plain text for it (one example per line)"""
    pairs: bool = False
    """data.train may be two line-aligned files [source, target]"""
    labels: bool = False
    """examples carry a class label: label set, stratified splits, unknown-label checks"""
    contiguous: bool = False
    """validation/eval are carved from the end of the training text, contiguously (not shuffled)"""
    groups: bool = False
    """reads data.group_column (per-group metrics)"""
    text_keys: tuple[str, ...] = ()
    """example fields holding text (cleaned; compared to find eval examples that repeat training ones)"""


@dataclass
class Prepared:
    """A task's model and data, ready for the training loop."""

    model: "torch.nn.Module"
    train_set: Sequence[Any]
    """encoded training items (map-style: indexable, len())"""
    val_set: Sequence[Any]
    eval_set: Sequence[Any]
    collate: Callable[[list[Any]], dict[str, "torch.Tensor"]]
    """list of items -> batch of tensors (with "labels"); must be deterministic (augmentation draws from
    torch's global RNG only, so a checkpoint's RNG state replays it)"""
    primary_metric: str
    """the validation metric early stopping watches, e.g. "accuracy" or "loss" """
    higher_is_better: bool
    save: Callable[["torch.nn.Module", Path], None]
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
    """Everything that differs by task. Stages ask the task; they never compare task names."""

    name: str
    data: DataSpec
    builtins: tuple[str, ...]
    """built-in models for this task, the default first"""
    auto_class: str
    """the transformers Auto class that loads its folders, e.g. "AutoModelForSequenceClassification" """
    main_metric: MainMetric
    secondary_metric: str | None
    """shown beside the main metric (results screen)"""
    metric_names: tuple[str, ...]
    """metrics ``--metric`` / ``score`` accept for it; the suggestions come first"""
    quality: str
    """which evaluator of ``toolkit.eval.evaluate`` measures it: classification | perplexity | generation"""
    classifies: bool
    """predicts one class per example (probabilities, labels.json, a classification head)"""
    kv_cache: bool
    """its ONNX export carries a decoder KV cache (generation), so surgery must keep the config's head count true"""
    graphs: tuple[str, ...]
    """the roles of its ONNX graphs: ("model",) or ("encoder", "decoder")"""
    optimum_task: str
    """the task name optimum's exporters know"""
    causal: bool
    """a causal LM: position ids follow the attention mask and label t is predicted at position t - 1"""

    def fields(self, data: "DataConfig") -> dict[str, tuple[str, str]]:
        """Example field -> (configured column, recipe key) read from table files."""
        ...

    def token_mask(self, batch: dict[str, Any], length: int) -> Any | None:
        """(B, length) float mask of the logits positions that are real tokens; None for one output per example."""
        ...

    def metric_from_logits(self, pairs: Sequence[tuple["np.ndarray", dict[str, Any]]]) -> dict[str, float]:
        """The validation metric from (logits, batch) pairs: accuracy, or token-weighted loss and perplexity."""
        ...

    def dummy_inputs(self, model: Any, batch: int, seq_len: int) -> dict[str, "torch.Tensor"]:
        """Example inputs from the model's config (exporters' default)."""
        ...

    def reference_batch(self, batch: dict[str, "torch.Tensor"], model: Any) -> dict[str, "torch.Tensor"]:
        """A sample batch with every input the task's graphs take (export verification)."""
        ...

    def latency_samples(self, tokenizer: Any, examples: list["Example"], n: int, seq_len: int,
                        pad_id: int, preprocess: dict[str, Any] | None = None) -> dict[str, "np.ndarray"]:
        """Real inputs for latency timing, one row per sample (``preprocess``: the variant's preprocess.json)."""
        ...

    def encode_bundle(self, folder: Path | None, max_length: int, labels: list[str],
                      splits: dict[str, Sequence["Example"]]) -> "Bundled":
        """Encode examples with the files beside an ONNX graph (no PyTorch model): tokenizer, preprocess.json."""
        ...

    def prepare(self, recipe: "Recipe", splits: "Splits", work_dir: Path) -> Prepared:
        """Build (or load from ``recipe.model.source``) the model and encode the splits.

        ``work_dir`` is where a tokenizer trained on the training split may be cached (it must be
        deterministic: the same splits and recipe give the same tokenizer, so a resumed run rebuilds it
        identically). Raises UserError for a model directory that is not a model, etc.
        """
        ...

    def evaluate(self, model: "torch.nn.Module", prepared: Prepared, dataset: Sequence[Any],
                 batch_size: int, device: "torch.device") -> dict[str, float]:
        """Validation metrics on ``dataset`` (always includes "loss" and the primary metric)."""
        ...

    def load(self, model_dir: Path) -> "torch.nn.Module":
        """Load a model directory written by ``Prepared.save``."""
        ...


@dataclass
class Bundled:
    """Examples encoded without a PyTorch model (an ONNX-only chain), as far as evaluation and guards need."""

    sets: dict[str, list[Any]]
    """split name -> encoded items"""
    collate: Callable[[list[Any]], dict[str, Any]]
    labels: list[str] = field(default_factory=list)
    tokenizer: Any = None
    preprocess: dict[str, Any] = field(default_factory=dict)
    encode: Callable[[Sequence[Any], str], list[Any]] | None = None
    """examples -> items as ``sets`` holds them (classifiers: each example needs a "label"; ``toolkit serve``
    encodes its requests with it)"""
