"""Classification and subgroup metrics: equal to scikit-learn's own output, plus hand-checked cases."""
from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, roc_auc_score

from toolkit.errors import UserError
from toolkit.eval.metrics import check_metric_fits, classification_metrics, group_metrics

LABELS3 = ["cat", "dog", "bird"]


def _probs(n: int, k: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k))
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_multiclass_equals_sklearn() -> None:
    y_true = [0, 1, 2, 2, 1, 0, 2, 1, 0, 2, 1, 1]
    probs = _probs(len(y_true), 3)
    y_pred = probs.argmax(axis=1).tolist()
    m = classification_metrics(y_true, y_pred, probs, LABELS3)
    assert m["accuracy"] == accuracy_score(y_true, y_pred)
    assert m["f1_macro"] == f1_score(y_true, y_pred, average="macro", zero_division=0)
    assert m["auc_roc"] == pytest.approx(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"), abs=1e-12)
    assert m["confusion_matrix"] == confusion_matrix(y_true, y_pred, labels=[0, 1, 2]).tolist()
    assert m["n"] == 12 and m["labels"] == LABELS3 and m["undefined"] == {}
    assert set(m["conventions"]) == {"accuracy", "f1_macro", "auc_roc", "confusion_matrix"}
    assert "one-vs-rest macro" in m["conventions"]["auc_roc"]


def test_binary_uses_positive_class_probability() -> None:
    y_true = [0, 1, 1, 0, 1, 0, 0, 1]
    p_pos = np.array([0.2, 0.7, 0.4, 0.1, 0.9, 0.6, 0.3, 0.8])
    y_pred = (p_pos > 0.5).astype(int).tolist()
    m = classification_metrics(y_true, y_pred, np.stack([1 - p_pos, p_pos], axis=1), ["neg", "pos"])
    assert m["auc_roc"] == roc_auc_score(y_true, p_pos)
    # a 1-D vector is the positive class's probability
    assert classification_metrics(y_true, y_pred, p_pos, ["neg", "pos"])["auc_roc"] == m["auc_roc"]
    assert m["accuracy"] == pytest.approx(6 / 8)


def test_perfect_ranker_has_auc_one() -> None:
    y_true = [0, 0, 0, 1, 1, 1]
    p_pos = np.array([0.1, 0.3, 0.35, 0.4, 0.8, 0.99])  # a mistake at threshold 0.5, but the ranking is perfect
    assert classification_metrics(y_true, [0, 0, 0, 0, 1, 1], p_pos, ["a", "b"])["auc_roc"] == 1.0
    y3 = [0, 1, 2, 0, 1, 2]
    assert classification_metrics(y3, y3, np.eye(3)[y3], LABELS3)["auc_roc"] == 1.0


def test_confusion_matrix_follows_label_order_and_keeps_absent_classes() -> None:
    m = classification_metrics([0, 0, 1], [0, 1, 1], None, LABELS3)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 1, 0], [0, 0, 0]]  # rows = true, cols = predicted


@pytest.mark.parametrize("y_true, probs, labels, reason", [
    ([1, 1, 1], np.array([0.2, 0.6, 0.9]), ["a", "b"], "only one class"),
    ([0, 1, 1], None, ["a", "b"], "no class probabilities"),
    ([0, 1, 0, 1], np.eye(3)[[0, 1, 0, 1]], LABELS3, "absent from y_true"),
    ([0, 1], np.array([0.2, np.nan]), ["a", "b"], "NaN"),
])
def test_undefined_auc_is_none_with_a_reason(y_true, probs, labels, reason) -> None:
    m = classification_metrics(y_true, y_true, probs, labels)
    assert m["auc_roc"] is None
    assert reason in m["undefined"]["auc_roc"]
    assert m["accuracy"] == 1.0


def test_mismatched_inputs_raise() -> None:
    with pytest.raises(ValueError, match="y_pred has 2"):
        classification_metrics([0, 1, 1], [0, 1], None, ["a", "b"])
    with pytest.raises(ValueError, match="class index 5"):
        classification_metrics([0, 5], [0, 1], None, ["a", "b"])
    with pytest.raises(ValueError, match="shape"):
        classification_metrics([0, 1], [0, 1], np.ones((2, 3)) / 3, ["a", "b"])


def test_group_gaps_equal_hand_computed_values() -> None:
    # group a: accuracy 3/4; F1 class0 = 0.8, class1 = 2/3 -> 11/15; AUC 1 (positives 0.9, 0.3 > negatives 0.2, 0.1)
    # group b: accuracy 1/4; F1 class0 = 0.4, class1 = 0 -> 1/5;    AUC 1/4 (one of four pairs ordered right)
    # group c: one class only -> AUC undefined, left out of the AUC gap
    y_true = [0, 0, 1, 1] + [0, 1, 0, 1] + [1, 1]
    p_pos = np.array([0.1, 0.2, 0.9, 0.3] + [0.6, 0.4, 0.3, 0.2] + [0.7, 0.8])
    y_pred = (p_pos > 0.5).astype(int).tolist()
    groups = ["a"] * 4 + ["b"] * 4 + ["c"] * 2
    g = group_metrics(y_true, y_pred, p_pos, groups, ["neg", "pos"])
    assert sorted(g["per_group"]) == ["a", "b", "c"]
    assert g["per_group"]["a"]["accuracy"] == 0.75 and g["per_group"]["b"]["accuracy"] == 0.25
    assert g["per_group"]["c"]["accuracy"] == 1.0 and g["per_group"]["c"]["auc_roc"] is None
    assert g["max_gap"]["accuracy"] == pytest.approx(0.75)  # c (1.0) - b (0.25)
    assert g["gap_between"]["accuracy"] == ["c", "b"]
    assert g["per_group"]["a"]["f1_macro"] == pytest.approx(11 / 15)
    assert g["per_group"]["b"]["f1_macro"] == pytest.approx(1 / 5)
    # c: only class 1, all right -> macro over the classes present = 1.0
    assert g["max_gap"]["f1_macro"] == pytest.approx(1.0 - 1 / 5)
    assert g["max_gap"]["auc_roc"] == pytest.approx(1.0 - 0.25)
    assert g["gap_between"]["auc_roc"] == ["a", "b"]
    assert "max_gap" in g["conventions"] and "conventions" not in g["per_group"]["a"]


def test_group_length_mismatch_raises() -> None:
    with pytest.raises(ValueError, match="groups has 1"):
        group_metrics([0, 1], [0, 1], None, ["a"], ["x", "y"])


def test_check_metric_fits() -> None:
    with pytest.raises(UserError, match="^bleu does not apply to text-classification; use accuracy or f1$"):
        check_metric_fits("bleu", "text-classification")
    with pytest.raises(UserError, match="accuracy does not apply to seq2seq; use bleu, chrf or rouge"):
        check_metric_fits("accuracy", "seq2seq")
    with pytest.raises(UserError, match="did you mean 'rouge'"):
        check_metric_fits("rogue", "seq2seq")
    with pytest.raises(UserError, match="did you mean 'seq2seq'"):
        check_metric_fits("bleu", "seq2sq")
    for metric, task in [("f1", "image-classification"), ("perplexity", "language-modeling"),
                         ("rougeLsum", "seq2seq"), ("bleu", "language-modeling")]:
        check_metric_fits(metric, task)
