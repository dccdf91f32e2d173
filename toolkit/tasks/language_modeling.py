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

from toolkit.config import Recipe
from toolkit.data.types import Splits
from toolkit.tasks import register
from toolkit.tasks.base import Prepared
from toolkit.tasks.common import (base_info, check_saved_task, ensure_pad, evaluate_tokens, fit_max_length,
                                  pad_with_mask, seeded, write_metadata)


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


@register("language-modeling")
class LanguageModeling:
    name: str

    def prepare(self, recipe: Recipe, splits: Splits, work_dir: Path) -> Prepared:
        from toolkit.models import cached_tokenizer, gpt2_tiny, load_model, load_tokenizer, resolve_source
        from toolkit.models.pretrained import read_preprocess

        src = resolve_source(recipe)
        notes: list[str] = []
        info: dict[str, Any] = {}
        if src.kind == "builtin":
            tokenizer, tok_dir = cached_tokenizer([ex["text"] for ex in splits.train], "gpt2",
                                                  recipe.model.vocab_size, Path(work_dir) / "tokenizer")
            with seeded(recipe.seed):
                model = gpt2_tiny(recipe, tokenizer)
            info.update(tokenizer="trained", tokenizer_dir=str(tok_dir))
        else:
            check_saved_task(src.path, self.name, read_preprocess(src.path))
            tokenizer = load_tokenizer(src.path)
            with seeded(recipe.seed):
                model, loading = load_model(src.path, "AutoModelForCausalLM", "a causal language-modelling",
                                            dropout=recipe.train.dropout)
            info.update(tokenizer="pretrained", **loading)
        pad_id = ensure_pad(tokenizer, model.config)
        eos_id = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else tokenizer.sep_token_id
        block = fit_max_length(recipe, model.config, notes)

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

        preprocess = {"task": self.name, "max_length": block, "block_size": block, "tokenizer": "tokenizer.json",
                      "input_names": ["input_ids", "attention_mask"], "eos_token_id": eos_id, "pad_token_id": pad_id}

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

        model, _ = load_model(Path(model_dir), "AutoModelForCausalLM", "a causal language-modelling",
                              attn_implementation="eager")
        return model
