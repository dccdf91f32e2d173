"""Quality metrics, computed by the field's libraries and carrying their conventions (STYLE.md 12).

Classification metrics come from scikit-learn, BLEU and chrF from sacrebleu, ROUGE from rouge-score. Each
function returns plain numbers plus the string that says how they were computed, so two runs can be compared:

- accuracy, f1_macro, auc_roc: fractions in [0, 1]; a metric that is undefined for the data (AUC with one class
  present) is ``None`` and the reason is under ``"undefined"``.
- bleu, chrf: sacrebleu's 0-100 scale, with sacrebleu's signature.
- rouge1/2/L/Lsum: rouge-score F-measure averaged over examples, fractions in [0, 1].

Generation (``toolkit.eval.generation``), perplexity (``toolkit.eval.perplexity``) and perturbations
(``toolkit.eval.robustness``) live beside this module. Heavy libraries are imported inside the functions so that
``python -m toolkit score`` starts fast.
"""
from __future__ import annotations

import re
from typing import Any, Sequence

import numpy as np

from toolkit.errors import UserError, did_you_mean

# ---------------------------------------------------------------------------------------------------------------
# Which metrics fit which task
# ---------------------------------------------------------------------------------------------------------------


SHORT_NAMES = ("accuracy", "f1", "perplexity", "bleu", "chrf", "rouge")
"""the metric names suggested first (``score``'s own names; the rest are their parts: f1_macro, rouge1 ...)"""


def _or_list(names: Sequence[str]) -> str:
    return names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]


def check_metric_fits(metric: str, task: str) -> None:
    """Raise UserError when ``metric`` does not apply to ``task`` (BLEU on a classifier).

    Raises:
        UserError: an unknown task, an unknown metric (with the nearest name), or a metric of another task,
            e.g. "bleu does not apply to text-classification; use accuracy or f1".
    """
    from toolkit.registry import TASKS

    fits = TASKS.get(task, "task").metric_names
    known = sorted({m for _, t in TASKS.items() for m in t.metric_names})
    if metric not in known:
        raise UserError(f"'{metric}' is not a metric{did_you_mean(metric, known)}")
    if metric not in fits:
        raise UserError(f"{metric} does not apply to {task}; use {_or_list([m for m in fits if m in SHORT_NAMES])}")


# ---------------------------------------------------------------------------------------------------------------
# Classification
# ---------------------------------------------------------------------------------------------------------------

CLASSIFICATION_CONVENTIONS = {
    "accuracy": "sklearn accuracy_score, fraction in [0, 1]",
    "f1_macro": "sklearn f1_score average=macro over the classes present in y_true or y_pred, zero_division=0, "
                "fraction in [0, 1]",
    "auc_roc": "sklearn roc_auc_score, fraction in [0, 1]; binary: probability of the positive class labels[1]; "
               "more classes: one-vs-rest macro from the probability matrix",
    "confusion_matrix": "sklearn confusion_matrix, rows = true class, columns = predicted class, in labels order",
}
SCALAR_CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "auc_roc")


def _check_lengths(y_true: Sequence[int], y_pred: Sequence[int], probs: np.ndarray | None,
                   labels: Sequence[str]) -> np.ndarray | None:
    if len(y_true) != len(y_pred):
        raise ValueError(f"y_true has {len(y_true)} items but y_pred has {len(y_pred)}")
    if len(y_true) == 0:
        raise ValueError("no examples to score")
    k = len(labels)
    for name, ys in (("y_true", y_true), ("y_pred", y_pred)):
        bad = [y for y in ys if not 0 <= int(y) < k]
        if bad:
            raise ValueError(f"{name} holds class index {bad[0]} but there are {k} labels")
    if probs is None:
        return None
    p = np.asarray(probs, dtype=np.float64)
    if p.ndim == 1:  # binary: the positive class's probability
        if k != 2:
            raise ValueError(f"a 1-D probability vector needs 2 labels, got {k}")
        p = np.stack([1.0 - p, p], axis=1)
    if p.shape != (len(y_true), k):
        raise ValueError(f"probs has shape {p.shape}; expected ({len(y_true)}, {k})")
    return p


def _auc_roc(y_true: np.ndarray, probs: np.ndarray | None, k: int) -> tuple[float | None, str | None]:
    """ROC AUC, or None and why it is undefined."""
    from sklearn.metrics import roc_auc_score

    if probs is None:
        return None, "no class probabilities given"
    if not np.all(np.isfinite(probs)):
        return None, "probabilities hold NaN or inf"
    present = set(np.unique(y_true).tolist())
    if len(present) < 2:
        return None, "only one class present in y_true; ROC AUC is undefined"
    if k == 2:
        return float(roc_auc_score(y_true, probs[:, 1])), None
    absent = [c for c in range(k) if c not in present]
    if absent:
        return None, (f"class index(es) {absent} absent from y_true; one-vs-rest AUC is undefined for them")
    try:
        return float(roc_auc_score(y_true, probs, multi_class="ovr", average="macro", labels=list(range(k)))), None
    except ValueError as e:  # e.g. rows that do not sum to 1
        return None, str(e)


def classification_metrics(y_true: Sequence[int], y_pred: Sequence[int], probs: np.ndarray | None,
                           labels: Sequence[str]) -> dict[str, Any]:
    """Accuracy, macro-F1, AUC-ROC and the confusion matrix of a classifier's predictions.

    Args:
        y_true, y_pred: class indices into ``labels``.
        probs: (N, K) class probabilities (rows summing to 1), a 1-D vector of the positive class's probability
            for a binary task, or None (then ``auc_roc`` is None).
        labels: class names; their order is the confusion matrix's order, and ``labels[1]`` is the positive class
            of a binary task.

    Returns:
        ``{"accuracy", "f1_macro", "auc_roc", "confusion_matrix", "labels", "n", "conventions", "undefined"}``;
        ``undefined`` maps a metric that is None to the reason.

    Raises:
        ValueError: lengths or shapes that do not agree, a class index outside ``labels``.
    """
    from sklearn.metrics import accuracy_score, confusion_matrix, f1_score

    p = _check_lengths(y_true, y_pred, probs, labels)
    t = np.asarray(y_true, dtype=np.int64)
    y = np.asarray(y_pred, dtype=np.int64)
    auc, why = _auc_roc(t, p, len(labels))
    return {
        "accuracy": float(accuracy_score(t, y)),
        "f1_macro": float(f1_score(t, y, average="macro", zero_division=0)),
        "auc_roc": auc,
        "confusion_matrix": confusion_matrix(t, y, labels=list(range(len(labels)))).tolist(),
        "labels": list(labels),
        "n": int(len(t)),
        "conventions": dict(CLASSIFICATION_CONVENTIONS),
        "undefined": {"auc_roc": why} if why else {},
    }


def group_metrics(y_true: Sequence[int], y_pred: Sequence[int], probs: np.ndarray | None, groups: Sequence[str],
                  labels: Sequence[str]) -> dict[str, Any]:
    """Every classification metric per subgroup, and the largest gap between groups.

    Returns:
        ``{"per_group": {group: metrics (as classification_metrics, without conventions)},
        "max_gap": {metric: max over groups - min over groups}, "gap_between": {metric: [best, worst]},
        "conventions": {...}}``. A group where a metric is undefined is left out of that metric's gap; a metric
        defined in fewer than two groups has no gap.
    """
    if len(groups) != len(y_true):
        raise ValueError(f"groups has {len(groups)} items but y_true has {len(y_true)}")
    p = _check_lengths(y_true, y_pred, probs, labels)
    idx: dict[str, list[int]] = {}
    for i, g in enumerate(groups):
        idx.setdefault(str(g), []).append(i)
    per_group: dict[str, dict[str, Any]] = {}
    for g in sorted(idx):
        rows = idx[g]
        m = classification_metrics([y_true[i] for i in rows], [y_pred[i] for i in rows],
                                   None if p is None else p[rows], labels)
        m.pop("conventions")
        per_group[g] = m
    max_gap: dict[str, float] = {}
    gap_between: dict[str, list[str]] = {}
    for metric in SCALAR_CLASSIFICATION_METRICS:
        vals = {g: m[metric] for g, m in per_group.items() if m[metric] is not None}
        if len(vals) < 2:
            continue
        best, worst = max(vals, key=vals.get), min(vals, key=vals.get)
        max_gap[metric] = float(vals[best] - vals[worst])
        gap_between[metric] = [best, worst]
    return {
        "per_group": per_group,
        "max_gap": max_gap,
        "gap_between": gap_between,
        "conventions": {
            **CLASSIFICATION_CONVENTIONS,
            "max_gap": "max over groups minus min over groups of each metric (absolute, same units); groups "
                       "where the metric is undefined are left out",
        },
    }


# ---------------------------------------------------------------------------------------------------------------
# Generation: BLEU, chrF (sacrebleu), ROUGE (rouge-score)
# ---------------------------------------------------------------------------------------------------------------

def _check_pairs(hyps: Sequence[str], refs: Sequence[Any]) -> None:
    if isinstance(hyps, str) or isinstance(refs, str):
        raise TypeError("hypotheses and references are lists of strings, not one string")
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses but {len(refs)} references")
    if not hyps:
        raise ValueError("no examples to score")


def _ref_streams(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]]) -> list[list[str]]:
    """sacrebleu's layout: one stream per reference position. ``refs`` is one reference per hypothesis, or a list
    of references per hypothesis (the same number for each)."""
    _check_pairs(hyps, refs)
    if all(isinstance(r, str) for r in refs):
        return [list(refs)]  # type: ignore[arg-type]
    counts = {len(r) for r in refs}
    if len(counts) != 1:
        raise ValueError("every hypothesis needs the same number of references for sacrebleu")
    return [list(s) for s in zip(*refs)]


def bleu(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]], tokenize: str = "13a",
         lowercase: bool = False) -> dict[str, Any]:
    """Corpus BLEU with sacrebleu.

    Returns:
        ``{"bleu": 0-100, "signature": sacrebleu's signature, "convention"}``.

    Raises:
        UserError: an unknown ``tokenize`` name (with the nearest), or a tokenizer whose extra is missing.
    """
    from sacrebleu.metrics import BLEU
    from sacrebleu.metrics.bleu import _TOKENIZERS

    if tokenize not in _TOKENIZERS:
        raise UserError(f"'{tokenize}' is not a sacrebleu tokenizer{did_you_mean(tokenize, list(_TOKENIZERS))}")
    streams = _ref_streams(hyps, refs)
    try:
        metric = BLEU(tokenize=tokenize, lowercase=lowercase)
        score = metric.corpus_score(list(hyps), streams)
    except (ImportError, OSError, RuntimeError) as e:  # mecab / sentencepiece tokenizers need extras or files
        raise UserError(f"sacrebleu tokenizer '{tokenize}' is not usable here ({e}); use 13a") from e
    sig = str(metric.get_signature())
    return {"bleu": float(score.score), "signature": sig,
            "convention": f"sacrebleu corpus BLEU, 0-100 scale; {sig}"}


def chrf(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]], word_order: int = 0) -> dict[str, Any]:
    """Corpus chrF with sacrebleu (``word_order=2`` is chrF++).

    Returns:
        ``{"chrf": 0-100, "signature", "convention"}``.
    """
    from sacrebleu.metrics import CHRF

    streams = _ref_streams(hyps, refs)
    metric = CHRF(word_order=word_order)
    score = metric.corpus_score(list(hyps), streams)
    sig = str(metric.get_signature())
    name = "chrF++" if word_order else "chrF"
    return {"chrf": float(score.score), "signature": sig, "convention": f"sacrebleu corpus {name}, 0-100 scale; {sig}"}


ROUGE_TYPES = ("rouge1", "rouge2", "rougeL", "rougeLsum")


def rouge_convention(use_stemmer: bool) -> str:
    return (f"rouge-score F-measure averaged over examples, fractions in [0, 1] (x1, not x100); "
            f"stemmer={'on' if use_stemmer else 'off'}; default tokenizer (lowercase, characters outside [a-z0-9] "
            f"become spaces); rougeLsum splits sentences on newlines (one sentence per line), so a one-line text "
            f"scores as rougeL; several references: the best per example (score_multi)")


def rouge(hyps: Sequence[str], refs: Sequence[str] | Sequence[Sequence[str]], use_stemmer: bool = True,
          rouge_types: Sequence[str] = ROUGE_TYPES) -> dict[str, Any]:
    """ROUGE F-measures with rouge-score, averaged over examples.

    For rougeLsum, put each sentence of a summary on its own line ("\\n"-separated), as rouge-score expects;
    without newlines rougeLsum equals rougeL.

    Returns:
        ``{"rouge1", "rouge2", "rougeL", "rougeLsum": fractions in [0, 1], "use_stemmer", "convention"}``.
    """
    from rouge_score import rouge_scorer

    _check_pairs(hyps, refs)
    for t in rouge_types:  # what rouge-score accepts; it would only complain at the first score() call
        if not re.fullmatch(r"rouge[1-9]|rougeL|rougeLsum", t):
            raise UserError(f"'{t}' is not a ROUGE type{did_you_mean(t, list(ROUGE_TYPES))}")
    scorer = rouge_scorer.RougeScorer(list(rouge_types), use_stemmer=use_stemmer)
    sums = dict.fromkeys(rouge_types, 0.0)
    for h, r in zip(hyps, refs):
        s = scorer.score(r, h) if isinstance(r, str) else scorer.score_multi(list(r), h)  # (target, prediction)
        for t in rouge_types:
            sums[t] += s[t].fmeasure
    out: dict[str, Any] = {t: sums[t] / len(hyps) for t in rouge_types}
    out["use_stemmer"] = use_stemmer
    out["convention"] = rouge_convention(use_stemmer)
    return out
