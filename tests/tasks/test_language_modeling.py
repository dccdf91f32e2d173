"""language-modeling: run_clm grouping, label masking and token-weighted perplexity."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from toolkit.tasks import get_task
from toolkit.tasks.language_modeling import group_texts

TASK = get_task("language-modeling")


def test_group_texts_joins_with_eos_and_cuts_blocks():
    assert group_texts([[1, 2, 3], [4, 5]], eos_id=0, block=3) == [[1, 2, 3], [0, 4, 5]]  # [0] left over: dropped
    assert group_texts([[1, 2, 3], [4]], eos_id=0, block=4) == [[1, 2, 3, 0], [4, 0]]  # a short last block stays
    assert group_texts([], eos_id=0, block=4) == []


def test_blocks_cover_the_whole_training_text(tmp_path, recipe_for, splits_for):
    recipe, splits = recipe_for(TASK.name), splits_for(TASK.name)
    p = TASK.prepare(recipe, splits, tmp_path)
    tok = p.tokenizer
    eos = tok.eos_token_id
    assert eos == tok.pad_token_id == tok.bos_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    stream = [i for ex in splits.train for i in tok(ex["text"])["input_ids"] + [eos]]
    blocks = [it["input_ids"] for it in p.train_set]
    assert [len(b) for b in blocks[:-1]] == [32] * (len(blocks) - 1)
    assert sum(blocks, []) == stream[: sum(len(b) for b in blocks)]
    assert len(stream) - sum(len(b) for b in blocks) <= 1  # at most a one-token remainder is dropped


def test_gpt2_tiny_config_follows_the_recipe(tmp_path, recipe_for, splits_for):
    recipe = recipe_for(TASK.name, hidden_size=64, layers=3, heads=4)
    recipe.train.dropout = 0.25
    recipe.data.max_length = 200
    p = TASK.prepare(recipe, splits_for(TASK.name), tmp_path)
    c = p.model.config
    assert (c.n_embd, c.n_layer, c.n_head, c.n_positions) == (64, 3, 4, 200)
    assert (c.resid_pdrop, c.embd_pdrop, c.attn_pdrop) == (0.25, 0.25, 0.25)
    assert c.vocab_size == len(p.tokenizer) == p.info["vocab_size"]
    V, P, h, L = c.vocab_size, 200, 64, 3
    layer = 2 * h + (h * 3 * h + 3 * h) + (h * h + h) + 2 * h + (h * 4 * h + 4 * h) + (4 * h * h + h)
    assert p.info["params"] == V * h + P * h + L * layer + 2 * h  # lm_head is tied to the embedding


def test_collate_masks_padding_in_the_labels(tmp_path, recipe_for, splits_for):
    p = TASK.prepare(recipe_for(TASK.name), splits_for(TASK.name), tmp_path)
    eos = p.tokenizer.eos_token_id
    batch = p.collate([{"input_ids": [5, 6, 7, eos]}, {"input_ids": [eos, 8]}])
    assert batch["input_ids"].shape == (2, 8)
    assert batch["labels"][0].tolist() == [5, 6, 7, eos] + [-100] * 4  # a real eos is predicted
    assert batch["labels"][1].tolist() == [eos, 8] + [-100] * 6
    assert batch["attention_mask"].sum(1).tolist() == [4, 2]


def test_perplexity_is_token_weighted_over_the_set(tmp_path, recipe_for, splits_for):
    p = TASK.prepare(recipe_for(TASK.name), splits_for(TASK.name), tmp_path)
    metrics = TASK.evaluate(p.model, p, p.val_set, 2, torch.device("cpu"))
    # the same number by hand: every block alone, summed cross-entropy of next-token predictions
    p.model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for item in p.val_set:
            ids = torch.tensor([item["input_ids"]])
            logits = p.model(input_ids=ids).logits[0, :-1]
            total += float(F.cross_entropy(logits, ids[0, 1:], reduction="sum"))
            count += ids.shape[1] - 1
    assert metrics["tokens"] == count
    assert metrics["loss"] == pytest.approx(total / count, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)
    assert p.info["conventions"]["perplexity"] == "token-weighted, window=32, stride=32"
