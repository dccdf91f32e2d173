"""The report: which variant to ship to which device (report.json, report.md, plots/*.png).

Built only from the run directory's files — ``variants/*/variant.json``, ``export.json``, ``eval.json``,
``manifest.json``, ``train/metrics.jsonl`` (and the warnings in ``events.jsonl``) — so it can be rebuilt at any
time and never depends on what a process held in memory.

Decisions, per target:
- **main metric**: the task's (``Task.main_metric``): accuracy for classifiers, BLEU for seq2seq, perplexity for
  language models (lower is better); the task's secondary metric is named beside it.
- **quality drop** vs the baseline, in the main metric's terms: accuracy in absolute fractions; BLEU in
  points/100; perplexity as the relative increase. A variant is ``within_budget`` when its drop is at most
  ``[eval] max_quality_drop``.
- **latency** compared: ``p10_ms`` (the 10th percentile of the host's interleaved calls: load only adds time) where
  the host timed it so, else p50 (a device's runner, an estimate) — :func:`latency_ms`.
- **Pareto front**: the variants no other variant beats on both quality and latency on that target.
- **recommendation**: the fastest variant that is within budget, fits the device's model-size/memory
  budget and has no failed export verification; null (and a plain sentence in report.md) when none does.
  ``recommendation_noise`` says when its lead over the runner-up is within the noise (the spreads of their rounds'
  p10s overlap, or a figure is unstable).
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from toolkit.config import Recipe
from toolkit.rundir import (RunDir, atomic_write_json, atomic_write_text, load_manifest, record_artifact,
                            sha256_path, update_manifest)
from toolkit.tasks.base import MainMetric

REPORT_SCHEMA = 1
STAGE = "report"
TOLERANCE = 1e-9  # a drop exactly at the budget counts as within it (floating-point noise aside)
METRIC_ORDER = ("accuracy", "f1_macro", "auc_roc", "bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum",
                "perplexity", "loss")
LOWER_IS_BETTER = {"perplexity", "loss"}


def main_metric(task: str) -> MainMetric:
    """The recommendation's metric for ``task`` (the task says which; ``toolkit.tasks``)."""
    from toolkit.tasks import get_task

    return get_task(task).main_metric


# ---- reading the run directory ------------------------------------------------------------------------

def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _variant_dirs(run: RunDir, order: list[str]) -> list[Path]:
    """Folders holding a variant.json: base first, then the recipe's step order, then by lineage depth and name."""
    if not run.variants.is_dir():
        return []
    found = {p.name: p for p in run.variants.iterdir() if (p / "variant.json").is_file()}
    parents = {name: (_read_json(p / "variant.json") or {}).get("parent") for name, p in found.items()}

    def depth(name: str) -> int:
        seen = 0
        while parents.get(name) and seen < len(parents):
            name, seen = parents[name], seen + 1
        return seen

    rank = {name: i for i, name in enumerate(["base", *order])}
    return [found[n] for n in sorted(found, key=lambda n: (rank.get(n, len(rank)), depth(n), n))]


def read_metrics_log(run: RunDir) -> list[dict[str, Any]]:
    """train/metrics.jsonl as records (a torn last line is ignored)."""
    out = []
    if run.metrics.exists():
        for line in run.metrics.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return out


def _warnings(run: RunDir) -> list[str]:
    """Warning lines of each stage's latest run (from events.jsonl), without repeats."""
    from toolkit.events import read_events

    events = read_events(run.events)
    last_start: dict[str, int] = {}
    for i, e in enumerate(events):
        # The session marks a stage's start with its index; a stage run alone marks it with its own start.
        if e.get("kind") == "start" and ("index" in e or e.get("stage") not in last_start):
            last_start[e.get("stage", "")] = i
    out: list[str] = []
    for i, e in enumerate(events):
        stage = e.get("stage", "")
        if e.get("kind") == "log" and e.get("level") == "warning" and i > last_start.get(stage, -1):
            line = f"{stage}: {e.get('message', '')}"
            if line not in out:
                out.append(line)
    return out


# ---- decisions -----------------------------------------------------------------------------------------

def _better(a: float, b: float, higher: bool) -> bool:
    return a > b if higher else a < b


def pareto_front(points: list[tuple[str, float, float]], higher_is_better: bool) -> list[str]:
    """Names of the non-dominated points among (name, quality, latency), fastest first.

    A point is dominated when another is at least as good on both quality and latency and strictly better
    on one of them.
    """
    front = []
    for name, q, lat in points:
        dominated = any(
            (oq == q or _better(oq, q, higher_is_better)) and ol <= lat and (_better(oq, q, higher_is_better) or ol < lat)
            for other, oq, ol in points if other != name)
        if not dominated:
            front.append((lat, name))
    return [name for _, name in sorted(front)]


def _fit(size_bytes: int | None, latency: dict[str, Any] | None, profile: Any) -> dict[str, Any] | None:
    """The fit check against a target profile's [budget] (None when the profile is unknown)."""
    if profile is None:
        return None
    budget = profile.budget
    out: dict[str, Any] = {"fits": True, "reasons": [], "max_model_mb": budget.max_model_mb,
                           "max_memory_mb": budget.max_memory_mb}
    if size_bytes is not None:
        mb = size_bytes / 2**20
        out["model_mb"] = round(mb, 3)
        if mb > budget.max_model_mb:
            out["fits"] = False
            out["reasons"].append(f"model {mb:.1f} MB > {budget.max_model_mb:g} MB")
    memory = None
    for key in ("memory_mb", "rss_growth_mb"):
        if latency and isinstance(latency.get(key), (int, float)):
            memory = float(latency[key])
            break
    if memory is not None:
        out["memory_mb"] = round(memory, 3)
        if memory > budget.max_memory_mb:
            out["fits"] = False
            out["reasons"].append(f"memory {memory:.1f} MB > {budget.max_memory_mb:g} MB")
    return out


def _size_bytes(variant: dict, export: dict | None, evaluation: dict | None) -> int | None:
    """DESIGN.md: the ONNX file (all ONNX files for encoder-decoder models), else what eval/compress measured."""
    # a variant without a graph (an ExecuTorch-only one) lists onnx as not made, with no path and size 0
    onnx = [f.get("size_bytes") for f in (export or {}).get("files", []) if f.get("format") == "onnx" and f.get("path")]
    if onnx and all(isinstance(s, int) for s in onnx):
        return int(sum(onnx))
    for source in ((evaluation or {}).get("size_bytes"), variant.get("info", {}).get("size_bytes")):
        if isinstance(source, (int, float)):
            return int(source)
    return None


def _params(variant: dict, evaluation: dict | None) -> int | None:
    info = variant.get("info", {})
    for value in ((evaluation or {}).get("params"), info.get("params_after"), info.get("params"),
                  info.get("parameters")):
        if isinstance(value, (int, float)):
            return int(value)
    return None


def _load_profiles(names: list[str]) -> dict[str, Any]:
    from toolkit.errors import UserError
    from toolkit.targets import load_target

    out: dict[str, Any] = {}
    for name in names:
        try:
            out[name] = load_target(name)
        except UserError:
            out[name] = None  # a profile that vanished since the run: no fit check for it
    return out


def build_report(recipe: Recipe, run: RunDir, profiles: dict[str, Any] | None = None) -> dict[str, Any]:
    """report.json's content (DESIGN.md shape plus the decisions' inputs), from the run directory's files."""
    from toolkit.tasks import get_task

    metric = main_metric(recipe.task)
    order = [step.get("name", "") for step in recipe.compress if isinstance(step, dict)]
    manifest = load_manifest(run)
    rows: list[dict[str, Any]] = []
    for folder in _variant_dirs(run, order):
        variant = _read_json(folder / "variant.json") or {}
        export = _read_json(folder / "export.json")
        evaluation = _read_json(folder / "eval.json")
        files = [{k: f.get(k) for k in ("format", "path", "size_bytes", "verified")}
                 | ({"reason": f["reason"]} if f.get("reason") else {})
                 for f in (export or {}).get("files", [])]
        ev = evaluation or {}
        rows.append({
            "name": variant.get("name", folder.name), "parent": variant.get("parent"),
            "method": variant.get("method"), "params": _params(variant, evaluation),
            "size_bytes": _size_bytes(variant, export, evaluation), "files": files,
            "metrics": dict(ev.get("metrics", {})), "conventions": dict(ev.get("conventions", {})),
            "groups": dict(ev.get("groups", {})), "robustness": dict(ev.get("robustness", {})),
            "within_budget": None, "latency": dict(ev.get("latency", {})),
            "evaluated_with": ev.get("evaluated_with"), "examples": ev.get("examples"),
            "guard_within_budget": variant.get("within_budget"), "info": variant.get("info", {}),
            "evaluated": evaluation is not None,
        })
    targets = list(recipe.eval.targets)
    for row in rows:
        targets += [t for t in row["latency"] if t not in targets]
    profiles = _load_profiles(targets) if profiles is None else profiles
    base = next((r for r in rows if r["name"] == "base"), rows[0] if rows else None)
    base_value = base["metrics"].get(metric.name) if base else None
    budget = recipe.eval.max_quality_drop
    for row in rows:
        value = row["metrics"].get(metric.name)
        if isinstance(value, (int, float)) and isinstance(base_value, (int, float)):
            row["quality_drop"] = metric.drop_of(base_value, value)
            row["within_budget"] = row["quality_drop"] <= budget + TOLERANCE
        else:
            row["quality_drop"] = None
        row["verification_failed"] = [f["path"] or f"{f.get('format')} export" for f in row["files"]
                                      if f.get("verified") is False]
        row["speedup"], row["fit"] = {}, {}
        for t in targets:
            lat, base_lat = row["latency"].get(t), (base or {}).get("latency", {}).get(t)
            if latency_ms(lat) and latency_ms(base_lat):
                row["speedup"][t] = latency_ms(base_lat) / latency_ms(lat)
            fit = _fit(row["size_bytes"], lat, profiles.get(t))
            if fit is not None:
                row["fit"][t] = fit
        row["size_ratio"] = (row["size_bytes"] / base["size_bytes"]
                             if base and row["size_bytes"] and base.get("size_bytes") else None)
    pareto, recommendation, reasons, noise = {}, {}, {}, {}
    for t in targets:
        points = [(r["name"], float(r["metrics"][metric.name]), latency_ms(r["latency"].get(t))) for r in rows
                  if isinstance(r["metrics"].get(metric.name), (int, float)) and latency_ms(r["latency"].get(t))]
        pareto[t] = pareto_front(points, metric.higher_is_better)
        recommendation[t], reasons[t] = _recommend(rows, t, metric)
        noise[t] = _within_noise(rows, recommendation[t], t, metric)
    return {
        "schema_version": REPORT_SCHEMA, "run": recipe.name, "task": recipe.task,
        "baseline": base["name"] if base else None, "variants": rows, "pareto": pareto,
        "recommendation": recommendation,
        "main_metric": {"name": metric.name, "higher_is_better": metric.higher_is_better, "drop": metric.drop,
                        "baseline": base_value, "max_quality_drop": budget, "definition": metric.describe(),
                        "secondary": get_task(recipe.task).secondary_metric},
        "no_recommendation": {t: why for t, why in reasons.items() if why},
        "recommendation_noise": {t: why for t, why in noise.items() if why},
        "targets": {t: _target_summary(profiles.get(t)) for t in targets},
        "conventions": {
            "speedup": "baseline latency / variant latency on the same target (>1: faster than the baseline); "
                       "latency = p10_ms (10th percentile of the host's interleaved calls) where measured so, else p50",
            "size_ratio": "variant size_bytes / baseline size_bytes (<1: smaller)",
            "size_bytes": "the ONNX file(s) of the variant, else its .pte program or the model files compression or eval measured",
            "quality_drop": metric.describe(),
            "pareto": "variants that no other variant beats on both the main metric and latency",
            "recommendation": "the fastest variant within max_quality_drop of the baseline that fits the "
                              "target's [budget] and has no failed export verification",
            "recommendation_noise": "said when the recommended variant's latency spread (interquartile range of its "
                                    "round medians) overlaps the runner-up's, or either figure is unstable: the "
                                    "choice between them is within the measurement's noise",
            "fit": "model file size (MiB) vs [budget] max_model_mb; measured memory vs max_memory_mb where known",
        },
        "verification": manifest.get("verification", {}),
        "warnings": _warnings(run),
        "generated": round(time.time(), 3),
    }


def latency_ms(lat: dict[str, Any] | None) -> float | None:
    """The figure a variant's latency on a target is compared by: the 10th percentile of the host's interleaved
    calls where the host timed it so (``p10_ms``: robust to background load, which only adds time), else p50 (a
    device's runner, an estimate)."""
    if not lat:
        return None
    for key in ("p10_ms", "p50_ms"):
        if isinstance(lat.get(key), (int, float)) and lat[key] > 0:
            return float(lat[key])
    return None


def _eligible(rows: list[dict], target: str, metric: MainMetric) -> tuple[list[dict], str | None]:
    """(variants the recommendation may choose, fastest first, or [] and why none)."""
    timed = [r for r in rows if latency_ms(r["latency"].get(target))]
    if not timed:
        return [], f"no variant has a latency for {target}"
    if not any(r["within_budget"] is not None for r in rows):
        return [], f"the baseline has no {metric.name} to compare against"
    within = [r for r in timed if r["within_budget"]]
    if not within:
        return [], f"no variant with a latency for {target} is within the quality budget"
    fitting = [r for r in within if (r["fit"].get(target) or {"fits": True})["fits"]]
    if not fitting:
        return [], f"every variant within the quality budget is over {target}'s model-size or memory budget"
    verified = [r for r in fitting if not r["verification_failed"]]
    if not verified:
        return [], "every variant within budget that fits failed an export verification"
    sign = -1 if metric.higher_is_better else 1
    return sorted(verified, key=lambda r: (latency_ms(r["latency"][target]), sign * r["metrics"][metric.name])), None


def _recommend(rows: list[dict], target: str, metric: MainMetric) -> tuple[str | None, str | None]:
    """(the fastest eligible variant, None) or (None, why none is eligible)."""
    ranked, why = _eligible(rows, target, metric)
    return (ranked[0]["name"], None) if ranked else (None, why)


def _within_noise(rows: list[dict], chosen: str | None, target: str, metric: MainMetric) -> str | None:
    """A sentence when the recommendation's lead over the runner-up is within the measurement's noise."""
    ranked, _ = _eligible(rows, target, metric)
    if chosen is None or len(ranked) < 2:
        return None
    best, second = ranked[0]["latency"][target], ranked[1]["latency"][target]
    a, b = latency_ms(best), latency_ms(second)
    name = ranked[1]["name"]
    if best.get("stable") is False or second.get("stable") is False:
        return (f"{chosen} ({a:.3g} ms) vs runner-up {name} ({b:.3g} ms): a figure is unstable (its round medians "
                f"spread over 10 %); the choice between them is within the noise")
    lo, hi = best.get("p10_spread_ms"), second.get("p10_spread_ms")
    if isinstance(lo, list) and isinstance(hi, list) and len(lo) == len(hi) == 2 and lo[1] >= hi[0]:
        return (f"{chosen} ({a:.3g} ms, IQR {lo[0]:.3g}-{lo[1]:.3g}) vs runner-up {name} ({b:.3g} ms, IQR "
                f"{hi[0]:.3g}-{hi[1]:.3g}): their spreads overlap, so the choice between them is within the noise")
    return None


def _target_summary(profile: Any) -> dict[str, Any]:
    if profile is None:
        return {"profile": None}
    return {"description": profile.description, "runtime": profile.runtime, "threads": profile.threads,
            "reach": profile.reach.kind, "max_model_mb": profile.budget.max_model_mb,
            "max_memory_mb": profile.budget.max_memory_mb}


# ---- writing -------------------------------------------------------------------------------------------

def write_report(recipe: Recipe, run: RunDir) -> Path:
    """Write plots/*.png, report.md and report.json (last: its presence means the report is complete).

    Returns:
        the path of report.json.
    """
    from toolkit.plots import write_plots
    from toolkit.report_md import render_markdown

    report = build_report(recipe, run)
    report["plots"] = write_plots(report, read_metrics_log(run), run)
    atomic_write_text(run.report_md, render_markdown(report))
    atomic_write_json(run.report_json, report)
    for path in [run.report_md, run.report_json, *(run.path / p for p in report["plots"])]:
        record_artifact(run, path.relative_to(run.path).as_posix(), "report", path, STAGE)
    update_manifest(run, report={"written": round(time.time(), 3)})
    return run.report_json


def verify_run(run: RunDir) -> list[str]:
    """Re-hash every artifact in manifest.json; one line per artifact that changed or vanished."""
    manifest = load_manifest(run)
    problems = []
    for a in manifest.get("artifacts", []):
        p = Path(a.get("path", ""))
        path = p if p.is_absolute() else run.path / p
        if not path.exists():
            problems.append(f"{a.get('name')}: {a.get('path')} is missing")
        elif sha256_path(path) != a.get("sha256"):
            problems.append(f"{a.get('name')}: {a.get('path')} changed (sha256 differs from the manifest)")
    return problems
