"""The accuracy guard: keep the layers that quantization (or pruning) hurts most in float, until the variant is
within its quality budget on the validation split.

How sensitivity is measured (the usual leave-one-out-in-float search of accuracy-aware quantization tools):
compress everything, and if that is over budget, compress everything *but one group* for each candidate group
(a transformer layer, the embeddings, a CNN block, the head): the metric recovered by keeping that group in float
is its sensitivity. One evaluation per group, not one per subset. Then groups are kept in float greedily, most
sensitive first, re-measuring after each, until the variant is within budget.

Budgets: for higher-is-better metrics that are fractions (accuracy) the budget is an absolute drop (0.01 = one
point); for lower-is-better ones (perplexity) it is a relative rise (0.01 = 1 % higher perplexity).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class GuardResult:
    """What the guard settled on."""

    kept_in_float: list[str]
    """candidate groups left uncompressed, most sensitive first (empty: everything compressed)"""
    metric: float
    """the validation metric of the setting kept"""
    within_budget: bool
    sensitivity: dict[str, float] = field(default_factory=dict)
    """metric recovered by keeping each group alone in float (positive = that group hurts); empty when the fully
    compressed model was already within budget"""
    baseline: float = math.nan
    """the parent's metric"""
    compressed_metric: float = math.nan
    """the metric with every candidate compressed"""
    evaluations: int = 0
    best_partial: dict[str, Any] = field(default_factory=dict)
    """when nothing met the budget: the best setting tried ({"kept_in_float", "metric"})"""

    def to_info(self, metric_name: str = "metric") -> dict[str, Any]:
        """The fields a Variant.info records."""
        out: dict[str, Any] = {
            "metric": metric_name, "baseline": _r(self.baseline), "compressed": _r(self.compressed_metric),
            "kept": _r(self.metric), "within_budget": self.within_budget, "evaluations": self.evaluations,
            "layers_in_float": list(self.kept_in_float),
        }
        if self.sensitivity:
            out["sensitivity"] = {k: _r(v) for k, v in self.sensitivity.items()}
        if self.best_partial:
            out["best_partial"] = {"kept_in_float": self.best_partial["kept_in_float"],
                                   "metric": _r(self.best_partial["metric"])}
        return out


def record_guard(info: dict[str, Any], result: GuardResult | None, metric_name: str | None,
                 note: Callable[[], str]) -> None:
    """Write the guard's outcome into a variant's ``info``: "guard", "validation" and, over budget, ``note()``."""
    if result is None:
        info["guard"] = {"skipped": "no validation data for this model (see the log)"}
        return
    info["guard"] = result.to_info(metric_name or "metric")
    info["validation"] = {"metric": metric_name, "parent": result.baseline, "variant": result.metric}
    if not result.within_budget:
        info["note"] = note()


def _r(x: float) -> float:
    return round(float(x), 6) if x is not None and math.isfinite(x) else x


def degradation(metric: float, baseline: float, higher_is_better: bool = True) -> float:
    """How much worse ``metric`` is than ``baseline`` in the budget's terms (negative: better).

    Higher-is-better (fractions such as accuracy): ``baseline - metric``. Lower-is-better (perplexity, loss):
    the relative rise ``(metric - baseline) / |baseline|``.
    """
    if not math.isfinite(metric):
        return math.inf
    if higher_is_better:
        return baseline - metric
    return (metric - baseline) / max(abs(baseline), 1e-12)


def within(metric: float, baseline: float, budget: float, higher_is_better: bool = True) -> bool:
    """True when ``metric`` is at most ``budget`` worse than ``baseline`` (a tiny tolerance absorbs float noise)."""
    return degradation(metric, baseline, higher_is_better) <= budget + 1e-9


def guard(evaluate: Callable[[set[str]], float], baseline: float, candidates: list[str], budget: float,
          higher_is_better: bool = True, emit: Any = None) -> GuardResult:
    """Find the fewest groups to keep in float so the compressed model is within ``budget`` of ``baseline``.

    Args:
        evaluate: builds the compressed model with the given candidate groups kept in float and returns its
            validation metric. Called with ``set()`` first (everything compressed).
        baseline: the parent's metric on the same data.
        candidates: the groups that may stay in float (layer names), in model order.
        budget: the largest degradation allowed (see ``degradation``).
        higher_is_better: the metric's direction.
        emit: a StageEmitter for log lines (optional).

    Returns:
        GuardResult. When no setting meets the budget, ``kept_in_float`` is empty (the fully compressed model,
        which the caller keeps and flags), ``within_budget`` is False and ``best_partial`` says how close the
        search came.
    """
    def log(message: str, level: str = "info") -> None:
        if emit is not None:
            emit.log(f"guard: {message}", level)

    def fmt(m: float) -> str:
        return f"{m:.4f}"

    n_evals = 1
    full = evaluate(set())
    result = GuardResult([], full, within(full, baseline, budget, higher_is_better), baseline=baseline,
                         compressed_metric=full, evaluations=n_evals)
    if result.within_budget:
        log(f"compressed everywhere: {fmt(full)} vs {fmt(baseline)} in float, within the budget of {budget:g}")
        return result
    if not candidates:
        log(f"compressed: {fmt(full)} vs {fmt(baseline)} in float, over the budget of {budget:g}, and no layer "
            f"can be kept in float", "warning")
        return result
    log(f"compressed everywhere: {fmt(full)} vs {fmt(baseline)} in float, over the budget of {budget:g}; "
        f"measuring the sensitivity of {len(candidates)} layer groups")
    sign = 1.0 if higher_is_better else -1.0
    alone: dict[str, float] = {}
    for name in candidates:
        alone[name] = evaluate({name})
        n_evals += 1
    sensitivity = {name: sign * (alone[name] - full) for name in candidates}
    order = sorted(candidates, key=lambda c: (-sensitivity[c], candidates.index(c)))
    log("sensitivity (metric recovered in float): " +
        ", ".join(f"{c} {sensitivity[c]:+.4f}" for c in order[:8]) + (" …" if len(order) > 8 else ""))
    kept: list[str] = []
    best = {"kept_in_float": [], "metric": full}
    for name in order:
        kept.append(name)
        if len(kept) == len(candidates):
            break  # every group in float is the parent itself, not a compressed variant
        if len(kept) == 1:
            metric = alone[name]  # measured during the sensitivity pass
        else:
            metric = evaluate(set(kept))
            n_evals += 1
        if sign * (metric - best["metric"]) > 0:
            best = {"kept_in_float": list(kept), "metric": metric}
        if within(metric, baseline, budget, higher_is_better):
            log(f"within budget with {len(kept)} of {len(candidates)} groups in float ({', '.join(kept)}): "
                f"{fmt(metric)} vs {fmt(baseline)}")
            return GuardResult(list(kept), metric, True, sensitivity, baseline, full, n_evals)
    log(f"no setting met the budget of {budget:g}: the best tried kept {len(best['kept_in_float'])} groups in "
        f"float for {fmt(best['metric'])} vs {fmt(baseline)}; keeping the fully compressed model, flagged",
        "warning")
    return GuardResult([], full, False, sensitivity, baseline, full, n_evals, best_partial=best)
