"""The run's data encoded for a variant, and the validation metric of an ONNX graph or a torch module on it.

The accuracy guard compares a compressed variant with its parent on the *validation* split, in the runtime the
variant runs in: ONNX variants through ONNX Runtime, PyTorch ones through the task's own evaluate.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import numpy as np

from toolkit.variants import bundle_source, nearest_model_dir

EVAL_BATCH = 32


@dataclass
class SplitData:
    """Encoded examples of the run's splits (with the tokenizer of the variant's model) and how to batch them."""

    task: Any
    """the Task"""
    train: Sequence[Any]
    validation: Sequence[Any]
    collate: Callable[[list[Any]], dict[str, Any]]
    primary_metric: str
    """the task's main metric as the guard measures it: "accuracy" (higher is better) or "perplexity" (lower)"""
    higher_is_better: bool

    def sample(self, split: str, n: int, seed: int) -> list[Any]:
        """``n`` examples of ``split`` drawn without replacement with ``seed`` (all of them when fewer)."""
        items = self.train if split == "train" else self.validation
        if n >= len(items):
            return list(items)
        order = np.random.default_rng(seed).permutation(len(items))[:n]
        return [items[int(i)] for i in sorted(order)]


def split_data(ctx: Any, variant: Any) -> SplitData:
    """The run's data encoded for ``variant`` (cached per model folder in ``ctx.cache``).

    A chain without a model folder (an ONNX ``model.source``) is encoded by the task from the files beside the
    ONNX graph (tokenizer, preprocess.json, labels.json).

    Raises:
        UserError: text data and no tokenizer to encode it with.
    """
    variants = ctx.variants()
    model_dir = nearest_model_dir(variant, variants)
    key = f"split_data:{model_dir}"
    if key in ctx.cache:
        return ctx.cache[key]
    task = ctx.task
    metric = "accuracy" if task.classifies else "perplexity"
    if model_dir is not None:
        prepared = ctx.prepare(model_dir)
        data = SplitData(task, prepared.train_set, prepared.val_set, prepared.collate, metric, task.classifies)
    else:
        splits = ctx.splits()
        folder = bundle_source(variant, variants)
        bundled = task.encode_bundle(folder, ctx.recipe.data.max_length, splits.labels,
                                     {"train": splits.train, "validation": splits.validation})
        data = SplitData(task, bundled.sets["train"], bundled.sets["validation"], bundled.collate, metric,
                         task.classifies)
    ctx.cache[key] = data
    return data


def batches(items: Sequence[Any], collate: Callable, batch_size: int = EVAL_BATCH) -> Iterator[dict[str, Any]]:
    """Collated batches of ``items``, in order."""
    for start in range(0, len(items), batch_size):
        yield collate([items[i] for i in range(start, min(start + batch_size, len(items)))])


def evaluate_onnx(path: Path | str, data: SplitData, items: Sequence[Any] | None = None,
                  threads: int | None = None) -> dict[str, float]:
    """The task's metric of an ONNX graph on the validation split (or ``items``) through ONNX Runtime."""
    from toolkit import onnxrt

    session = onnxrt.open_session(path, threads=threads)
    items = data.validation if items is None else items
    pairs = [(onnxrt.logits(session, b, path), b) for b in batches(items, data.collate)]
    return data.task.metric_from_logits(pairs)


def evaluate_torch(model: Any, data: SplitData, items: Sequence[Any] | None = None) -> dict[str, float]:
    """The same metric for a torch module (an HF model or a captured graph returning logits), on CPU."""
    import torch

    from toolkit.export.logits import Logits

    items = data.validation if items is None else items
    pairs = []
    with torch.no_grad():
        for b in batches(items, data.collate):
            inputs = {k: v for k, v in b.items() if k != "labels"}
            out = Logits(model, list(inputs), data.task.causal)(*inputs.values())
            pairs.append((out.float().numpy(), b))
    return data.task.metric_from_logits(pairs)


def cosine_similarity(a: np.ndarray, b: np.ndarray) -> float:
    """Mean cosine similarity of two outputs' rows (last axis)."""
    a2 = np.asarray(a, np.float64).reshape(-1, np.shape(a)[-1])
    b2 = np.asarray(b, np.float64).reshape(-1, np.shape(b)[-1])
    norms = np.linalg.norm(a2, axis=-1) * np.linalg.norm(b2, axis=-1)
    return float(((a2 * b2).sum(-1) / np.maximum(norms, 1e-12)).mean())
