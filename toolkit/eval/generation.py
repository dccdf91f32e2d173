"""Generating text with Hugging Face models for the generation metrics: seq2seq and causal LMs, greedy or beam.

Inputs are padded here, not by the tokenizer, so a tokenizer without a pad token (GPT-2) works and is never
modified: encoder inputs are padded on the right, causal-LM prompts on the left (so every prompt ends where
generation starts), with an attention mask either way.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

from toolkit.errors import UserError


def _pad_id(model: Any, tokenizer: Any) -> int:
    for pid in (tokenizer.pad_token_id, getattr(model.generation_config, "pad_token_id", None),
                tokenizer.eos_token_id, getattr(model.config, "eos_token_id", None)):
        if isinstance(pid, (list, tuple)):
            pid = pid[0] if pid else None
        if pid is not None:
            return int(pid)
    raise UserError("the tokenizer has neither a pad nor an end-of-sequence token; set tokenizer.pad_token")


def _pad(rows: list[list[int]], pad_id: int, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        if not r:
            continue
        sl = slice(width - len(r), width) if left else slice(0, len(r))
        ids[i, sl] = torch.tensor(r, dtype=torch.long)
        mask[i, sl] = 1
    return ids, mask  # (B, T) each


def _prompt_ids(tokenizer: Any, text: str, limit: int | None, pad_id: int) -> list[int]:
    """A causal LM's prompt: the tokenizer's special tokens (BOS for Llama-style tokenizers) but no trailing EOS,
    cut from the left when too long so the prompt still ends where the continuation starts."""
    ids = list(tokenizer(text)["input_ids"])
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    if ids and eos is not None and ids[-1] == eos and eos != bos:
        ids = ids[:-1]
    if not ids:  # an empty prompt: start from BOS (GPT-2 style) so the model has something to condition on
        ids = [bos if bos is not None else (eos if eos is not None else pad_id)]
    if limit is not None and len(ids) > limit:
        ids = ids[-limit:]
    return ids


@torch.no_grad()
def generate(model: Any, tokenizer: Any, sources: Sequence[str], max_new_tokens: int, num_beams: int = 1,
             batch_size: int = 16, max_source_length: int | None = None) -> list[str]:
    """Generate one output text per source, deterministically (greedy, or beam search when ``num_beams > 1``).

    Args:
        model: a Hugging Face model with ``generate``; ``model.config.is_encoder_decoder`` picks the mode:
            seq2seq (the output is the decoded sequence) or causal LM (the output is the continuation of the
            prompt, the prompt's tokens removed).
        tokenizer: the model's tokenizer.
        sources: source texts (seq2seq) or prompts (causal LM).
        max_new_tokens: the most tokens generated per example.
        num_beams: 1 = greedy.
        batch_size: examples per ``generate`` call.
        max_source_length: truncate longer sources to this many tokens (None: the tokenizer's model_max_length
            when it is a real limit, else no truncation).

    Returns:
        decoded outputs, special tokens skipped, surrounding whitespace stripped, in the order of ``sources``.
    """
    if max_new_tokens < 1:
        raise UserError(f"max_new_tokens = {max_new_tokens}; it must be at least 1")
    if num_beams < 1 or batch_size < 1:
        raise UserError(f"num_beams = {num_beams}, batch_size = {batch_size}; both must be at least 1")
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    pad_id = _pad_id(model, tokenizer)
    limit = max_source_length
    if limit is None and 0 < getattr(tokenizer, "model_max_length", 0) < 1_000_000:
        limit = int(tokenizer.model_max_length)
    positions = getattr(model.config, "max_position_embeddings", None) or getattr(model.config, "n_positions", None)
    if not seq2seq and positions:
        # the prompt and its continuation must fit the model's positions
        room = int(positions) - max_new_tokens
        if room < 1:
            raise UserError(f"max_new_tokens = {max_new_tokens} leaves no room for a prompt in the model's "
                            f"{positions} positions")
        limit = room if limit is None else min(limit, room)
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    outputs: list[str] = []
    try:
        for start in range(0, len(sources), batch_size):
            batch = list(sources[start:start + batch_size])
            if seq2seq:
                enc = tokenizer(batch, truncation=limit is not None, max_length=limit)
                rows = [list(r) for r in enc["input_ids"]]
            else:
                rows = [_prompt_ids(tokenizer, text, limit, pad_id) for text in batch]
            ids, mask = _pad(rows, pad_id, left=not seq2seq)
            out = model.generate(
                input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                num_beams=num_beams, do_sample=False, pad_token_id=pad_id,
                # beams stop when num_beams finished candidates exist (fairseq, HF summarization examples)
                **({"early_stopping": True} if num_beams > 1 else {}),
            )  # (B, T_out); a causal LM's output starts with the (padded) prompt
            new = out if seq2seq else out[:, ids.shape[1]:]
            outputs += [t.strip() for t in tokenizer.batch_decode(new, skip_special_tokens=True)]
    finally:
        model.train(was_training)
    return outputs
