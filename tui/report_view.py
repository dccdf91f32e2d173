"""What the results screen shows, built from report.json and the variant files (rich Text; no Textual).

Measured and estimated latencies look different everywhere: an estimate is dim italic with a '~' prefix.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.text import Text

from toolkit.report import latency_ms

LOWER_IS_BETTER = {"perplexity", "loss"}
ESTIMATED = "dim italic"
# An exported file's check: verified (True), failed (False), not checked (None: skipped, or no runner here).
FILE_MARKS = {True: ("✓", "green", "verified"), False: ("✗", "bold red", "check failed"),
              None: ("?", "yellow", "not checked")}
SHORT = {"accuracy": "acc", "f1_macro": "f1", "perplexity": "ppl", "auc_roc": "auc"}


def main_metric(report: dict[str, Any]) -> tuple[str, bool]:
    """(metric name, higher is better): the report's own main_metric (the task chose it), else the first metric."""
    declared = report.get("main_metric")
    if isinstance(declared, dict) and declared.get("name"):
        return str(declared["name"]), bool(declared.get("higher_is_better", declared["name"] not in LOWER_IS_BETTER))
    for v in report.get("variants", []):
        for name in v.get("metrics") or {}:
            return name, name not in LOWER_IS_BETTER
    return "accuracy", True


def targets_of(report: dict[str, Any]) -> list[str]:
    """Every target any variant has a latency for, in first-seen order (recommendation's order first)."""
    names: list[str] = list((report.get("recommendation") or {}).keys())
    for v in report.get("variants", []):
        for t in v.get("latency") or {}:
            if t not in names:
                names.append(t)
    return names


def fmt_bytes(n: Any) -> str:
    if not isinstance(n, (int, float)):
        return "—"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if abs(n) < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return "—"


def fmt_metric(name: str, value: Any) -> str:
    if not isinstance(value, (int, float)):
        return "—"
    if name in LOWER_IS_BETTER or value > 1.5:
        return f"{value:.2f}"
    return f"{value:.3f}"


def fmt_ms(ms: Any) -> str:
    if not isinstance(ms, (int, float)):
        return "—"
    return f"{ms:.3g} ms" if ms < 100 else f"{ms:.0f} ms"


def latency_cell(lat: dict[str, Any] | None, base: dict[str, Any] | None, recommended: bool,
                 unit: bool = False) -> Text:
    """'★ 1.23 ×2.1' (latency in ms — the p10 of the host's interleaved calls, else p50 — and the speed-up vs
    the baseline); estimated: '~1.23 ×2.1' in dim italic; unstable (rounds spread over 10 %): '1.23? ×2.1'."""
    value = latency_ms(lat)
    if value is None:
        return Text("—", style="dim")
    estimated = lat.get("source") == "estimated"
    text = Text()
    if recommended:
        text.append("★ ", style="bold yellow")
    shown = fmt_ms(value) if unit else fmt_ms(value).removesuffix(" ms")
    text.append(("~" if estimated else "") + shown, style=ESTIMATED if estimated else "")
    if lat.get("stable") is False:
        text.append("?", style="yellow")
    base_value = latency_ms(base)
    if base_value:
        text.append(f" ×{base_value / value:.1f}", style=ESTIMATED if estimated else "bold")
    return text


@dataclass
class Table:
    """Column labels and rows (variant name → cells) of the variants × targets table."""

    columns: list[str]
    rows: list[tuple[str, list[Text]]]


def variants_table(report: dict[str, Any]) -> Table:
    """Variants as rows; quality metrics, size, then per target the p50 latency and speed-up vs the baseline."""
    metric, _ = main_metric(report)
    second = (report.get("main_metric") or {}).get("secondary")
    variants = report.get("variants", [])
    if second and not any(second in (v.get("metrics") or {}) for v in variants):
        second = None
    targets = targets_of(report)
    base_name = report.get("baseline", "base")
    base = next((v for v in variants if v.get("name") == base_name), variants[0] if variants else {})
    rec = report.get("recommendation") or {}
    # The method is in the detail pane; short metric names keep three targets within 80 columns.
    columns = ["variant", SHORT.get(metric, metric)] + ([SHORT.get(second, second)] if second else []) + ["size"] \
        + targets
    rows = []
    for v in variants:
        metrics = v.get("metrics") or {}
        name = Text(str(v.get("name")))
        if v.get("within_budget") is False:
            name.append(" !", style="bold red")
        if any(f.get("verified") is False for f in v.get("files") or []):
            name.append(" ✗", style="bold red")
        cells = [name]
        cells.append(Text(fmt_metric(metric, metrics.get(metric))))
        if second:
            cells.append(Text(fmt_metric(second, metrics.get(second))))
        cells.append(Text(fmt_bytes(v.get("size_bytes"))))
        for t in targets:
            lat = (v.get("latency") or {}).get(t)
            cells.append(latency_cell(lat, (base.get("latency") or {}).get(t), rec.get(t) == v.get("name")))
        rows.append((str(v.get("name")), cells))
    return Table(columns, rows)


# Every mark the variants table can show, what it means, and its style: the legend lists those shown.
TABLE_MARKS = (("★", "recommended", "bold yellow"), ("~", "estimated, not measured", ESTIMATED),
               ("?", "unstable: its timing rounds spread over 10 % (busy machine)", "yellow"),
               ("!", "over its quality budget", "bold red"), ("✗", "an exported file failed its check", "bold red"),
               ("—", "none", "dim"))


def table_legend(data: Table) -> Text:
    """One line naming each mark that appears in the table's cells (and nothing it does not show)."""
    shown = " ".join(cell.plain for _, cells in data.rows for cell in cells)
    out = Text()
    for mark, meaning, style in TABLE_MARKS:
        if mark in shown:
            out.append("   " if out else "")
            out.append(mark, style=style)
            out.append(f" {meaning}", style="dim")
    return out


def pareto_points(report: dict[str, Any], target: str) -> tuple[list[tuple[str, float, float, bool]], list[str]]:
    """[(variant, p50 ms, main metric, estimated)] on ``target`` and the Pareto front's names (from report.json)."""
    metric, _ = main_metric(report)
    points = []
    for v in report.get("variants", []):
        lat = (v.get("latency") or {}).get(target) or {}
        value = (v.get("metrics") or {}).get(metric)
        if latency_ms(lat) is not None and isinstance(value, (int, float)):
            points.append((str(v["name"]), latency_ms(lat), float(value), lat.get("source") == "estimated"))
    front = [str(n) for n in (report.get("pareto") or {}).get(target, [])]
    return points, front


def recommendation_text(report: dict[str, Any]) -> Text:
    """One line per target: the recommended variant, its quality against the baseline and its latency."""
    metric, higher = main_metric(report)
    by_name = {v.get("name"): v for v in report.get("variants", [])}
    base = by_name.get(report.get("baseline", "base")) or {}
    out = Text()
    rec = report.get("recommendation") or {}
    if not rec:
        out.append("report.json holds no recommendation", style="dim")
    for target, name in rec.items():
        out.append(f"{target}: ", style="bold")
        if not name:
            why = (report.get("no_recommendation") or {}).get(target) or "no variant is within the quality budget"
            out.append(f"none: {why}\n", style="yellow")
            continue
        v = by_name.get(name, {})
        out.append(name, style="bold green")
        value, ref = (v.get("metrics") or {}).get(metric), (base.get("metrics") or {}).get(metric)
        out.append(f"  {metric} {fmt_metric(metric, value)}")
        if isinstance(value, (int, float)) and isinstance(ref, (int, float)):
            out.append(f" ({value - ref:+.3f} vs {base.get('name', 'base')})")
        out.append("  ")
        out.append_text(latency_cell((v.get("latency") or {}).get(target), (base.get("latency") or {}).get(target),
                                     False, unit=True))
        out.append("\n")
        noise = (report.get("recommendation_noise") or {}).get(target)
        if noise:
            out.append(f"  within the noise: {noise}\n", style="yellow")
    pareto = report.get("pareto") or {}
    if pareto:
        out.append("\nPareto front (quality vs latency):\n", style="bold")
        for target, names in pareto.items():
            out.append(f"  {target}: {', '.join(names) or '—'}\n")
    out.append("\n★ recommended   ~ italic: estimated latency   ? unstable timing   ! over its quality budget   "
               "✗ export check failed",
               style="dim")
    return out


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, json.JSONDecodeError):
        return None


def _rel(path: Any, run_dir: Path) -> str:
    p = Path(str(path))
    try:
        return str(p.relative_to(run_dir)) if p.is_absolute() else str(p)
    except ValueError:
        return str(p)


def generation_text(latency: dict[str, Any]) -> Text:
    """Generation timing per runtime on the host (language models, seq2seq): TTFT, decode tokens/s, file, memory."""
    out = Text()
    by_runtime = (latency.get("host") or {}).get("by_runtime") or {}
    for runtime, entry in by_runtime.items():
        g = entry.get("generation") if isinstance(entry, dict) else None
        if not isinstance(g, dict) or not isinstance(g.get("ttft_ms"), (int, float)):
            continue
        tps, grown = g.get("tokens_per_s"), entry.get("rss_growth_mb")
        out.append(f"  generation ({runtime}): ", style="bold")
        out.append(f"first token {fmt_ms(g['ttft_ms'])}, "
                   f"{f'{tps:.1f}' if isinstance(tps, (int, float)) else '?'} tokens/s decode, "
                   f"file {fmt_bytes(entry.get('model_size_bytes'))}"
                   + (f", +{grown:.1f} MB memory" if isinstance(grown, (int, float)) else "") + "\n")
    return out


def detail_text(report: dict[str, Any], name: str, run_dir: Path, bench: dict[str, dict] | None = None) -> Text:
    """A variant's detail: what its step did (variant.json), layers kept in float, files and their
    verification (export.json), metrics, latency per target, and benchmarks run from the UI."""
    v = next((x for x in report.get("variants", []) if x.get("name") == name), None)
    out = Text()
    if v is None:
        return Text(f"no variant {name!r} in report.json", style="red")
    vj = _read_json(run_dir / "variants" / name / "variant.json") or {}
    info = vj.get("info") or {}
    out.append(name, style="bold")
    out.append(f"  {v.get('method', vj.get('method', ''))}")
    if v.get("parent") or vj.get("parent"):
        out.append(f" from {v.get('parent') or vj.get('parent')}")
    budget = v.get("within_budget", vj.get("within_budget"))
    if budget is not None:
        out.append("  within budget ✓" if budget else "  over its quality budget !", style="green" if budget else "bold red")
    out.append("\n")
    if isinstance(v.get("params"), (int, float)):
        out.append(f"params {v['params']:,}   size {fmt_bytes(v.get('size_bytes'))}\n")
    for target, result in (bench or {}).items():
        reached = result.get("reached", True)
        out.append(f"benchmarked here on {target}: " if reached else f"benchmarked on this machine for {target}: ",
                   style="bold cyan")
        out.append(f"p50 {fmt_ms(result.get('p50_ms'))}, p90 {fmt_ms(result.get('p90_ms'))}, "
                   f"{result.get('threads', '?')} threads{'' if reached else f' ({target} has)'}, "
                   f"{result.get('runtime', '?')} ({_rel(result.get('model', ''), run_dir)})\n")
        if not reached:
            source = ((v.get("latency") or {}).get(target) or {}).get("source")
            out.append(f"  {not_reached(target, source)}\n", style="yellow")
    floats = info.get("layers_in_float")
    if info:
        out.append("what the step did\n", style="bold underline")
        for key, value in info.items():
            if key == "layers_in_float":
                continue
            out.append(f"  {key}: ", style="bold")
            out.append(_short(value) + "\n")
    out.append("layers kept in float: ", style="bold")
    if floats is None:
        out.append("— (not recorded)\n", style="dim")
    else:
        out.append((", ".join(map(str, floats)) or "none") + "\n")
    metrics = v.get("metrics") or {}
    if metrics:
        out.append("quality\n", style="bold underline")
        conventions = v.get("conventions") or {}
        for key, value in metrics.items():
            out.append(f"  {key} {fmt_metric(key, value)}")
            conv = conventions.get(key) or conventions.get(key.rstrip("0123456789Lsum") or key)
            out.append(f"  ({conv})\n" if conv else "\n", style="dim")
    latency = v.get("latency") or {}
    if latency:
        out.append("latency", style="bold underline")
        if any(lat.get("source") == "estimated" for lat in latency.values()):
            out.append("  ~ estimated from the profile, not measured", style="dim")
        out.append("\n")
        for target, lat in latency.items():
            est = lat.get("source") == "estimated"
            mark = "~" if est else ""
            if isinstance(lat.get("p10_ms"), (int, float)):
                spread = lat.get("spread_ms") or ["?", "?"]
                out.append(f"  {target}: p10 {fmt_ms(lat['p10_ms'])} (compared), median of rounds "
                           f"{fmt_ms(lat.get('median_ms'))} (IQR {fmt_ms(spread[0])}–"
                           f"{fmt_ms(spread[1])}, {lat.get('rounds', '?')} rounds"
                           f"{', unstable' if lat.get('stable') is False else ''})\n",
                           style="yellow" if lat.get("stable") is False else "")
            out.append(f"  {target}: {mark}p50 {fmt_ms(lat.get('p50_ms'))} {mark}p90 {fmt_ms(lat.get('p90_ms'))} "
                       f"{mark}p99 {fmt_ms(lat.get('p99_ms'))}, {lat.get('threads', '?')} threads, "
                       f"{lat.get('runtime', '?')}, {lat.get('source', '?')}\n", style=ESTIMATED if est else "")
        out.append_text(generation_text(latency))
    out.append("files", style="bold underline")
    export = _read_json(run_dir / "variants" / name / "export.json")
    files = (export or {}).get("files") or v.get("files") or []
    states = {_check_state(f) for f in files}
    for state, (mark, style, meaning) in FILE_MARKS.items():
        if state in states:
            out.append(f"  {mark}", style=style)
            out.append(f" {meaning}", style="dim")
    out.append("\n")
    if not files:
        out.append("  none exported yet\n", style="dim")
    for f in files:
        mark, style, _ = FILE_MARKS[_check_state(f)]
        out.append(f"  {mark} ", style=style)
        out.append(f"{f.get('format', '?'):<11} {_rel(f.get('path', ''), run_dir)}  {fmt_bytes(f.get('size_bytes'))}")
        check = f.get("check") or {}
        if check:
            out.append("  " + ", ".join(f"{k} {_short(x)}" for k, x in check.items()), style="dim")
        if f.get("reason"):
            out.append(f"  {f['reason']}", style="red")
        out.append("\n")
    return out


def _check_state(file: dict[str, Any]) -> bool | None:
    ok = file.get("verified")
    return ok if isinstance(ok, bool) else None


def not_reached(target: str, report_source: str | None) -> str:
    """What a benchmark "on" a target that was not reached means: `toolkit bench --target T` measures this
    machine with T's thread count; the device itself is measured only where the eval stage reaches it."""
    report = {"estimated": f"its latency in the report is estimated from the {target} profile",
              "measured": "the report's latency for it was measured on the device"}.get(
        str(report_source), f"the report has no latency for {target}")
    return f"{target} itself was not reached; {report}"


def _short(value: Any, limit: int = 160) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    if isinstance(value, dict):
        text = ", ".join(f"{k} {_short(x, 40)}" for k, x in value.items())
    elif isinstance(value, list):
        text = ", ".join(_short(x, 40) for x in value)
    else:
        text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def variant_files(run_dir: Path, name: str) -> list[Path]:
    """The variant's model files that the bench command loads (onnx, ort, pte, ts)."""
    folder = run_dir / "variants" / name
    found = []
    for suffix in (".onnx", ".ort", ".pte", ".ts"):
        found += sorted(folder.glob(f"*{suffix}"))
    return found
