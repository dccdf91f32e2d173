"""Every registered task honours the contract with the training loop (parametrised over the registry)."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

from toolkit.errors import UserError
from toolkit.tasks import TASKS, get_task
from toolkit.tasks.base import MainMetric, Prepared, Task

CPU = torch.device("cpu")


def test_registry_holds_the_four_tasks_and_each_answers_the_protocol():
    assert {"text-classification", "language-modeling", "seq2seq", "image-classification"} <= set(TASKS)
    members = [n for n in dir(Task) if not n.startswith("_")] + list(Task.__annotations__)
    for name, task in TASKS.items():
        assert task.name == name
        assert get_task(name) is task
        missing = [m for m in members if not hasattr(task, m)]
        assert not missing, f"{name} lacks {missing}"
        assert isinstance(task.main_metric, MainMetric) and task.main_metric.name in task.metric_names
        assert task.builtins and task.graphs and task.quality in ("classification", "perplexity", "generation")


def test_unknown_task_is_a_user_error_with_a_suggestion():
    with pytest.raises(UserError, match="did you mean 'seq2seq'"):
        get_task("seq2sq")


@pytest.fixture(params=sorted(TASKS))
def prepared(request, tmp_path, splits_for, recipe_for):
    task = get_task(request.param)
    recipe = recipe_for(request.param)
    splits = splits_for(request.param)
    return task, recipe, splits, task.prepare(recipe, splits, tmp_path / "work")


def test_prepare_gives_the_loop_what_it_needs(prepared):
    task, recipe, splits, p = prepared
    assert isinstance(p, Prepared)
    assert (p.primary_metric, p.higher_is_better) == (
        ("accuracy", True) if task.name.endswith("classification") else ("loss", False))
    assert len(p.train_set) > 0 and len(p.val_set) > 0 and len(p.eval_set) > 0
    batch = p.collate([p.train_set[i] for i in range(4)])
    assert "labels" in batch and all(isinstance(v, torch.Tensor) for v in batch.values())
    out = p.model(**batch)
    assert out.loss.ndim == 0 and math.isfinite(out.loss.item())
    assert out.logits.shape[0] == 4
    assert p.info["params"] == sum(x.numel() for x in p.model.parameters())
    assert p.info["model_class"] == type(p.model).__name__


def test_a_few_steps_lower_the_loss_on_a_fixed_batch(prepared):
    task, recipe, splits, p = prepared
    batch = p.collate([p.train_set[i] for i in range(8)])
    torch.manual_seed(0)
    opt = torch.optim.AdamW(p.model.parameters(), lr=5e-3)
    p.model.train()
    with torch.no_grad():
        before = float(p.model(**batch).loss)
    for _ in range(8):
        loss = p.model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        after = float(p.model(**batch).loss)
    assert after < 0.8 * before, (before, after)


def test_evaluate_returns_the_primary_metric_and_restores_train_mode(prepared):
    task, recipe, splits, p = prepared
    p.model.train()
    metrics = task.evaluate(p.model, p, p.val_set, 3, CPU)
    assert p.model.training
    assert p.primary_metric in metrics and "loss" in metrics
    if p.primary_metric == "accuracy":
        assert 0.0 <= metrics["accuracy"] <= 1.0
        assert metrics["examples"] == len(splits.validation)
    else:
        assert metrics["perplexity"] == pytest.approx(math.exp(metrics["loss"]))
    # batch size does not change a mean that is weighted properly
    again = task.evaluate(p.model, p, p.val_set, 2, CPU)
    assert again["loss"] == pytest.approx(metrics["loss"], rel=1e-5)


def test_save_then_load_gives_identical_logits(prepared, tmp_path):
    task, recipe, splits, p = prepared
    batch = p.collate([p.val_set[i] for i in range(min(3, len(p.val_set)))])
    p.model.eval()
    with torch.no_grad():
        expected = p.model(**batch).logits
    out = tmp_path / "final"
    p.save(p.model, out)
    assert (out / "model.safetensors").is_file() and (out / "config.json").is_file()
    pre = json.loads((out / "preprocess.json").read_text())
    assert pre["task"] == task.name and pre["schema_version"] == 1
    if p.tokenizer is not None:
        assert (out / "tokenizer.json").is_file() and pre["tokenizer"] == "tokenizer.json"
        assert pre["max_length"] == recipe.data.max_length
    if task.name.endswith("classification"):
        assert json.loads((out / "labels.json").read_text()) == splits.labels == p.labels
    loaded = task.load(out).eval()
    with torch.no_grad():
        torch.testing.assert_close(loaded(**batch).logits, expected, rtol=0, atol=1e-6)


def test_a_saved_folder_is_a_model_source(prepared, tmp_path):
    """[train] enabled = false and later stages: prepare() on our own train/final folder keeps its weights."""
    task, recipe, splits, p = prepared
    out = tmp_path / "final"
    p.save(p.model, out)
    recipe.model.source = str(out)
    again = task.prepare(recipe, splits, tmp_path / "work2")
    if p.tokenizer is not None:
        assert again.info["tokenizer"] == "pretrained"
        assert again.train_set[0] == p.train_set[0]  # the same tokenizer encodes the same ids
    assert again.info["params"] == p.info["params"]
    assert again.info.get("newly_initialized", []) == [] and again.info.get("mismatched", []) == []
    batch = p.collate([p.val_set[0]])
    p.model.eval()
    again.model.eval()
    with torch.no_grad():
        torch.testing.assert_close(again.model(**batch).logits, p.model(**batch).logits, rtol=0, atol=1e-6)


def test_a_folder_of_another_task_is_refused(prepared, tmp_path, recipe_for, splits_for):
    task, recipe, splits, p = prepared
    out = tmp_path / "final"
    p.save(p.model, out)
    other = next(name for name in sorted(TASKS) if name != task.name)
    r = recipe_for(other, source=str(out))
    with pytest.raises(UserError, match=re.escape(str(out))):
        get_task(other).prepare(r, splits_for(other), tmp_path / "work3")


def test_model_init_depends_on_the_seed_only(tmp_path, recipe_for, splits_for):
    """Preparing twice gives the same weights whatever the global RNG did in between, and leaves the
    global RNG where it was (the loop seeds it for data order and dropout)."""
    task = get_task("text-classification")
    torch.manual_seed(123)
    a = task.prepare(recipe_for(task.name), splits_for(task.name), tmp_path / "w")
    state = torch.random.get_rng_state()
    torch.rand(10)
    b = task.prepare(recipe_for(task.name), splits_for(task.name), tmp_path / "w")
    torch.random.set_rng_state(state)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    task.prepare(recipe_for(task.name), splits_for(task.name), tmp_path / "w")
    assert torch.equal(torch.rand(3), expected_next)
    for (n1, p1), (n2, p2) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert n1 == n2 and torch.equal(p1, p2), n1
