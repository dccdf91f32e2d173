"""language-modeling: next-token prediction on plain text.

The texts of each split are concatenated with an EOS between them and cut into blocks of
``data.max_length`` tokens (Hugging Face run_clm's grouping); labels are the input ids (the model shifts
them). Unlike run_clm the last, shorter block is kept (padded, its padding ignored by the loss), so small
validation sets are not dropped. Perplexity is exp of the token-weighted mean loss over non-overlapping
blocks (window = stride = block size).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from toolkit.config import DataConfig, Recipe
from toolkit.data.types import Splits
from toolkit.tasks import register
from toolkit.tasks.base import Bundled, DataSpec, MainMetric, Prepared
from toolkit.tasks.common import (base_info, bundle_tokenizer, check_saved_task, dummy_text, ensure_pad,
                                  evaluate_tokens, fit_max_length, pad_with_mask, seeded, text_reference, text_rows,
                                  tokens_from_logits, write_metadata)


def group_texts(token_lists: Sequence[Sequence[int]], eos_id: int | None, block: int) -> list[list[int]]:
    """Concatenate (each text followed by EOS) and cut into blocks of ``block`` tokens; a final shorter
    block is kept when it has at least two tokens (one prediction)."""
    stream: list[int] = []
    for ids in token_lists:
        stream.extend(ids)
        if eos_id is not None:
            stream.append(eos_id)
    blocks = [stream[i: i + block] for i in range(0, len(stream), block)]
    return [b for b in blocks if len(b) >= 2]


def lm_stream(tokenizer: Any, texts: Sequence[str]) -> tuple[list[int], int | None]:
    """The texts as one token stream laid out as this task trains on them: each text tokenised without special
    tokens and followed by EOS (not HF's "\\n\\n" join, whose newlines a model trained on lines has never seen).
    Returns (ids, eos id)."""
    eos = eos_of(tokenizer)
    ids: list[int] = []
    # verbose=False: a long text is no error here (HF would warn that it exceeds model_max_length)
    for row in tokenizer(list(texts), add_special_tokens=False, return_attention_mask=False, verbose=False)["input_ids"]:
        ids.extend(row)
        if eos is not None:
            ids.append(int(eos))
    return ids, eos


def lm_codec(tokenizer: Any, eos_id: int | None, block: int, pad_id: int) -> tuple[Any, Any]:
    """(encode(examples) -> blocks of ``block`` tokens, collate(items) -> batch with labels = inputs)."""

    def encode(examples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if not examples:
            return []
        ids = tokenizer([str(ex["text"]) for ex in examples], add_special_tokens=False,
                        return_attention_mask=False, verbose=False)["input_ids"]
        return [{"input_ids": b} for b in group_texts(ids, eos_id, block)]

    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, mask = pad_with_mask([it["input_ids"] for it in items], pad_id, cap=block)  # (B, T)
        # pad == eos for GPT-2, so padding is found by the mask, not by the token id
        return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}

    return encode, collate


def eos_of(tokenizer: Any) -> int | None:
    return tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id


@register("language-modeling")
class LanguageModeling:
    name: str
    data = DataSpec(text_files=True, contiguous=True, text_keys=("text",))
    builtins = ("gpt2-tiny", "llama-small")
    auto_class = "AutoModelForCausalLM"
    main_metric = MainMetric("perplexity", False, "relative")
    secondary_metric = None
    metric_names = ("perplexity", "bleu", "chrf", "rouge", "rouge1", "rouge2", "rougeL", "rougeLsum")
    quality = "perplexity"
    classifies = False
    kv_cache = True
    graphs = ("model",)
    optimum_task = "text-generation-with-past"
    causal = True

    def fields(self, data: DataConfig) -> dict[str, tuple[str, str]]:
        return {"text": (data.text_column, "data.text_column")}

    def token_mask(self, batch: dict[str, Any], length: int) -> torch.Tensor:
        return batch["attention_mask"].float()[:, :length]

    def metric_from_logits(self, pairs: Sequence[tuple[Any, dict[str, Any]]]) -> dict[str, float]:
        return tokens_from_logits(pairs, shifted=True)

    def dummy_inputs(self, model: Any, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
        return dummy_text(model, batch, seq_len)

    def reference_batch(self, batch: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
        return text_reference(batch)

    def latency_samples(self, tokenizer: Any, examples: list[dict[str, Any]], n: int, seq_len: int,
                        pad_id: int, preprocess: dict[str, Any] | None = None) -> dict[str, Any]:
        """Full windows of the eval text stream (real tokens, no padding)."""
        stream, _ = lm_stream(tokenizer, [str(ex["text"]) for ex in examples])
        rows = [stream[i:i + seq_len] for i in range(0, max(len(stream) - seq_len + 1, 1), seq_len)][:n]
        return text_rows(rows, n, seq_len, pad_id)

    def encode_bundle(self, folder: Path | None, max_length: int, labels: list[str],
                      splits: dict[str, Sequence[dict[str, Any]]]) -> Bundled:
        tokenizer, pad_id, preprocess = bundle_tokenizer(folder, max_length)
        encode, collate = lm_codec(tokenizer, eos_of(tokenizer), preprocess["max_length"], pad_id)
        return Bundled({k: encode(v) for k, v in splits.items()}, collate, [], tokenizer, preprocess)

    def prepare(self, recipe: Recipe, splits: Splits, work_dir: Path) -> Prepared:
        from toolkit.models import cached_tokenizer, load_model, load_tokenizer, resolve_source
        from toolkit.models.builtin import causal_lm
        from toolkit.models.pretrained import read_preprocess

        src = resolve_source(recipe)
        notes: list[str] = []
        info: dict[str, Any] = {}
        if src.kind == "builtin":
            tokenizer, tok_dir = cached_tokenizer([ex["text"] for ex in splits.train], "gpt2",
                                                  recipe.model.vocab_size, Path(work_dir) / "tokenizer")
            with seeded(recipe.seed):
                model = causal_lm(src.name, recipe, tokenizer)
            info.update(tokenizer="trained", tokenizer_dir=str(tok_dir))
        else:
            check_saved_task(src.path, self.name, read_preprocess(src.path))
            tokenizer = load_tokenizer(src.path)
            with seeded(recipe.seed):
                model, loading = load_model(src.path, self.auto_class, "a causal language-modelling",
                                            dropout=recipe.train.dropout)
            info.update(tokenizer="pretrained", **loading)
        pad_id = ensure_pad(tokenizer, model.config)
        eos_id = eos_of(tokenizer)
        block = fit_max_length(recipe, model.config, notes)
        encode, collate = lm_codec(tokenizer, eos_id, block, pad_id)

        # "clean": the recipe's text cleaning, so a bundle or `toolkit serve` applies it to raw inputs too
        preprocess = {"task": self.name, "clean": list(recipe.data.clean),
                      "max_length": block, "block_size": block, "tokenizer": "tokenizer.json",
                      "input_names": ["input_ids", "attention_mask"], "eos_token_id": eos_id, "pad_token_id": pad_id,
                      # each line of the text was followed by EOS (group_texts): to the model, EOS is a line break
                      "eos_between_lines": eos_id is not None}

        def save(m: torch.nn.Module, out_dir: Path) -> None:
            from toolkit.models import unwrap

            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            unwrap(m).save_pretrained(out_dir, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
            write_metadata(out_dir, preprocess, None)

        info = {**base_info(model, src), **info, "vocab_size": len(tokenizer), "max_length": block, "notes": notes,
                "conventions": {"perplexity": f"token-weighted, window={block}, stride={block}"}}
        return Prepared(model=model, train_set=encode(splits.train), val_set=encode(splits.validation),
                        eval_set=encode(splits.eval), collate=collate, primary_metric="loss", higher_is_better=False,
                        save=save, info=info, tokenizer=tokenizer, preprocess=preprocess)

    def evaluate(self, model: torch.nn.Module, prepared: Prepared, dataset: Sequence[Any], batch_size: int,
                 device: torch.device) -> dict[str, float]:
        """{"loss" (token-weighted), "perplexity", "tokens"}."""
        return evaluate_tokens(model, dataset, prepared.collate, batch_size, device, shifted=True)

    def load(self, model_dir: Path) -> torch.nn.Module:
        from toolkit.models import load_model

        model, _ = load_model(Path(model_dir), self.auto_class, "a causal language-modelling",
                              attn_implementation="eager")
        return model
