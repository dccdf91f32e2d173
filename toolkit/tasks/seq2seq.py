"""seq2seq: source text -> target text (translation, summarisation).

Built-in: bart-tiny with one byte-level BPE tokenizer trained on the training sources and targets. The
source becomes ``input_ids``, the target ``labels`` (padding -100, ignored by the loss); the model builds
its decoder inputs from the labels. Perplexity is exp of the token-weighted mean loss on target tokens.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import torch

from toolkit.config import DataConfig, Recipe
from toolkit.data.types import Splits
from toolkit.tasks import register
from toolkit.tasks.base import Bundled, DataSpec, MainMetric, Prepared
from toolkit.tasks.common import (base_info, bundle_tokenizer, check_saved_task, ensure_pad, evaluate_tokens,
                                  fit_max_length, pad, pad_with_mask, seeded, text_reference, token_ids,
                                  tokenized_rows, tokens_from_logits, write_metadata)


def pair_codec(tokenizer: Any, max_length: int, pad_id: int) -> tuple[Any, Any]:
    """(encode(examples) -> items of source ids and target labels, collate(items) -> batch)."""

    def encode(examples: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
        if not examples:
            return []
        enc = tokenizer([str(ex["source"]) for ex in examples], text_target=[str(ex["target"]) for ex in examples],
                        truncation=True, max_length=max_length, return_token_type_ids=False,
                        return_attention_mask=False)
        return [{"input_ids": s, "labels": t} for s, t in zip(enc["input_ids"], enc["labels"])]

    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        input_ids, mask = pad_with_mask([it["input_ids"] for it in items], pad_id, cap=max_length)  # (B, S)
        labels = pad([it["labels"] for it in items], -100, cap=max_length)  # (B, T)
        return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}

    return encode, collate


@register("seq2seq")
class Seq2Seq:
    name: str
    data = DataSpec(pairs=True, text_keys=("source", "target"))
    builtins = ("bart-tiny",)
    auto_class = "AutoModelForSeq2SeqLM"
    main_metric = MainMetric("bleu", True, "points")
    secondary_metric = "rougeL"
    metric_names = ("bleu", "chrf", "rouge", "rouge1", "rouge2", "rougeL", "rougeLsum")
    quality = "generation"
    classifies = False
    kv_cache = True
    graphs = ("encoder", "decoder")
    optimum_task = "text2text-generation-with-past"
    causal = False

    def fields(self, data: DataConfig) -> dict[str, tuple[str, str]]:
        return {"source": (data.source_column, "data.source_column"),
                "target": (data.target_column, "data.target_column")}

    def token_mask(self, batch: dict[str, Any], length: int) -> torch.Tensor:
        return (batch["labels"] != -100).float()[:, :length]

    def metric_from_logits(self, pairs: Sequence[tuple[Any, dict[str, Any]]]) -> dict[str, float]:
        return tokens_from_logits(pairs, shifted=False)

    def dummy_inputs(self, model: Any, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
        ids = token_ids(model, batch, seq_len)
        dec = token_ids(model, batch, max(2, seq_len // 2), seed=1)
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "decoder_input_ids": dec,
                "decoder_attention_mask": torch.ones_like(dec)}

    def reference_batch(self, batch: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
        """The source inputs plus decoder inputs: the labels shifted right behind the start token (teacher
        forcing), else the start token alone."""
        out = text_reference({k: v for k, v in batch.items() if not k.startswith("decoder_") and k != "labels"})
        batch = {k: v[None] if v.dim() == 1 else v for k, v in batch.items()}
        cfg = model.config
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.pad_token_id
        dec = batch.get("decoder_input_ids")
        if dec is None and "labels" in batch:
            labels = batch["labels"].long().masked_fill(batch["labels"] == -100, cfg.pad_token_id or 0)
            dec = torch.cat([torch.full_like(labels[:, :1], start), labels[:, :-1]], dim=1)
        elif dec is None:
            dec = torch.full_like(out["input_ids"][:, :1], start)
        out["decoder_input_ids"] = dec.long()
        out["decoder_attention_mask"] = batch.get("decoder_attention_mask", torch.ones_like(dec)).long()
        return out

    def latency_samples(self, tokenizer: Any, examples: list[dict[str, Any]], n: int, seq_len: int,
                        pad_id: int, preprocess: dict[str, Any] | None = None) -> dict[str, Any]:
        """The sources (what the encoder graph, the one timed, reads)."""
        return tokenized_rows(tokenizer, [str(ex["source"]) for ex in examples], n, seq_len, pad_id)

    def encode_bundle(self, folder: Path | None, max_length: int, labels: list[str],
                      splits: dict[str, Sequence[dict[str, Any]]]) -> Bundled:
        tokenizer, pad_id, preprocess = bundle_tokenizer(folder, max_length)
        encode, collate = pair_codec(tokenizer, preprocess["max_length"], pad_id)
        return Bundled({k: encode(v) for k, v in splits.items()}, collate, [], tokenizer, preprocess)

    def prepare(self, recipe: Recipe, splits: Splits, work_dir: Path) -> Prepared:
        from toolkit.models import bart_tiny, cached_tokenizer, load_model, load_tokenizer, resolve_source
        from toolkit.models.pretrained import read_preprocess

        src = resolve_source(recipe)
        notes: list[str] = []
        info: dict[str, Any] = {}
        if src.kind == "builtin":
            texts = [str(ex["source"]) for ex in splits.train] + [str(ex["target"]) for ex in splits.train]
            tokenizer, tok_dir = cached_tokenizer(texts, "bart", recipe.model.vocab_size, Path(work_dir) / "tokenizer")
            with seeded(recipe.seed):
                model = bart_tiny(recipe, tokenizer)
            info.update(tokenizer="trained", tokenizer_dir=str(tok_dir))
        else:
            check_saved_task(src.path, self.name, read_preprocess(src.path))
            tokenizer = load_tokenizer(src.path)
            with seeded(recipe.seed):
                model, loading = load_model(src.path, self.auto_class, "a sequence-to-sequence",
                                            dropout=recipe.train.dropout)
            info.update(tokenizer="pretrained", **loading)
        pad_id = ensure_pad(tokenizer, model.config)
        max_length = fit_max_length(recipe, model.config, notes)
        encode, collate = pair_codec(tokenizer, max_length, pad_id)

        # "clean": the recipe's text cleaning, so a bundle or `toolkit serve` applies it to raw inputs too
        preprocess = {"task": self.name, "clean": list(recipe.data.clean),
                      "max_length": max_length, "tokenizer": "tokenizer.json",
                      "input_names": ["input_ids", "attention_mask"], "pad_token_id": pad_id,
                      "decoder_start_token_id": model.config.decoder_start_token_id,
                      "eos_token_id": tokenizer.eos_token_id}

        def save(m: torch.nn.Module, out_dir: Path) -> None:
            from toolkit.models import unwrap

            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            unwrap(m).save_pretrained(out_dir, safe_serialization=True)
            tokenizer.save_pretrained(out_dir)
            write_metadata(out_dir, preprocess, None)

        info = {**base_info(model, src), **info, "vocab_size": len(tokenizer), "max_length": max_length,
                "notes": notes, "conventions": {"perplexity": "token-weighted over target tokens (teacher forcing)"}}
        return Prepared(model=model, train_set=encode(splits.train), val_set=encode(splits.validation),
                        eval_set=encode(splits.eval), collate=collate, primary_metric="loss", higher_is_better=False,
                        save=save, info=info, tokenizer=tokenizer, preprocess=preprocess)

    def evaluate(self, model: torch.nn.Module, prepared: Prepared, dataset: Sequence[Any], batch_size: int,
                 device: torch.device) -> dict[str, float]:
        """{"loss" (token-weighted over targets), "perplexity", "tokens"}."""
        return evaluate_tokens(model, dataset, prepared.collate, batch_size, device, shifted=False)

    def generate(self, model: torch.nn.Module, prepared: Prepared, dataset: Sequence[Any], batch_size: int,
                 device: torch.device, max_new_tokens: int | None = None, num_beams: int = 1) -> list[str]:
        """Decoded outputs for ``dataset``'s sources (greedy by default), in order: hypotheses for BLEU/chrF."""
        from toolkit.models import unwrap
        from toolkit.tasks.common import batches, eval_mode

        m = unwrap(model)
        tok = prepared.tokenizer
        out: list[str] = []
        limit = max_new_tokens or int(prepared.preprocess.get("max_length", 128))
        with eval_mode(m, device):
            for batch in batches(dataset, batch_size, prepared.collate, device):
                ids = m.generate(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                                 max_new_tokens=limit, num_beams=num_beams, do_sample=False)
                out += tok.batch_decode(ids, skip_special_tokens=True)
        return out

    def load(self, model_dir: Path) -> torch.nn.Module:
        from toolkit.models import load_model

        model, _ = load_model(Path(model_dir), self.auto_class, "a sequence-to-sequence",
                              attn_implementation="eager")
        return model
