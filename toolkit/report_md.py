"""report.md: the report a person reads — one row per variant, the decisions in plain sentences."""
from __future__ import annotations

from typing import Any

from toolkit.report import LOWER_IS_BETTER, METRIC_ORDER, latency_ms

PARETO_MARK = "◆"
RECOMMENDED_MARK = "★"
NO_FIT_MARK = "⚠"
UNSTABLE_MARK = "(unstable)"


POINT_SCALE = {"bleu", "chrf"}  # sacrebleu's 0-100 scale


def num(v: Any, metric: str = "") -> str:
    """A metric value: 0-100 scores and values above 1 with 2 decimals, fractions with 4."""
    if not isinstance(v, (int, float)):
        return "—"
    return f"{v:.2f}" if metric in POINT_SCALE or abs(v) >= 1 else f"{v:.4f}"


def size(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    for unit, scale in (("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def count(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    if n >= 1e6:
        return f"{n / 1e6:.2f} M"
    if n >= 1e3:
        return f"{n / 1e3:.1f} k"
    return str(int(n))


def ms(v: Any) -> str:
    if not isinstance(v, (int, float)):
        return "—"
    return f"{v:.3f} ms" if v < 10 else f"{v:.1f} ms"


def metric_names(variants: list[dict[str, Any]]) -> list[str]:
    """Metric columns: DESIGN.md's order first, then any others, only those some variant has."""
    seen = {k for v in variants for k, x in v.get("metrics", {}).items() if isinstance(x, (int, float))}
    return [m for m in METRIC_ORDER if m in seen] + sorted(seen - set(METRIC_ORDER))


def latency_sources(report: dict[str, Any], target: str) -> set[str]:
    return {(v["latency"].get(target) or {}).get("source", "?") for v in report["variants"] if v["latency"].get(target)}


def render_markdown(report: dict[str, Any]) -> str:
    """The whole report.md text."""
    variants = report["variants"]
    mm = report["main_metric"]
    targets = list(report.get("targets") or report["pareto"])
    out = [f"# Report: {report['run']} ({report['task']})", ""]
    if not variants:
        return "\n".join(out + ["No variants yet: the run has not produced a model.", ""])
    out += [f"Baseline: `{report['baseline']}`. Main metric: **{mm['name']}** "
            f"({'higher' if mm['higher_is_better'] else 'lower'} is better); quality budget: a drop of at most "
            f"{mm['max_quality_drop']:g} ({mm['definition']}).", ""]

    out += ["## Recommendation", ""]
    for t in targets:
        out.append(f"- {_recommendation_sentence(report, t)}")
    out.append("")

    out += ["## Variants", ""]
    names = metric_names(variants)
    header = ["variant", "method", "from", *names, f"{mm['name']} drop", "size", "size ratio", "params"]
    for t in targets:
        sources = latency_sources(report, t)
        label = f" ({sources.pop()})" if len(sources) == 1 else ""
        header.append(f"{t} latency{label}")
    out.append("| " + " | ".join(header) + " |")
    out.append("|" + "|".join("---" for _ in header) + "|")
    for v in variants:
        drop = v.get("quality_drop")
        drop_cell = "—" if drop is None else f"{drop:+.4f}" + ("" if v.get("within_budget") else " (over)")
        cells = [f"`{v['name']}`", v.get("method") or "—", v.get("parent") or "—",
                 *[num(v["metrics"].get(m), m) for m in names], drop_cell, size(v.get("size_bytes")),
                 f"{v['size_ratio']:.2f}×" if v.get("size_ratio") else "—", count(v.get("params"))]
        for t in targets:
            cells.append(_latency_cell(report, v, t))
        out.append("| " + " | ".join(cells) + " |")
    out += ["", f"{PARETO_MARK} on the quality–latency Pareto front of that target; {RECOMMENDED_MARK} recommended "
            f"for it; {NO_FIT_MARK} over the target's model-size/memory budget. A latency cell shows, on the host, the "
            f"10th percentile of calls timed in interleaved rounds (what speed-ups compare: load only adds time) and "
            f"the median of the rounds (what a user sees), {UNSTABLE_MARK} when the rounds' medians spread over 10 % "
            f"after the extra rounds; elsewhere p50; and the "
            f"speed-up against the baseline; its label says whether it was measured on the device or estimated.", ""]
    out += _generation(variants)
    out += _conventions(report, names)
    out += _flags(report)
    plots = report.get("plots") or []
    if plots:
        out += ["## Plots", ""] + [f"![{p}]({p})" for p in plots] + [""]
    return "\n".join(out)


def _generation(variants: list[dict[str, Any]]) -> list[str]:
    """Host generation timing per variant and runtime (language models, seq2seq), when measured."""
    rows = []
    for v in variants:
        by_runtime = (v["latency"].get("host") or {}).get("by_runtime") or {}
        for runtime, entry in by_runtime.items():
            g = entry.get("generation") if isinstance(entry, dict) else None
            if isinstance(g, dict) and isinstance(g.get("ttft_ms"), (int, float)):
                tps = g.get("tokens_per_s")
                grown = entry.get("rss_growth_mb")
                rows.append(f"| `{v['name']}` | {runtime} | {ms(g['ttft_ms'])} | "
                            f"{f'{tps:.1f}' if isinstance(tps, (int, float)) else '—'} | "
                            f"{g.get('prompt_tokens', '—')} → {g.get('new_tokens', '—')} | "
                            f"{size(entry.get('model_size_bytes'))} | "
                            f"{f'{grown:.1f} MB' if isinstance(grown, (int, float)) else '—'} |")
    if not rows:
        return []
    return ["## Generation on the host", "",
            "| variant | runtime | time to first token | tokens/s (decode) | prompt → new tokens | file | memory |",
            "|---|---|---|---|---|---|---|", *rows, "",
            "memory: what loading and running the variant added to the process's peak resident set.", ""]


def _latency_cell(report: dict[str, Any], v: dict[str, Any], t: str) -> str:
    lat = v["latency"].get(t)
    shown = latency_ms(lat)
    if shown is None:
        return "—"
    cell = ms(shown)
    if isinstance(lat.get("median_ms"), (int, float)):
        cell += f" (median {ms(lat['median_ms'])})"
    if lat.get("stable") is False:
        cell += f" {UNSTABLE_MARK}"
    if len(latency_sources(report, t)) > 1:
        cell += f" ({lat.get('source', '?')})"
    if v["speedup"].get(t):
        cell += f" · {v['speedup'][t]:.2f}×"
    marks = ""
    if v["name"] in report["pareto"].get(t, []):
        marks += PARETO_MARK
    if report["recommendation"].get(t) == v["name"]:
        marks += RECOMMENDED_MARK
    if not (v["fit"].get(t) or {"fits": True})["fits"]:
        marks += NO_FIT_MARK
    return cell + (f" {marks}" if marks else "")


def _recommendation_sentence(report: dict[str, Any], t: str) -> str:
    mm = report["main_metric"]
    name = report["recommendation"].get(t)
    if name is None:
        why = report.get("no_recommendation", {}).get(t, "")
        return (f"**{t}**: no variant meets the budget ({mm['name']} drop ≤ {mm['max_quality_drop']:g} against the "
                f"baseline's {num(mm['baseline'], mm['name'])}, fits the device, exports verified): {why}.")
    v = next(x for x in report["variants"] if x["name"] == name)
    lat = v["latency"][t]
    source = lat.get("source", "unknown")
    label = "p10" if isinstance(lat.get("p10_ms"), (int, float)) else "p50"
    text = f"**{t}**: ship `{name}` — {label} {ms(latency_ms(lat))} ({source}"
    if lat.get("runtime"):
        text += f", {lat['runtime']}"
    text += ")"
    noise = (report.get("recommendation_noise") or {}).get(t)
    tail = f" Within the noise: {noise}." if noise else ""
    if name == report["baseline"]:
        return text + "; no compressed variant is faster within the quality budget." + tail
    speed = v["speedup"].get(t)
    if speed:
        text += f", {speed:.2f}× the baseline's speed"
    if v.get("size_ratio"):
        text += f", {v['size_ratio']:.2f}× its size"
    return text + (f"; {mm['name']} {num(v['metrics'].get(mm['name']), mm['name'])} vs "
                   f"{num(mm['baseline'], mm['name'])} "
                   f"(drop {v['quality_drop']:+.4f}, budget {mm['max_quality_drop']:g}).") + tail


def _conventions(report: dict[str, Any], names: list[str]) -> list[str]:
    seen: dict[str, str] = {}
    for v in report["variants"]:
        for k, text in v.get("conventions", {}).items():
            seen.setdefault(k, str(text))
    out = ["### Conventions", ""]
    out += [f"- **{k}**: {text}" for k, text in seen.items()]
    lower = [m for m in names if m in LOWER_IS_BETTER]
    if lower:
        out.append(f"- lower is better for {', '.join(lower)}; higher for the others")
    out += [f"- **{k}**: {text}" for k, text in report.get("conventions", {}).items()]
    evaluated = sorted({f"{v['evaluated_with']} on {v.get('examples')} eval examples" for v in report["variants"]
                        if v.get("evaluated_with")})
    if evaluated:
        out.append(f"- **quality measured with**: {'; '.join(evaluated)}")
    return out + [""]


def _flags(report: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    flagged: list[str] = []
    for v in report["variants"]:
        if not v.get("evaluated"):
            lines.append(f"- `{v['name']}`: not evaluated (no eval.json)")
        if v.get("guard_within_budget") is False:
            lines.append(f"- `{v['name']}`: over its compression step's accuracy guard (on validation); kept and flagged")
        if v.get("within_budget") is False:
            lines.append(f"- `{v['name']}`: {report['main_metric']['name']} drop {v['quality_drop']:+.4f} is over "
                         f"the budget {report['main_metric']['max_quality_drop']:g}")
        for t, fit in v.get("fit", {}).items():
            if not fit.get("fits", True):
                lines.append(f"- `{v['name']}` does not fit {t}: {'; '.join(fit['reasons'])}")
        for f in v.get("files", []):
            if f.get("verified") is False:
                detail = f.get("reason") or _check_summary(f.get("check") or {})
                if f.get("path"):
                    flagged.append(f["path"])
                    what = f"{f['path']} FAILED verification"
                else:  # the export itself failed: there is no file to name
                    what = f"{f.get('format')} export FAILED"
                lines.append(f"- `{v['name']}`: {what}" + (f" ({detail})" if detail else "") + "; not recommended")
            elif f.get("verified") is None and f.get("reason"):
                lines.append(f"- `{v['name']}`: {f.get('format')} not made or not verified: {f['reason']}")
    # A stage's warning about a file already flagged above would only repeat it.
    lines += [f"- {w}" for w in report.get("warnings", []) if not any(p in w for p in flagged)]
    if not lines:
        return ["## Checks", "", "Every variant fits every target's budget and every exported file passed "
                "verification.", ""]
    return ["## Checks and warnings", "", *lines, ""]


def _check_summary(check: dict[str, Any]) -> str:
    """'label agreement 0.8750 (min 0.95), cosine 0.9999 (min 0.98)' from an export check."""
    parts = []
    for key, bound, label in (("agreement", "min_agreement", "label agreement"), ("cosine", "min_cosine", "cosine"),
                              ("max_abs_diff", "atol", "max |diff|")):
        if isinstance(check.get(key), (int, float)):
            limit = check.get(bound)
            word = "max" if key == "max_abs_diff" else "min"
            parts.append(f"{label} {check[key]:.4g}" + (f" ({word} {limit:g})" if isinstance(limit, (int, float)) else ""))
    return ", ".join(parts)
