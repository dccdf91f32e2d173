"""``python -m toolkit compare RUN_A RUN_B``: the variants of two runs side by side — metrics, size, and latency on
every target both runs report — for "did my change help?"."""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

HELP = "compare the variants of two runs side by side (metrics, size, latency per common target)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_a", metavar="RUN_A", help="a run directory (the reference)")
    p.add_argument("run_b", metavar="RUN_B", help="another run directory (the change)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")


def _load(path: str) -> dict[str, Any]:
    from toolkit.errors import UserError

    run = Path(path)
    if not run.is_dir():
        raise UserError(f"{run}: no such run directory")
    report = run / "report.json"
    if not report.exists():
        raise UserError(f"{report}: no report yet; finish that run first (`python -m toolkit run` again continues it)")
    try:
        data = json.loads(report.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise UserError(f"{report}: not valid JSON ({e.msg} at line {e.lineno}); rerun the session to rewrite it") from None
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list):
        raise UserError(f"{report}: not a report.json (no 'variants' list); rerun the session to rewrite it")
    return data


def compare(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """Rows per variant (name in either run): each metric, size and p50 per common target, A, B and the change."""
    from toolkit.report import LOWER_IS_BETTER
    from toolkit.report_md import metric_names

    va = {v["name"]: v for v in a["variants"]}
    vb = {v["name"]: v for v in b["variants"]}
    names = list(va) + [n for n in vb if n not in va]
    metrics = [m for m in metric_names(a["variants"]) if m in metric_names(b["variants"])]
    targets = [t for t in _targets(a) if t in _targets(b)]
    out = []
    for name in names:
        x, y = va.get(name, {}), vb.get(name, {})
        rows = []
        for m in metrics:
            p, q = x.get("metrics", {}).get(m), y.get("metrics", {}).get(m)
            change = None
            if _num(p) and _num(q):
                better = (q < p) if m in LOWER_IS_BETTER else (q > p)
                change = {"delta": q - p, "verdict": "same" if q == p else ("better" if better else "worse")}
            rows.append({"quantity": m, "a": p, "b": q, "change": change})
        p, q = x.get("size_bytes"), y.get("size_bytes")
        rows.append({"quantity": "size_bytes", "a": p, "b": q,
                     "change": {"ratio": q / p} if _num(p) and _num(q) and p else None})
        for t in targets:
            la, lb = (x.get("latency", {}).get(t) or {}), (y.get("latency", {}).get(t) or {})
            p, q = la.get("p50_ms"), lb.get("p50_ms")
            rows.append({"quantity": f"{t} p50_ms", "a": p, "b": q, "source_a": la.get("source"),
                         "source_b": lb.get("source"),
                         "change": {"speedup": p / q} if _num(p) and _num(q) and q else None})
        out.append({"name": name, "in": [r for r, v in (("a", x), ("b", y)) if v], "rows": rows})
    return {"schema_version": 1, "a": a.get("run"), "b": b.get("run"), "task_a": a.get("task"),
            "task_b": b.get("task"), "targets": targets, "metrics": metrics, "variants": out,
            "recommendation": {t: {"a": a.get("recommendation", {}).get(t), "b": b.get("recommendation", {}).get(t)}
                               for t in targets}}


def _targets(report: dict[str, Any]) -> list[str]:
    seen = list(report.get("targets") or report.get("pareto") or {})
    for v in report["variants"]:
        seen += [t for t in v.get("latency", {}) if t not in seen]
    return seen


def _num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _cell(quantity: str, v: Any) -> str:
    from toolkit.report_md import ms, num, size

    if v is None:
        return "—"
    if quantity == "size_bytes":
        return size(v)
    if quantity.endswith("p50_ms"):
        return ms(v)
    return num(v, quantity)


def _change(row: dict[str, Any]) -> str:
    c = row["change"]
    if not c:
        return "—"
    if "delta" in c:
        return f"{c['delta']:+.4f} ({c['verdict']})"
    if "ratio" in c:
        return f"{c['ratio']:.2f}× the size"
    s = c["speedup"]
    if abs(s - 1) < 0.005:
        return "same speed"
    return f"{s:.2f}× faster" if s > 1 else f"{1 / s:.2f}× slower"


def render(result: dict[str, Any], path_a: str, path_b: str) -> str:
    """The comparison as an aligned text table."""
    lines = [f"A: {path_a} ({result['a']}, {result['task_a']})", f"B: {path_b} ({result['b']}, {result['task_b']})"]
    if result["task_a"] != result["task_b"]:
        lines.append("note: the runs are of different tasks; only metrics both report are compared")
    table = [["variant", "quantity", "A", "B", "change (B vs A)"]]
    for v in result["variants"]:
        first = True
        for row in v["rows"]:
            label = row["quantity"]
            if row.get("source_a") or row.get("source_b"):
                sa, sb = row.get("source_a") or "—", row.get("source_b") or "—"
                label += f" ({sa})" if sa == sb else f" ({sa} / {sb})"
            name = v["name"] + ("" if len(v["in"]) == 2 else f" (only in {v['in'][0].upper()})")
            table.append([name if first else "", label, _cell(row["quantity"], row["a"]),
                          _cell(row["quantity"], row["b"]), _change(row)])
            first = False
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines.append("")
    for i, r in enumerate(table):
        lines.append("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    if result["targets"]:
        lines.append("")
        for t, rec in result["recommendation"].items():
            lines.append(f"recommended for {t}: A {rec['a'] or 'none'}, B {rec['b'] or 'none'}")
    else:
        lines.append("\nno target is reported by both runs: latency is not compared")
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    a, b = _load(args.run_a), _load(args.run_b)
    result = compare(a, b)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(render(result, args.run_a, args.run_b), end="")
    return 0
