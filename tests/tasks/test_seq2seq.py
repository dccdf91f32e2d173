"""seq2seq: source/target encoding, -100 label padding, perplexity on target tokens."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from toolkit.tasks import get_task

TASK = get_task("seq2seq")


def test_sources_and_targets_are_wrapped_in_bos_eos(tmp_path, recipe_for, splits_for):
    splits = splits_for(TASK.name)
    p = TASK.prepare(recipe_for(TASK.name), splits, tmp_path)
    tok = p.tokenizer
    assert (tok.bos_token_id, tok.pad_token_id, tok.eos_token_id, tok.unk_token_id, tok.mask_token_id) == (0, 1, 2, 3, 4)
    item = p.train_set[0]
    assert item["input_ids"][0] == 0 and item["input_ids"][-1] == 2
    assert item["labels"][0] == 0 and item["labels"][-1] == 2
    assert tok.decode(item["input_ids"], skip_special_tokens=True) == splits.train[0]["source"]
    assert tok.decode(item["labels"], skip_special_tokens=True) == splits.train[0]["target"]
    c = p.model.config
    assert (c.d_model, c.encoder_layers, c.decoder_layers, c.decoder_start_token_id) == (32, 2, 2, 2)
    assert c.dropout == 0.0 and c.max_position_embeddings == 128


def test_collate_pads_labels_with_minus_100(tmp_path, recipe_for, splits_for):
    p = TASK.prepare(recipe_for(TASK.name), splits_for(TASK.name), tmp_path)
    batch = p.collate([{"input_ids": [0, 7, 2], "labels": [0, 9, 9, 9, 2]}, {"input_ids": [0, 2], "labels": [0, 2]}])
    assert batch["input_ids"].tolist() == [[0, 7, 2] + [1] * 5, [0, 2] + [1] * 6]
    assert batch["labels"].tolist() == [[0, 9, 9, 9, 2] + [-100] * 3, [0, 2] + [-100] * 6]
    assert batch["attention_mask"].sum(1).tolist() == [3, 2]


def test_perplexity_counts_target_tokens_only(tmp_path, recipe_for, splits_for):
    p = TASK.prepare(recipe_for(TASK.name), splits_for(TASK.name), tmp_path)
    metrics = TASK.evaluate(p.model, p, p.val_set, 2, torch.device("cpu"))
    p.model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for item in p.val_set:
            labels = torch.tensor([item["labels"]])
            logits = p.model(input_ids=torch.tensor([item["input_ids"]]), labels=labels).logits[0]
            total += float(F.cross_entropy(logits, labels[0], reduction="sum"))
            count += labels.shape[1]
    assert metrics["tokens"] == count
    assert metrics["loss"] == pytest.approx(total / count, rel=1e-5)
    assert metrics["perplexity"] == pytest.approx(math.exp(total / count), rel=1e-5)


def test_generate_gives_one_string_per_example_and_learns_a_copy(tmp_path, recipe_for):
    """A few hundred steps on 'copy the source' are enough for greedy decoding to reproduce it."""
    from toolkit.data.types import Splits

    ex = [{"source": s, "target": s} for s in ["good film", "bad plot", "great actor", "dull story"] * 10]
    splits = Splits(train=ex, validation=ex[:4], eval=ex[:4])
    recipe = recipe_for(TASK.name, vocab_size=280)
    p = TASK.prepare(recipe, splits, tmp_path)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(p.model.parameters(), lr=5e-3)
    p.model.train()
    batch = p.collate(p.train_set[:8])
    for _ in range(60):
        loss = p.model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    out = TASK.generate(p.model, p, p.val_set, 3, torch.device("cpu"), max_new_tokens=8)
    assert out == ["good film", "bad plot", "great actor", "dull story"]
