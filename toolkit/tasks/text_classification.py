"""text-classification: a sentence -> one of ``Splits.labels``.

Built-in: bert-tiny with a WordPiece tokenizer trained on the training texts. A folder: any Hugging Face
model with a sequence-classification head (e.g. a pretrained MiniLM); its head is fitted to our classes.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from toolkit.config import DataConfig, Recipe
from toolkit.data.types import Splits
from toolkit.tasks import register
from toolkit.tasks.base import Bundled, DataSpec, Prepared
from toolkit.tasks.common import (Classifier, base_info, bundle_labels, bundle_tokenizer, check_saved_task,
                                  class_labels, dummy_text, ensure_pad, evaluate_classification, fit_max_length,
                                  label_ids, pad_with_mask, predict_classification, reconcile_labels, seeded,
                                  text_reference, tokenized_rows, write_metadata)


def text_codec(tokenizer: Any, labels: list[str], max_length: int, pad_id: int) -> tuple[Any, Any]:
    """(encode(examples, split) -> items, collate(items) -> batch) of sentences and their class ids."""
    label2id = {n: i for i, n in enumerate(labels)}

    def encode(examples: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        if not examples:
            return []
        ids = tokenizer([str(ex["text"]) for ex in examples], truncation=True, max_length=max_length,
                        return_token_type_ids=False, return_attention_mask=False)["input_ids"]
        return [{"input_ids": i, "labels": y} for i, y in zip(ids, label_ids(examples, label2id, split))]

    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, mask = pad_with_mask([it["input_ids"] for it in items], pad_id, cap=max_length)
        return {"input_ids": input_ids, "attention_mask": mask,  # (B, T)
                "labels": torch.tensor([it["labels"] for it in items], dtype=torch.long)}  # (B,)

    return encode, collate


@register("text-classification")
class TextClassification(Classifier):
    name: str
    data = DataSpec(labels=True, groups=True, text_keys=("text",))
    builtins = ("bert-tiny",)
    auto_class = "AutoModelForSequenceClassification"
    optimum_task = "text-classification"

    def fields(self, data: DataConfig) -> dict[str, tuple[str, str]]:
        fields = {"text": (data.text_column, "data.text_column"), "label": (data.label_column, "data.label_column")}
        if data.group_column:
            fields["group"] = (data.group_column, "data.group_column")
        return fields

    def dummy_inputs(self, model: Any, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
        return dummy_text(model, batch, seq_len)

    def reference_batch(self, batch: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
        return text_reference(batch)

    def latency_samples(self, tokenizer: Any, examples: list[dict[str, Any]], n: int, seq_len: int,
                        pad_id: int, preprocess: dict[str, Any] | None = None) -> dict[str, Any]:
        return tokenized_rows(tokenizer, [str(ex["text"]) for ex in examples], n, seq_len, pad_id)

    def encode_bundle(self, folder: Path | None, max_length: int, labels: list[str],
                      splits: dict[str, Sequence[dict[str, Any]]]) -> Bundled:
        tokenizer, pad_id, preprocess = bundle_tokenizer(folder, max_length)
        labels = bundle_labels(folder, preprocess, labels)
        encode, collate = text_codec(tokenizer, labels, preprocess["max_length"], pad_id)
        sets = {k: encode(v, k) for k, v in splits.items()}
        return Bundled(sets, collate, labels, tokenizer, preprocess, encode)

    def prepare(self, recipe: Recipe, splits: Splits, work_dir: Path) -> Prepared:
        from toolkit.models import bert_tiny, cached_tokenizer, load_model, load_tokenizer, read_labels, resolve_source
        from toolkit.models.pretrained import check_model_dir, read_preprocess

        labels = class_labels(splits.labels, splits.train)
        src = resolve_source(recipe)
        notes: list[str] = []
        info: dict[str, Any] = {}
        if src.kind == "builtin":
            tokenizer, tok_dir = cached_tokenizer([ex["text"] for ex in splits.train], "bert",
                                                  recipe.model.vocab_size, Path(work_dir) / "tokenizer")
            with seeded(recipe.seed):
                model = bert_tiny(recipe, tokenizer, labels)
            info.update(tokenizer="trained", tokenizer_dir=str(tok_dir))
        else:
            check_saved_task(src.path, self.name, read_preprocess(src.path))
            labels, order = reconcile_labels(labels, read_labels(src.path, check_model_dir(src.path)), notes)
            tokenizer = load_tokenizer(src.path)
            with seeded(recipe.seed):
                model, loading = load_model(
                    src.path, self.auto_class, "a sequence-classification",
                    config_updates={"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                                    "label2id": {n: i for i, n in enumerate(labels)}},
                    dropout=recipe.train.dropout, ignore_mismatched_sizes=True)
            info.update(tokenizer="pretrained", label_order=order, **loading)
        pad_id = ensure_pad(tokenizer, model.config)
        max_length = fit_max_length(recipe, model.config, notes)
        encode, collate = text_codec(tokenizer, labels, max_length, pad_id)

        # "clean": the recipe's text cleaning, so a bundle or `toolkit serve` applies it to raw inputs too
        preprocess = {"task": self.name, "clean": list(recipe.data.clean),
                      "max_length": max_length, "tokenizer": "tokenizer.json",
                      "input_names": ["input_ids", "attention_mask"], "pad_token_id": pad_id, "labels": labels}

        def save(m: torch.nn.Module, out_dir: Path) -> None:
            from toolkit.models import unwrap

            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            unwrap(m).save_pretrained(out_dir, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
            write_metadata(out_dir, preprocess, labels)

        info = {**base_info(model, src), **info, "vocab_size": len(tokenizer), "max_length": max_length,
                "num_labels": len(labels), "notes": notes}
        return Prepared(model=model, train_set=encode(splits.train, "train"),
                        val_set=encode(splits.validation, "validation"), eval_set=encode(splits.eval, "eval"),
                        collate=collate, primary_metric="accuracy", higher_is_better=True, save=save, info=info,
                        tokenizer=tokenizer, labels=labels, preprocess=preprocess)

    def evaluate(self, model: torch.nn.Module, prepared: Prepared, dataset: Sequence[Any], batch_size: int,
                 device: torch.device) -> dict[str, float]:
        """{"loss", "accuracy" (fraction), "examples"}."""
        return evaluate_classification(model, dataset, prepared.collate, batch_size, device)

    def predict(self, model: torch.nn.Module, prepared: Prepared, dataset: Sequence[Any], batch_size: int,
                device: torch.device) -> dict[str, Any]:
        """{"probs": (N, K), "labels": (N,)} as numpy arrays, for F1 / AUC-ROC / per-group metrics."""
        return predict_classification(model, dataset, prepared.collate, batch_size, device)

    def load(self, model_dir: Path) -> torch.nn.Module:
        from toolkit.models import load_model

        model, _ = load_model(Path(model_dir), self.auto_class, "a sequence-classification",
                              attn_implementation="eager")
        return model
