"""text-classification: encoding, padding, label ids, the pretrained MiniLM, and errors."""
from __future__ import annotations

import json

import pytest
import torch

from toolkit.errors import UserError
from toolkit.tasks import get_task

TASK = get_task("text-classification")


def test_labels_follow_the_splits_order_and_reach_the_config(tmp_path, recipe_for, splits_for):
    splits = splits_for(TASK.name)
    splits.labels = ["pos", "neg"]  # deliberately not sorted: Splits.labels fixes the ids
    p = TASK.prepare(recipe_for(TASK.name), splits, tmp_path)
    assert p.labels == ["pos", "neg"]
    assert p.model.config.id2label == {0: "pos", 1: "neg"}
    assert p.model.config.label2id == {"pos": 0, "neg": 1}
    assert [it["labels"] for it in p.train_set[:4]] == [1, 0, 1, 0]  # examples alternate neg, pos, ...


def test_encoding_adds_cls_sep_and_truncates_to_max_length(tmp_path, recipe_for, splits_for):
    recipe = recipe_for(TASK.name)
    recipe.data.max_length = 6
    splits = splits_for(TASK.name)
    splits.train[0] = {"text": "the film was very very very good indeed " * 4, "label": "pos"}
    p = TASK.prepare(recipe, splits, tmp_path)
    tok = p.tokenizer
    ids = p.train_set[0]["input_ids"]
    assert len(ids) == 6
    assert ids[0] == tok.cls_token_id and ids[-1] == tok.sep_token_id
    assert tok.convert_ids_to_tokens(ids[1:3]) == ["the", "film"]


def test_collate_pads_to_a_multiple_of_8_with_a_mask(tmp_path, recipe_for, splits_for):
    p = TASK.prepare(recipe_for(TASK.name), splits_for(TASK.name), tmp_path)
    items = [{"input_ids": [2, 10, 11, 3], "labels": 0}, {"input_ids": [2, 10, 11, 12, 13, 14, 15, 16, 17, 3], "labels": 1}]
    batch = p.collate(items)
    pad = p.tokenizer.pad_token_id
    assert batch["input_ids"].shape == (2, 16)
    assert batch["input_ids"][0].tolist() == [2, 10, 11, 3] + [pad] * 12
    assert batch["attention_mask"].sum(1).tolist() == [4, 10]
    assert batch["labels"].tolist() == [0, 1]
    # never past max_length (32 here): a 30-token item pads to 32, a 32-token one stays 32
    assert p.collate([{"input_ids": list(range(30)), "labels": 0}])["input_ids"].shape == (1, 32)


def test_bert_tiny_parameter_count_matches_the_architecture(tmp_path, recipe_for, splits_for):
    p = TASK.prepare(recipe_for(TASK.name), splits_for(TASK.name), tmp_path)
    c = p.model.config
    V, P, h, L, K = len(p.tokenizer), c.max_position_embeddings, 32, 2, 2
    assert (c.hidden_size, c.num_hidden_layers, c.num_attention_heads, c.intermediate_size) == (h, L, 2, 4 * h)
    embeddings = V * h + P * h + 2 * h + 2 * h  # word + position + token type + LayerNorm
    layer = 4 * (h * h + h) + 2 * h + (h * 4 * h + 4 * h) + (4 * h * h + h) + 2 * h
    assert p.info["params"] == embeddings + L * layer + (h * h + h) + (h * K + K)  # + pooler + classifier
    assert P == 128 and c._attn_implementation == "eager"


def test_an_unknown_label_in_eval_is_a_user_error(tmp_path, recipe_for, splits_for):
    splits = splits_for(TASK.name)
    splits.eval[2] = {"text": "x", "label": "neutral"}
    with pytest.raises(UserError, match=r"eval example 2: label 'neutral'"):
        TASK.prepare(recipe_for(TASK.name), splits, tmp_path)


def test_predict_gives_probabilities_per_class(tmp_path, recipe_for, splits_for):
    p = TASK.prepare(recipe_for(TASK.name), splits_for(TASK.name), tmp_path)
    out = TASK.predict(p.model, p, p.eval_set, 4, torch.device("cpu"))
    assert out["probs"].shape == (5, 2) and out["labels"].tolist() == [1, 0, 1, 0, 1]
    assert out["probs"].sum(1) == pytest.approx([1.0] * 5, abs=1e-5)
    acc = TASK.evaluate(p.model, p, p.eval_set, 4, torch.device("cpu"))["accuracy"]
    assert acc == pytest.approx(float((out["probs"].argmax(1) == out["labels"]).mean()))


def test_minilm_loads_as_a_two_label_classifier(tmp_path, minilm_dir, recipe_for, splits_for):
    recipe = recipe_for(TASK.name, source=str(minilm_dir), hidden_size=0, layers=0)
    recipe.train.dropout = 0.2
    p = TASK.prepare(recipe, splits_for(TASK.name), tmp_path / "work")
    c = p.model.config
    assert type(p.model).__name__ == "BertForSequenceClassification"
    assert (c.num_hidden_layers, c.hidden_size, c.num_attention_heads, c.num_labels) == (6, 384, 12, 2)
    assert (c.hidden_dropout_prob, c.attention_probs_dropout_prob) == (0.2, 0.2)
    assert p.info["tokenizer"] == "pretrained" and p.info["vocab_size"] == 30522
    assert sorted(p.info["newly_initialized"]) == ["classifier.bias", "classifier.weight"]
    assert p.tokenizer.convert_ids_to_tokens(p.train_set[0]["input_ids"][:1]) == ["[CLS]"]
    assert not (tmp_path / "work" / "tokenizer").exists()  # nothing trained

    out = tmp_path / "final"
    p.save(p.model, out)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    reloaded = AutoModelForSequenceClassification.from_pretrained(out).eval()
    assert reloaded.config.id2label == {0: "neg", 1: "pos"}
    assert AutoTokenizer.from_pretrained(out)("good film")["input_ids"] == p.tokenizer("good film")["input_ids"]
    assert json.loads((out / "labels.json").read_text()) == ["neg", "pos"]
    batch = p.collate(p.eval_set[:2])
    p.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(reloaded(**batch).logits, p.model(**batch).logits, rtol=1e-4, atol=1e-5)


def test_a_folder_with_other_classes_gets_a_new_head(tmp_path, recipe_for, splits_for):
    p = TASK.prepare(recipe_for(TASK.name), splits_for(TASK.name), tmp_path / "a")
    p.save(p.model, tmp_path / "final")
    splits = splits_for(TASK.name)
    for split in (splits.train, splits.validation, splits.eval):
        for ex in split:
            ex["label"] = {"neg": "no", "pos": "yes"}[ex["label"]]
    splits.labels = ["maybe", "no", "yes"]
    again = TASK.prepare(recipe_for(TASK.name, source=str(tmp_path / "final")), splits, tmp_path / "b")
    assert again.model.config.num_labels == 3 and again.labels == ["maybe", "no", "yes"]
    assert again.info["mismatched"] == ["classifier.bias", "classifier.weight"]


def test_a_folder_with_the_same_classes_in_another_order_keeps_its_head(tmp_path, recipe_for, splits_for):
    splits = splits_for(TASK.name)
    splits.labels = ["pos", "neg"]
    p = TASK.prepare(recipe_for(TASK.name), splits, tmp_path / "a")
    p.save(p.model, tmp_path / "final")
    again = TASK.prepare(recipe_for(TASK.name, source=str(tmp_path / "final")), splits_for(TASK.name), tmp_path / "b")
    assert again.labels == ["pos", "neg"] and again.info["label_order"] == "model folder"
    assert again.train_set[0]["labels"] == p.train_set[0]["labels"]


def test_a_folder_with_renamed_classes_keeps_its_head_and_says_so(tmp_path, recipe_for, splits_for):
    p = TASK.prepare(recipe_for(TASK.name), splits_for(TASK.name), tmp_path / "a")
    p.save(p.model, tmp_path / "final")
    splits = splits_for(TASK.name)
    for split in (splits.train, splits.validation, splits.eval):
        for ex in split:
            ex["label"] = {"neg": "0", "pos": "1"}[ex["label"]]
    splits.labels = ["0", "1"]
    again = TASK.prepare(recipe_for(TASK.name, source=str(tmp_path / "final")), splits, tmp_path / "b")
    assert again.info["mismatched"] == [] and again.model.config.id2label == {0: "0", 1: "1"}
    assert again.info["notes"] == ["the model folder's classes ['neg', 'pos'] differ from the data's ['0', '1']: "
                                   "its classifier head is kept, class by position"]
