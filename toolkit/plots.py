"""The report's PNG plots (matplotlib, Agg backend: no display needed): quality vs latency per target and the
training curves."""
from __future__ import annotations

import io
import re
from typing import Any

from toolkit.rundir import RunDir, atomic_write_bytes


def _figure_bytes(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    return buf.getvalue()


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def write_plots(report: dict[str, Any], metrics_log: list[dict[str, Any]], run: RunDir) -> list[str]:
    """Write plots/*.png; returns their paths relative to the run directory."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    folder = run.path / "plots"
    written: list[str] = []
    for target in report.get("pareto", {}):
        fig = _quality_vs_latency(plt, report, target)
        if fig is None:
            continue
        path = folder / f"quality_vs_latency_{_safe(target)}.png"
        atomic_write_bytes(path, _figure_bytes(fig))
        plt.close(fig)
        written.append(path.relative_to(run.path).as_posix())
    fig = _training_curves(plt, metrics_log)
    if fig is not None:
        path = folder / "training_curves.png"
        atomic_write_bytes(path, _figure_bytes(fig))
        plt.close(fig)
        written.append(path.relative_to(run.path).as_posix())
    return written


def _quality_vs_latency(plt: Any, report: dict[str, Any], target: str) -> Any:
    metric = report["main_metric"]["name"]
    points = [(v["name"], v["latency"][target]["p50_ms"], v["metrics"][metric], v["latency"][target].get("source"))
              for v in report["variants"]
              if isinstance(v["metrics"].get(metric), (int, float))
              and isinstance((v["latency"].get(target) or {}).get("p50_ms"), (int, float))]
    if not points:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    front = report["pareto"].get(target, [])
    recommended = report["recommendation"].get(target)
    for name, lat, q, source in points:
        # Filled: measured on the device; hollow: estimated from the profile.
        filled = source == "measured"
        ax.scatter([lat], [q], s=60, marker="o", facecolors="C0" if filled else "none", edgecolors="C0", zorder=3)
        label = name + (" ★" if name == recommended else "")
        ax.annotate(label, (lat, q), textcoords="offset points", xytext=(5, 5), fontsize=8)
    fx = [next(p for p in points if p[0] == n) for n in front]
    if len(fx) > 1:
        ax.plot([p[1] for p in fx], [p[2] for p in fx], "--", color="C1", label="Pareto front", zorder=2)
        ax.legend(fontsize=8)
    base = report["main_metric"].get("baseline")
    if isinstance(base, (int, float)):
        ax.axhline(base, color="grey", lw=0.8, ls=":")
    sources = {p[3] for p in points}
    kind = sources.pop() if len(sources) == 1 else "filled: measured, hollow: estimated"
    ax.set_xlabel(f"p50 latency on {target}, ms ({kind})")
    ax.set_ylabel(metric + (" (lower is better)" if not report["main_metric"]["higher_is_better"] else ""))
    ax.set_title(f"{report['run']}: {metric} vs latency on {target}")
    ax.grid(alpha=0.3)
    return fig


def _training_curves(plt: Any, log: list[dict[str, Any]]) -> Any:
    train = [r for r in log if "loss" in r and "step" in r]
    val = [r for r in log if any(k.startswith("val_") for k in r) and "step" in r]
    if not train and not val:
        return None
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 3.6))
    if train:
        left.plot([r["step"] for r in train], [r["loss"] for r in train], label="train loss")
    if val and any("val_loss" in r for r in val):
        vl = [r for r in val if "val_loss" in r]
        left.plot([r["step"] for r in vl], [r["val_loss"] for r in vl], "o-", label="validation loss")
    left.set_xlabel("step")
    left.set_ylabel("loss")
    left.legend(fontsize=8)
    left.grid(alpha=0.3)
    keys = sorted({k for r in val for k in r if k.startswith("val_") and k != "val_loss"})
    for k in keys[:4]:
        rows = [r for r in val if isinstance(r.get(k), (int, float))]
        right.plot([r["step"] for r in rows], [r[k] for r in rows], "o-", label=k)
    if keys:
        right.legend(fontsize=8)
    elif train and "lr" in train[0]:
        right.plot([r["step"] for r in train], [r["lr"] for r in train], label="learning rate")
        right.legend(fontsize=8)
    right.set_xlabel("step")
    right.grid(alpha=0.3)
    fig.suptitle("training")
    return fig
