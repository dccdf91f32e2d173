"""Helpers the four tasks share: padding, batching, evaluation loops, writing a model folder's metadata."""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from toolkit.errors import UserError

PREPROCESS_SCHEMA = 1
PAD_MULTIPLE = 8


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch's CPU RNG seeded (a model's initialisation depends only on the recipe's
    seed), then give the caller's RNG state back untouched."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        yield


def pad(seqs: Sequence[Sequence[int]], value: int, cap: int | None = None) -> torch.Tensor:
    """Right-pad to the longest sequence, rounded up to a multiple of 8 (not past ``cap`` or the longest).

    Returns: (B, T) long tensor.
    """
    longest = max(len(s) for s in seqs)
    length = -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE
    if cap is not None:
        length = max(longest, min(length, cap))
    out = torch.full((len(seqs), length), value, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.tensor(s, dtype=torch.long)
    return out


def pad_with_mask(seqs: Sequence[Sequence[int]], pad_id: int,
                  cap: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids, attention_mask), both (B, T)."""
    ids = pad(seqs, pad_id, cap)
    mask = torch.zeros_like(ids)
    for i, s in enumerate(seqs):
        mask[i, : len(s)] = 1
    return ids, mask


def batches(dataset: Sequence[Any], batch_size: int, collate: Callable[[list[Any]], dict[str, torch.Tensor]],
            device: torch.device) -> Iterator[dict[str, torch.Tensor]]:
    """Collated batches in order, on ``device``."""
    for start in range(0, len(dataset), batch_size):
        batch = collate([dataset[i] for i in range(start, min(start + batch_size, len(dataset)))])
        yield {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@contextmanager
def eval_mode(model: torch.nn.Module, device: torch.device) -> Iterator[None]:
    was_training = model.training
    model.to(device)
    model.eval()
    try:
        with torch.inference_mode():
            yield
    finally:
        model.train(was_training)


def evaluate_classification(model: torch.nn.Module, dataset: Sequence[Any], collate: Callable, batch_size: int,
                            device: torch.device) -> dict[str, float]:
    """{"loss": mean cross-entropy per example, "accuracy": fraction correct, "examples": n}."""
    loss_sum, correct, n = 0.0, 0, 0
    with eval_mode(model, device):
        for batch in batches(dataset, batch_size, collate, device):
            out = model(**batch)
            b = batch["labels"].shape[0]
            loss_sum += float(out.loss) * b
            correct += int((out.logits.argmax(-1) == batch["labels"]).sum())
            n += b
    if n == 0:
        return {"loss": math.nan, "accuracy": math.nan, "examples": 0}
    return {"loss": loss_sum / n, "accuracy": correct / n, "examples": n}


def predict_classification(model: torch.nn.Module, dataset: Sequence[Any], collate: Callable, batch_size: int,
                           device: torch.device) -> dict[str, Any]:
    """Class probabilities and true label ids, for metrics beyond accuracy (F1, AUC-ROC, per group).

    Returns: {"probs": float32 array (N, K), "labels": int64 array (N,)}
    """
    import numpy as np

    probs, labels = [], []
    with eval_mode(model, device):
        for batch in batches(dataset, batch_size, collate, device):
            logits = model(**batch).logits.float()  # (B, K)
            probs.append(torch.softmax(logits, -1).cpu().numpy())
            labels.append(batch["labels"].cpu().numpy())
    if not probs:
        return {"probs": np.zeros((0, 0), np.float32), "labels": np.zeros((0,), np.int64)}
    return {"probs": np.concatenate(probs), "labels": np.concatenate(labels)}


def evaluate_tokens(model: torch.nn.Module, dataset: Sequence[Any], collate: Callable, batch_size: int,
                    device: torch.device, shifted: bool) -> dict[str, float]:
    """Token-weighted mean loss and perplexity = exp(loss) over the predicted label tokens.

    ``shifted``: causal LMs predict labels[:, 1:] (the model shifts inside), seq2seq predicts every label.
    """
    loss_sum, tokens = 0.0, 0
    with eval_mode(model, device):
        for batch in batches(dataset, batch_size, collate, device):
            out = model(**batch)
            labels = batch["labels"][:, 1:] if shifted else batch["labels"]
            count = int((labels != -100).sum())
            if count:
                loss_sum += float(out.loss) * count  # the model's loss is the mean over these tokens
                tokens += count
    if tokens == 0:
        return {"loss": math.nan, "perplexity": math.nan, "tokens": 0}
    loss = loss_sum / tokens
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)), "tokens": tokens}


def label_ids(examples: Sequence[dict[str, Any]], label2id: dict[str, int], split: str) -> list[int]:
    """Label names -> ids. Raises UserError for a label the model does not know."""
    out = []
    for i, ex in enumerate(examples):
        name = str(ex["label"])
        if name not in label2id:
            known = ", ".join(list(label2id)[:10])
            raise UserError(f"{split} example {i}: label '{name}' is not one of the model's classes ({known}); "
                            f"check data.label_column or the splits")
        out.append(label2id[name])
    return out


def class_labels(splits_labels: list[str], examples: Sequence[dict[str, Any]]) -> list[str]:
    """The class names in id order: ``Splits.labels``, else the sorted training labels."""
    labels = [str(x) for x in splits_labels] or sorted({str(ex["label"]) for ex in examples})
    if len(labels) < 2:
        raise UserError(f"classification needs at least two classes; the training split has {labels}: "
                        f"check data.label_column")
    return labels


def reconcile_labels(labels: list[str], saved: list[str] | None, notes: list[str]) -> tuple[list[str], str]:
    """Keep a loaded classifier's own class order when it holds exactly the same classes (so its head
    stays meaningful); otherwise the data's order. A head of another size is fitted anew; one of the same
    size but other class names is kept by position, which ``notes`` records."""
    if saved and saved != labels and sorted(saved) == sorted(labels):
        return list(saved), "model folder"
    if saved and len(saved) == len(labels) and sorted(saved) != sorted(labels):
        notes.append(f"the model folder's classes {saved[:5]} differ from the data's {labels[:5]}: "
                     f"its classifier head is kept, class by position")
    return labels, "data"


def check_saved_task(path: Path, task: str, preprocess: dict[str, Any] | None) -> None:
    if preprocess and preprocess.get("task") not in (None, task):
        raise UserError(f"{path} holds a {preprocess.get('task')} model (preprocess.json), not {task}: "
                        f"point model.source at a {task} model or change task")


def fit_max_length(recipe: Any, config: Any, notes: list[str]) -> int:
    """data.max_length, clipped to what the model's position table holds."""
    n = recipe.data.max_length
    limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
    if isinstance(limit, int) and 0 < limit < n:
        notes.append(f"data.max_length {n} is more than the model's {limit} positions: using {limit}")
        return limit
    return n


def ensure_pad(tokenizer: Any, config: Any) -> int:
    """The pad id, borrowing eos where a tokenizer has no pad token (GPT-2 style)."""
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token is None:
            raise UserError(f"{tokenizer.name_or_path}: the tokenizer has neither a pad nor an eos token; "
                            f"add a pad token to it (tokenizer.add_special_tokens) and save it again")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(config, "pad_token_id", None) is None:
        config.pad_token_id = tokenizer.pad_token_id
    return tokenizer.pad_token_id


def write_json(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=2) + "\n", encoding="utf-8")


def write_metadata(out_dir: Path, preprocess: dict[str, Any], labels: list[str] | None) -> None:
    """labels.json (classification) and preprocess.json, beside the weights."""
    if labels:
        write_json(out_dir / "labels.json", labels)
    write_json(out_dir / "preprocess.json", {"schema_version": PREPROCESS_SCHEMA, **preprocess})


def base_info(model: torch.nn.Module, source: Any) -> dict[str, Any]:
    from toolkit.models import count_params

    return {"model_class": type(model).__name__, "params": count_params(model),
            "trainable_params": sum(p.numel() for p in model.parameters() if p.requires_grad),
            "source": str(source)}
