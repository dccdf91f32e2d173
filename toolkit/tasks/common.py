"""Helpers the four tasks share: padding, batching, evaluation loops, writing a model folder's metadata."""
from __future__ import annotations

import json
import math
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

from toolkit.errors import UserError
from toolkit.tasks.base import MainMetric

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


# ---- what the stages ask of a task, shared by the tasks ----------------------------------------------------

def accuracy_from_logits(pairs: Sequence[tuple[Any, dict[str, Any]]]) -> dict[str, float]:
    """{"accuracy", "examples"} from (logits (B, K), batch with "labels") pairs."""
    import numpy as np

    correct = total = 0
    for logits, batch in pairs:
        labels = np.asarray(batch["labels"])
        correct += int((np.asarray(logits).argmax(-1) == labels).sum())
        total += len(labels)
    return {"accuracy": correct / total if total else math.nan, "examples": total}


def tokens_from_logits(pairs: Sequence[tuple[Any, dict[str, Any]]], shifted: bool) -> dict[str, float]:
    """{"loss", "perplexity", "tokens"}: token-weighted cross-entropy over the labels that are not -100.

    ``shifted``: a causal LM predicts token t + 1 at position t."""
    import numpy as np

    loss_sum = tokens = 0.0
    for logits, batch in pairs:
        logits, labels = np.asarray(logits), np.asarray(batch["labels"])
        if shifted:
            logits, labels = logits[:, :-1], labels[:, 1:]
        valid = labels != -100
        z = logits - logits.max(-1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
        picked = np.take_along_axis(logp, np.where(valid, labels, 0)[..., None], -1)[..., 0]
        loss_sum += float(-(picked * valid).sum())
        tokens += float(valid.sum())
    loss = loss_sum / tokens if tokens else math.nan
    return {"loss": loss, "perplexity": math.exp(min(loss, 700.0)) if tokens else math.nan, "tokens": int(tokens)}


class Classifier:
    """What every classification task says the same way (text and image classification share it)."""

    main_metric = MainMetric("accuracy", True, "absolute")
    secondary_metric = "f1_macro"
    metric_names = ("accuracy", "f1", "f1_macro", "auc_roc", "confusion_matrix")
    quality = "classification"
    classifies = True
    kv_cache = False
    graphs = ("model",)
    causal = False

    def token_mask(self, batch: dict[str, Any], length: int) -> None:
        return None

    def metric_from_logits(self, pairs: Sequence[tuple[Any, dict[str, Any]]]) -> dict[str, float]:
        return accuracy_from_logits(pairs)


def dummy_text(model: Any, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
    """Token ids below the model's vocabulary and an all-ones mask: an encoder's or a decoder's example."""
    ids = token_ids(model, batch, seq_len)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def token_ids(model: Any, batch: int, seq_len: int, seed: int = 0) -> torch.Tensor:
    """(batch, seq_len) token ids below the model's vocabulary size, clear of the usual special ids."""
    from toolkit.errors import UserError

    vocab = getattr(getattr(model, "config", None), "vocab_size", None)
    if vocab is None:
        raise UserError(f"export: {type(model).__name__} has no config.vocab_size; pass example_inputs")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(min(4, vocab - 1), vocab, (batch, seq_len), generator=gen)


def text_reference(batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """input_ids, attention_mask (all ones where absent) and token_type_ids when given, as (B, T) int64."""
    from toolkit.errors import UserError

    batch = {k: v[None] if v.dim() == 1 else v for k, v in batch.items()}
    if "input_ids" not in batch:
        raise UserError(f"verify: a text sample needs input_ids (got {sorted(batch)})")
    out = {"input_ids": batch["input_ids"].long(),
           "attention_mask": batch.get("attention_mask", torch.ones_like(batch["input_ids"])).long()}
    if "token_type_ids" in batch:
        out["token_type_ids"] = batch["token_type_ids"].long()
    return out


def text_rows(rows: Sequence[Sequence[int]], n: int, seq_len: int, pad_id: int) -> dict[str, Any]:
    """Token rows laid into (n, seq_len) ids and mask: cut to seq_len, right-padded, repeated when fewer than n."""
    import numpy as np

    rows = [list(r) for r in rows]
    if not rows:
        rows = [[pad_id]]
    while len(rows) < n:  # fewer texts than one batch: repeat them
        rows = rows + rows[: n - len(rows)]
    ids = np.full((n, seq_len), pad_id, dtype=np.int64)
    mask = np.zeros((n, seq_len), dtype=np.int64)
    for i, r in enumerate(rows[:n]):
        r = r[:seq_len]
        ids[i, :len(r)] = r
        mask[i, :len(r)] = 1
    return {"input_ids": ids, "attention_mask": mask}


def tokenized_rows(tokenizer: Any, texts: Sequence[str], n: int, seq_len: int, pad_id: int) -> dict[str, Any]:
    rows = tokenizer(list(texts[:n]), truncation=True, max_length=seq_len, return_token_type_ids=False,
                     return_attention_mask=False)["input_ids"]
    return text_rows(rows, n, seq_len, pad_id)


def bundle_tokenizer(folder: Path | None, max_length: int) -> tuple[Any, int, dict[str, Any]]:
    """(tokenizer, pad id, preprocess.json) of the files beside an ONNX graph.

    Raises:
        UserError: no tokenizer files there.
    """
    from toolkit.errors import UserError
    from toolkit.models.pretrained import load_tokenizer, read_preprocess

    if folder is None:
        raise UserError("an ONNX text model without a PyTorch ancestor needs its tokenizer: put tokenizer.json "
                        "(and preprocess.json, labels.json) beside the .onnx model source")
    preprocess = read_preprocess(folder) or {}
    tokenizer = load_tokenizer(folder)
    pad_id = preprocess.get("pad_token_id", tokenizer.pad_token_id)
    preprocess = {**preprocess, "max_length": int(preprocess.get("max_length") or max_length),
                  "pad_token_id": 0 if pad_id is None else int(pad_id)}
    return tokenizer, preprocess["pad_token_id"], preprocess


def bundle_labels(folder: Path | None, preprocess: dict[str, Any], split_labels: list[str]) -> list[str]:
    """Class names of an ONNX classifier: preprocess.json's, else labels.json, else the data's."""
    from toolkit.models.pretrained import read_labels

    saved = read_labels(folder) if folder is not None else None
    return list(preprocess.get("labels") or saved or split_labels)


def label_collate(items: list[dict[str, Any]], key: str, stack: Callable[[list[Any]], Any]) -> dict[str, Any]:
    return {key: stack([it[key] for it in items]),
            "labels": torch.tensor([it["labels"] for it in items], dtype=torch.long)}
