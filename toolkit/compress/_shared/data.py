"""The run's data encoded for a variant, and the validation metric of an ONNX graph or a torch module on it.

The accuracy guard compares a compressed variant with its parent on the *validation* split, in the runtime the
variant runs in: ONNX variants through ONNX Runtime, PyTorch ones through the task's own evaluate. An
encoder-decoder's ONNX variant is two graphs: its metric comes from both, teacher-forced
(:func:`toolkit.onnxrt.seq2seq_logits`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np

from toolkit.errors import UserError
from toolkit.variants import bundle_source, config_of, nearest_model_dir

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
    decoder_ids: tuple[int, int] | None = None
    """encoder-decoders: (decoder_start_token_id, pad_token_id) from the model's config, for teacher forcing
    through the ONNX graphs; None for single-graph tasks"""

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
        # the loaded model's config: the ids its PyTorch forward shifts labels with (the task may set a pad id)
        config = getattr(prepared.model, "config", None)
    else:
        splits = ctx.splits()
        folder = bundle_source(variant, variants)
        bundled = task.encode_bundle(folder, ctx.recipe.data.max_length, splits.labels,
                                     {"train": splits.train, "validation": splits.validation})
        data = SplitData(task, bundled.sets["train"], bundled.sets["validation"], bundled.collate, metric,
                         task.classifies)
        config = None
    if len(task.graphs) > 1:
        from toolkit import onnxrt

        folder = bundle_source(variant, variants)
        config = config.to_dict() if hasattr(config, "to_dict") else config_of(variant, variants)
        data.decoder_ids = onnxrt.decoder_ids(config, f"{folder}/config.json" if folder else "the model's config.json")
    ctx.cache[key] = data
    return data


def batches(items: Sequence[Any], collate: Callable, batch_size: int = EVAL_BATCH) -> Iterator[dict[str, Any]]:
    """Collated batches of ``items``, in order."""
    for start in range(0, len(items), batch_size):
        yield collate([items[i] for i in range(start, min(start + batch_size, len(items)))])


def evaluate_onnx(path: Path | str | Mapping[str, Path], data: SplitData, items: Sequence[Any] | None = None,
                  threads: int | None = None) -> dict[str, float]:
    """The task's metric of an ONNX graph on the validation split (or ``items``) through ONNX Runtime.

    ``path``: one graph, or the graphs by role (``{"model": ...}``, or an encoder-decoder's ``{"encoder": ...,
    "decoder": ...}``, whose logits are teacher-forced through both).
    """
    from toolkit import onnxrt

    items = data.validation if items is None else items
    graphs = dict(path) if isinstance(path, Mapping) else {"model": Path(path)}
    if "model" in graphs:
        session = onnxrt.open_session(graphs["model"], threads=threads)
        pairs = [(onnxrt.logits(session, b, graphs["model"]), b) for b in batches(items, data.collate)]
        return data.task.metric_from_logits(pairs)
    if data.decoder_ids is None:  # split_data sets them for every task with two graphs
        raise UserError(f"{graphs.get('encoder')}: no decoder start/pad ids to teacher-force the decoder with")
    encoder = onnxrt.open_session(graphs["encoder"], threads=threads)
    decoder = onnxrt.open_session(graphs["decoder"], threads=threads)
    pairs = [(onnxrt.seq2seq_logits(encoder, decoder, b, *data.decoder_ids, graphs["decoder"]), b)
             for b in batches(items, data.collate)]
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
