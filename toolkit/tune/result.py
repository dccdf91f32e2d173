"""What ``toolkit tune`` leaves: per target the Pareto front, the winner confirmed on the eval split, and the winner's
chain as a recipe; ``tune/report.json`` / ``report.md`` say what ran, what each trial cost and why the winner won.

The front of a target whose latency is estimated is over the trials whose quantization is in that target's INT8
format (or none / FP16): a graph quantized for AVX2's U8S8 is not what an ARM board would run. Where it is
measured (the host), every trial counts. Its axes are validation quality and the
speed-up over the base on that target (a ratio measured in one interleaved timing on the host, or two estimates of
the same profile), so trials timed minutes apart under different load stay comparable.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Any

from toolkit.config import dumps_toml, with_absolute_paths
from toolkit.rundir import atomic_write_json, atomic_write_text

CONFIRM_TRIES = 3
"""candidates confirmed on the eval split per target before giving up (each costs one quality pass)"""
FRIENDLY = {"distill": "student", "prune": "pruned", "quantize": "quantized", "fp16": "fp16"}


def _fits(record: dict[str, Any], target: Any, targets: dict[str, Any], measured: bool) -> bool:
    """Whether the trial counts for ``target``: any graph measured there does (its speed and its validation quality
    are what they are); an estimate counts only for a graph in the target's INT8 format (the estimate does not
    know which kernels a format gets on the device)."""
    if measured:
        return True
    for table in record.get("chain", []):
        if table.get("method") == "quantize" and table.get("scheme", "").startswith("int8"):
            made_for = targets.get(table.get("target"))
            return made_for is not None and made_for.int8.label == target.int8.label
    return True


def pareto(points: list[dict[str, Any]], target: str, higher_is_better: bool) -> list[dict[str, Any]]:
    """The trials no other trial beats on both validation quality and speed-up on ``target``, fastest first."""
    def q(r: dict[str, Any]) -> float:
        v = r["validation"]["value"]
        return v if higher_is_better else -v

    front = []
    for r in points:
        s = r["latency"][target]["speedup"]
        if not any((q(o) >= q(r) and o["latency"][target]["speedup"] >= s)
                   and (q(o) > q(r) or o["latency"][target]["speedup"] > s) for o in points):
            front.append(r)
    return sorted(front, key=lambda r: -r["latency"][target]["speedup"])


def _eval_drop(bench: Any, name: str, cache: dict[str, float | None]) -> float | None:
    """The main metric of variant ``name`` on the eval split (cached per tune)."""
    from toolkit.eval.evaluate import evaluate_variant
    from toolkit.variants import load_variants

    if name not in cache:
        every = load_variants(bench.run.variants)
        q = evaluate_variant(bench.quality_recipe(), every[name], every, bench.splits, log=bench.emit.log)
        cache[name] = q.metrics.get(bench.task.main_metric.name)
    return cache[name]


def best_recipe(bench: Any, record: dict[str, Any], target: str) -> str:
    """The winning chain as a recipe ``toolkit run`` reproduces: the user's recipe (paths made absolute) with this
    chain as its [[compress]] steps, readable step names, and [eval] on this target with the tune's budget."""
    recipe = with_absolute_paths(bench.recipe)
    names: dict[str, str] = {"base": "base"}
    tables = []
    for table in record["chain"]:
        friendly = FRIENDLY.get(table["method"], table["method"])
        while friendly in names.values():
            friendly += "-2"
        names[table["name"]] = friendly
        tables.append({**table, "name": friendly, "from": names[table["from"]]})
    ev = dataclasses.replace(recipe.eval, targets=[target], max_quality_drop=bench.max_drop)
    tuned = dataclasses.replace(recipe, name=f"{recipe.name}-tuned-{target}", compress=tables, eval=ev)
    head = (f"# Written by `python -m toolkit tune` for target '{target}': trial {record['key']}, "
            f"{record['latency'][target]['speedup']:.2f}x the base's speed ({record['latency'][target]['source']}), "
            f"validation drop {record['validation']['drop']:+.4f}.\n"
            f"# Reproduce: python -m toolkit run <this file>\n")
    return head + dumps_toml(tuned)


def _confirm(bench: Any, front_all: list[dict[str, Any]], target: str, cache: dict) -> tuple[dict | None, list]:
    """The fastest candidate within budget on validation that stays within budget on the eval split."""
    base_eval = _eval_drop(bench, "base", cache)
    tried = []
    for record in front_all[:CONFIRM_TRIES]:
        value = _eval_drop(bench, record["variant"], cache)
        drop = (bench.task.main_metric.drop_of(base_eval, value)
                if value is not None and base_eval is not None else float("inf"))
        tried.append({"trial": record["key"], "eval_value": value, "eval_base": base_eval, "eval_drop": round(drop, 6),
                      "within_budget": drop <= bench.max_drop + 1e-12})
        if drop <= bench.max_drop + 1e-12:
            return record, tried
    return None, tried


def write_results(search: Any, started: float) -> dict[str, Any]:
    """Fronts, confirmed winners, best recipes and the report; returns the report's content."""
    bench = search.bench
    out = bench.run.path / "tune"
    out.mkdir(parents=True, exist_ok=True)
    higher = bench.task.main_metric.higher_is_better
    done = [r for r in search.trials.values() if r.get("status") == "done" and r.get("validation")]
    cache: dict[str, float | None] = {}
    winners: dict[str, Any] = {}
    fronts: dict[str, list[str]] = {}
    for tname, target in bench.targets.items():
        points = [r for r in done if tname in r.get("latency", {})
                  and _fits(r, target, bench.targets, r["latency"][tname]["source"] == "measured")]
        front = pareto(points, tname, higher)
        fronts[tname] = [r["key"] for r in front]
        atomic_write_json(out / f"front-{tname}.json", {
            "schema_version": 1, "target": tname, "metric": bench.task.main_metric.name, "split": "validation",
            "max_drop": bench.max_drop,
            "front": [{"trial": r["key"], "variant": r["variant"], "params": r["params"],
                       "value": r["validation"]["value"], "drop": r["validation"]["drop"],
                       "within_budget": r["within_budget"], **r["latency"][tname],
                       "size_bytes": r.get("size_bytes"), "seconds": r.get("seconds"), "chain": r["chain"]}
                      for r in front]})
        # a winner must beat the base on this target: shipping a slower variant is never the recommendation
        ok = sorted((r for r in points if r["within_budget"] and r["key"] != "base"
                     and r["latency"][tname]["speedup"] > 1.0), key=lambda r: -r["latency"][tname]["speedup"])
        winner, tried = _confirm(bench, ok, tname, cache)
        entry: dict[str, Any] = {"confirmations": tried}
        if winner is None:
            entry["why"] = ("no trial within the budget on validation is faster than the base" if not ok else
                            f"none of the {len(tried)} fastest trials within the budget on validation stayed within "
                            f"it on the eval split")
            (out / f"best-{tname}.toml").unlink(missing_ok=True)
        else:
            lat = winner["latency"][tname]
            runner_up = next((r for r in ok if r is not winner), None)
            entry.update(trial=winner["key"], variant=winner["variant"], params=winner["params"],
                         speedup=lat["speedup"], p50_ms=lat["p50_ms"], source=lat["source"],
                         validation_drop=winner["validation"]["drop"], eval_drop=tried[-1]["eval_drop"],
                         recipe=str(out / f"best-{tname}.toml"),
                         why=(f"fastest of {len(ok)} trial(s) within the {bench.max_drop:g} budget on validation "
                              f"({lat['speedup']:.2f}x the base, {lat['source']}; drop {winner['validation']['drop']:+.4f})"
                              f", confirmed on the eval split (drop {tried[-1]['eval_drop']:+.4f})"
                              + (f"; next: {runner_up['key']} at {runner_up['latency'][tname]['speedup']:.2f}x"
                                 if runner_up else "")))
            atomic_write_text(out / f"best-{tname}.toml", best_recipe(bench, winner, tname))
        winners[tname] = entry
    summary = {
        "schema_version": 1, "run": bench.recipe.name, "targets": list(bench.targets), "max_drop": bench.max_drop,
        "metric": bench.task.main_metric.name, "seconds": round(time.time() - started, 1),
        "trials_total": len(search.trials), "trials_run": len(search.ran),
        "trials_reused": len(search.reused & set(search.trials)), "trials_failed": search.failed,
        "space": search.space.to_dict(), "fronts": fronts, "winners": winners,
        "trials": [{k: r.get(k) for k in ("key", "params", "length", "status", "variant", "seconds", "cost",
                                          "validation", "within_budget", "latency", "size_bytes", "why")}
                   for r in search.trials.values()],
    }
    atomic_write_json(out / "report.json", summary)
    atomic_write_text(out / "report.md", _markdown(summary))
    return summary


def _markdown(s: dict[str, Any]) -> str:
    lines = [f"# tune: {s['run']}", "",
             f"{s['trials_total']} trials ({s['trials_run']} run now, {s['trials_reused']} reused), "
             f"{len(s['trials_failed'])} failed; {s['seconds']} s; budget: {s['metric']} drop <= {s['max_drop']:g} "
             f"on validation, confirmed on eval.", ""]
    for t, w in s["winners"].items():
        lines.append(f"- **{t}**: " + (f"`{w['trial']}` {w['params']} — {w['why']}" if w.get("trial")
                                       else f"no winner: {w['why']}"))
    lines += ["", "| trial | student | prune | quant | fine-tunes | status | drop (val) | " + " | ".join(
        f"speed-up {t}" for t in s["targets"]) + " | seconds |", "|---" * (8 + len(s["targets"])) + "|"]
    for r in s["trials"]:
        p = r.get("params") or {}
        lat = r.get("latency") or {}
        drop = (r.get("validation") or {}).get("drop")
        trains = p.get("student", "none") != "none" or p.get("prune", "none") != "none"
        length = r.get("length") or 1.0
        lines.append(f"| {r['key']} | {p.get('student', '')} | {p.get('prune', '')} | {p.get('quant', '')} | "
                     f"{('full' if length >= 1 else f'{length:.2g} of full') if trains else ''} | {r['status']} | {'' if drop is None else f'{drop:+.4f}'} | "
                     + " | ".join(f"{lat[t]['speedup']:.2f}x" if t in lat else "" for t in s["targets"])
                     + f" | {r.get('seconds', '')} |")
    return "\n".join(lines) + "\n"
