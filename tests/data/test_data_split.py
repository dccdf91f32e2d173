"""Carving validation/eval from train: stratified proportions, seeds, the partial cases, and label order."""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from toolkit.data import load_splits
from toolkit.data.split import natural_sorted
from toolkit.errors import UserError


def write_csv(path: Path, counts: dict[str, int]) -> Path:
    rows = [f"text {label} {i},{label}" for label, n in counts.items() for i in range(n)]
    path.write_text("text,label\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


@pytest.fixture
def sixty_forty(tmp_path: Path) -> Path:
    return write_csv(tmp_path / "train.csv", {"a": 60, "b": 40})


def counts(examples) -> dict[str, int]:
    return dict(Counter(e["label"] for e in examples))


def test_only_train_is_split_stratified(make_recipe, sixty_forty):
    s = load_splits(make_recipe(train=sixty_forty))
    # eval: 0.1 * 100 = 10; validation: 0.2 * 100 = 20; both with the 60/40 class balance
    assert s.sizes() == {"train": 70, "validation": 20, "eval": 10}
    assert counts(s.train) == {"a": 42, "b": 28}
    assert counts(s.validation) == {"a": 12, "b": 8}
    assert counts(s.eval) == {"a": 6, "b": 4}
    assert s.sources == {"train": str(sixty_forty), "validation": "carved from train", "eval": "carved from train"}
    texts = [e["text"] for split in (s.train, s.validation, s.eval) for e in split]
    assert len(set(texts)) == 100  # a partition: nothing lost, nothing repeated
    assert [e["text"] for e in s.train] == sorted((e["text"] for e in s.train), key=texts.index)  # file order kept
    assert any("stratified by label" in n for n in s.notes)


def test_same_seed_same_split_other_seed_other_split(make_recipe, sixty_forty):
    one, two = (load_splits(make_recipe(train=sixty_forty, seed=7)) for _ in range(2))
    assert one.train == two.train and one.eval == two.eval and one.fingerprints == two.fingerprints
    other = load_splits(make_recipe(train=sixty_forty, seed=8))
    assert other.eval != one.eval
    assert other.fingerprints["eval"] != one.fingerprints["eval"]
    assert counts(other.eval) == counts(one.eval)  # still stratified


def test_train_and_eval_given_carves_validation(make_recipe, sixty_forty, tmp_path):
    eval_file = write_csv(tmp_path / "eval.csv", {"a": 3, "b": 2})
    s = load_splits(make_recipe(train=sixty_forty, eval=eval_file))
    # validation = round(100 * 0.2 / (0.7 + 0.2)) = round(22.2) = 22
    assert s.sizes() == {"train": 78, "validation": 22, "eval": 5}
    assert s.sources == {"train": str(sixty_forty), "validation": "carved from train", "eval": str(eval_file)}


def test_train_and_validation_given_carves_eval(make_recipe, sixty_forty, tmp_path):
    val_file = write_csv(tmp_path / "val.csv", {"a": 3, "b": 2})
    s = load_splits(make_recipe(train=sixty_forty, validation=val_file, split=[0.6, 0.2, 0.2]))
    # eval = 100 * 0.2 / (0.6 + 0.2) = 25
    assert s.sizes() == {"train": 75, "validation": 5, "eval": 25}
    assert s.sources["eval"] == "carved from train" and s.sources["validation"] == str(val_file)


def test_zero_fractions_leave_splits_empty(make_recipe, sixty_forty):
    s = load_splits(make_recipe(train=sixty_forty, split=[1.0, 0.0, 0.0]))
    assert s.sizes() == {"train": 100, "validation": 0, "eval": 0}


def test_rare_class_falls_back_to_an_unstratified_split(make_recipe, tmp_path):
    s = load_splits(make_recipe(train=write_csv(tmp_path / "t.csv", {"a": 30, "b": 1})))
    assert sum(s.sizes().values()) == 31
    assert any("without stratification" in n and "only 1 member" in n for n in s.notes)
    assert s.labels == ["a", "b"]  # from the whole training data, wherever 'b' landed


def test_language_modelling_carves_contiguous_blocks_from_the_end(make_recipe, tmp_path):
    lines = [f"line {i}" for i in range(20)]
    (tmp_path / "lm.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    s = load_splits(make_recipe(task="language-modeling", train=tmp_path / "lm.txt", seed=3))
    # eval: the last 0.1 * 20 = 2 lines; validation: the 0.2 * 20 = 4 lines before them
    assert [e["text"] for e in s.train] == lines[:14]
    assert [e["text"] for e in s.validation] == lines[14:18]
    assert [e["text"] for e in s.eval] == lines[18:]


def test_too_few_examples_to_carve(make_recipe, tmp_path):
    (tmp_path / "one.en").write_text("hello\n", encoding="utf-8")
    (tmp_path / "one.de").write_text("hallo\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"one.de: 1 examples are too few to carve eval and validation from; add data "
                                        r"or name data.eval and data.validation in the recipe"):
        load_splits(make_recipe(task="seq2seq", train=(tmp_path / "one.en", tmp_path / "one.de")))


def test_labels_sort_naturally(make_recipe, tmp_path):
    path = write_csv(tmp_path / "n.csv", {"10": 3, "2": 3, "1": 3})
    s = load_splits(make_recipe(train=path, validation=path, eval=path))
    assert s.labels == ["1", "2", "10"]
    assert natural_sorted(["class10", "class2", "b", "a1", "class2"]) == ["a1", "b", "class2", "class10"]
