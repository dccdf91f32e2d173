"""The eval stage: every variant of a run on the eval split, and its latency on every target.

For each variant (``variants/<name>/variant.json``): quality (:mod:`toolkit.eval.evaluate`), parameters, size and
latency per ``[eval] targets`` (:mod:`toolkit.eval.variant_latency`) go into ``variants/<name>/eval.json``
(DESIGN.md field names), entered in the manifest. The report stage (``toolkit.report``) reads them. Quality comes
first for every variant; then the host times all of them together, in interleaved rounds, so that load on the
machine lands on every variant alike.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Sequence

from toolkit.config import Recipe
from toolkit.errors import UserError, did_you_mean
from toolkit.events import StageEmitter
from toolkit.rundir import RunDir, atomic_write_json, record_artifact

STAGE = "eval"
EVAL_SCHEMA = 1
METRIC_ALIASES = {"f1": ("f1_macro",), "rouge": ("rouge1", "rouge2", "rougeL", "rougeLsum"),
                  "confusion_matrix": ()}


def check_metrics(metrics: Sequence[str] | None, task: str) -> set[str] | None:
    """The metric names ``--metric`` asked for, as eval.json names; None = all.

    Raises:
        UserError: an unknown metric (with the nearest name), or one that does not fit the task.
    """
    from toolkit.eval.metrics import check_metric_fits

    if not metrics:
        return None
    keep: set[str] = set()
    for m in metrics:
        check_metric_fits(m, task)
        keep.update(METRIC_ALIASES.get(m, (m,)))
    return keep


def select_variants(run: RunDir, names: Sequence[str] | None) -> dict[str, Any]:
    """The run's variants (paths made local to ``run``), all or those named.

    Raises:
        UserError: no variants yet, or a name that is not one of them.
    """
    from toolkit.variants import load_variants

    found = load_variants(run.variants)
    if not found:
        raise UserError(f"{run.variants}: no variants to evaluate (no variant.json); train first: "
                        f"python -m toolkit train RECIPE --out {run.path}")
    if not names:
        return found
    for n in names:
        if n not in found:
            raise UserError(f"--variant {n}: no such variant in {run.variants}{did_you_mean(n, sorted(found))}")
    return {n: found[n] for n in found if n in names}


def check_targets(recipe: Recipe) -> dict[str, Any]:
    """Every target of ``[eval] targets`` loaded up front, so a misspelt one fails before any work."""
    from toolkit.targets import load_target

    out = {}
    for name in recipe.eval.targets:
        try:
            out[name] = load_target(name)
        except UserError as e:
            raise UserError(f"eval.targets: {e}") from None
    check_provider(recipe.eval.latency.provider, out)
    return out


def check_provider(provider: str, targets: dict[str, Any]) -> None:
    """``[eval.latency] provider`` is in this onnxruntime build, and every target with accelerators names it.

    Raises:
        UserError: the provider is missing (naming the gpu extra), or a target's profile lists accelerators none
            of which is reached through it.
    """
    if provider == "cpu":
        return
    from toolkit.onnxrt import check_providers, provider_chain, provider_name

    ep = provider_name(provider)
    for name, target in targets.items():
        named = {p for acc in getattr(target, "accelerators", []) for p in acc.execution_providers}
        if named and ep not in named:
            raise UserError(f"eval.latency.provider = '{provider}': target '{name}' names only "
                            f"{', '.join(sorted(named))} for its accelerators; choose one of those or cpu")
    try:
        check_providers(provider_chain(provider))
    except UserError as e:
        raise UserError(f"eval.latency.provider = '{provider}': {e}") from None


def run_eval(recipe: Recipe, run: RunDir, emit: StageEmitter, variants: Sequence[str] | None = None,
             metrics: Sequence[str] | None = None) -> dict[str, dict]:
    """Evaluate the run's variants (all, or those named).

    Writes ``variants/<name>/eval.json`` for each (the report stage reads them).

    Args:
        variants: names of the variants to evaluate; None: all.
        metrics: keep only these metrics (``score``'s names: accuracy, f1, auc_roc, bleu, chrf, rouge, ...).

    Returns:
        {variant name: its eval.json content}.

    Raises:
        UserError: no variants, an unknown variant/target/metric, a metric that does not fit the task, an eval
            split that cannot be read.
    """
    from toolkit.rundir import quiet_onnxruntime

    quiet_onnxruntime()
    from toolkit.data import load_splits
    from toolkit.eval.evaluate import evaluate_variant

    from toolkit.variants import load_variants

    keep = check_metrics(metrics, recipe.task)
    targets = check_targets(recipe)
    selected = select_variants(run, variants)
    every = load_variants(run.variants)
    emit("start", variants=list(selected), targets=list(targets))
    splits = load_splits(recipe, log=emit.log)
    results: dict[str, dict] = {}
    failed: list[UserError] = []
    evaluated: dict[str, tuple[Any, Any, float]] = {}
    for i, (name, variant) in enumerate(selected.items()):
        emit("progress", step=i, total=len(selected), variant=name)
        t0 = time.perf_counter()
        try:
            quality = evaluate_variant(recipe, variant, every, splits, log=emit.log)
        except UserError as e:
            # one variant that cannot be evaluated (a missing file, a format without quality support) does not
            # cost the others theirs; the report shows it unevaluated
            emit.log(f"{name}: not evaluated: {e}", "warning")
            (variant.path / "eval.json").unlink(missing_ok=True)  # an older evaluation would be stale now
            failed.append(e)
            continue
        evaluated[name] = (variant, quality, time.perf_counter() - t0)
    # the host times every variant together, in interleaved rounds: load on the machine lands on all alike
    host = _HostLatency(recipe, evaluated, targets, run, emit)
    for name, (variant, quality, seconds) in evaluated.items():
        record = _record(recipe, variant, quality, keep)
        record["latency"] = _latency(recipe, variant, quality.encoding, targets, run, emit, host)
        record["fit"] = _fit(record["size_bytes"], record["latency"], targets)
        record["eval_seconds"] = round(seconds, 3)
        path = variant.path / "eval.json"
        atomic_write_json(path, record)
        record_artifact(run, f"eval/{name}", "eval", path, STAGE, parent=name)
        emit("metric", variant=name, values=record["metrics"])
        emit("artifact", path=str(path), what="eval")
        results[name] = record
    if failed and not results:
        raise failed[0]
    emit("progress", step=len(selected), total=len(selected))
    emit("done", variants=list(results))
    return results


def _record(recipe: Recipe, variant: Any, quality: Any, keep: set[str] | None) -> dict[str, Any]:
    from toolkit.eval.evaluate import finite_or_none
    from toolkit.eval.interleave import CONVENTION as INTERLEAVING
    from toolkit.eval.variant_latency import CONVENTION, GENERATION_CONVENTION, graph_paths
    from toolkit.tasks import get_task

    task = get_task(recipe.task)
    metrics = {k: finite_or_none(v) for k, v in quality.metrics.items() if keep is None or k in keep}
    conventions = dict(quality.conventions)
    conventions["latency"] = CONVENTION
    conventions["host_latency"] = INTERLEAVING
    if task.kv_cache and recipe.eval.latency.new_tokens > 0:
        conventions["generation_latency"] = GENERATION_CONVENTION.format(n=recipe.eval.latency.new_tokens)
    return {
        "schema_version": EVAL_SCHEMA, "variant": variant.name, "parent": variant.parent,
        "evaluated_with": quality.evaluated_with, "split": "eval", "examples": quality.examples,
        "metrics": metrics, "conventions": conventions, "groups": quality.groups, "robustness": quality.robustness,
        "params": quality.params, "size_bytes": _size_bytes(variant, graph_paths(variant, task)),
        "details": quality.details,
    }


def _size_bytes(variant: Any, graphs: list[Path]) -> int | None:
    """DESIGN.md: the ONNX file (every graph of an encoder-decoder, external weights included), else the model dir."""
    from toolkit.eval.latency import model_size

    if graphs:
        return int(sum(model_size(p) or 0 for p in graphs))
    if variant.model_dir is not None and Path(variant.model_dir).is_dir():
        return int(sum(p.stat().st_size for p in Path(variant.model_dir).rglob("*") if p.is_file()))
    if variant.pte is not None:  # an ExecuTorch-only variant (pt2e, 8da4w): its program is what ships
        return int(Path(variant.pte).stat().st_size)
    return None


def _fit(size_bytes: int | None, latency: dict[str, Any], targets: dict[str, Any]) -> dict[str, Any]:
    """The fit check per target: file size, and the memory the model took where it was measured (in this
    process: the RSS growth over loading and running it; on a device: the benchmark process's peak RSS)."""
    from toolkit.eval.fit import fit_check

    out = {}
    for name, target in targets.items():
        entry = latency.get(name) or {}
        memory = None
        if entry.get("source") == "measured":
            key = "rss_growth_mb" if name == "host" else "peak_rss_mb"
            memory = entry.get(key) if isinstance(entry.get(key), (int, float)) else None
        out[name] = fit_check(size_bytes, memory, target)
    return out


class _HostLatency:
    """The host's measurements of the evaluated variants: all of them timed together (interleaved) when the host is
    a target; otherwise each variant's ONNX graph alone, measured only when a target's estimate needs it."""

    RUNTIMES = ("onnxruntime", "executorch", "torch")

    def __init__(self, recipe: Recipe, evaluated: dict[str, tuple[Any, Any, float]], targets: dict[str, Any],
                 run: RunDir, emit: StageEmitter) -> None:
        from toolkit.eval import variant_latency as vl
        from toolkit.targets import detect_host
        from toolkit.tasks import get_task

        self.cfg, self.emit, self.root = recipe.eval.latency, emit, run.path
        self.profile = targets.get("host") or detect_host()
        self.threads = self.cfg.threads or self.profile.threads
        task = get_task(recipe.task)
        self.jobs = {name: (vl.variant_files(v, task), q.encoding) for name, (v, q, _) in evaluated.items()}
        self.measured: dict[str, dict[str, Any]] = {}
        if "host" in targets and self.jobs:
            emit.log(f"host latency: {len(self.jobs)} variant(s) timed together in interleaved rounds")
            self.measured = vl.measure_host(self.jobs, self.cfg, self.threads, emit.log, self.RUNTIMES, self.root)

    def entries(self, name: str) -> dict[str, Any]:
        return {r: e for r, e in self.measured.get(name, {}).items() if e}

    def onnx(self, name: str) -> dict[str, Any] | None:
        """The variant's ONNX Runtime figure (measured now, alone, if the host is not a target)."""
        from toolkit.eval import variant_latency as vl

        if name not in self.measured and name in self.jobs:
            self.measured[name] = vl.measure_host({name: self.jobs[name]}, self.cfg, self.threads, self.emit.log,
                                                  ("onnxruntime",), self.root)[name]
        return self.measured.get(name, {}).get("onnxruntime")


def _latency(recipe: Recipe, variant: Any, enc: Any, targets: dict[str, Any], run: RunDir,
             emit: StageEmitter, host: _HostLatency) -> dict[str, Any]:
    from toolkit.eval import variant_latency as vl
    from toolkit.tasks import get_task

    cfg = recipe.eval.latency
    files = vl.variant_files(variant, get_task(recipe.task))
    label = f"{variant.name}: "
    out: dict[str, Any] = {}
    for name, target in targets.items():
        if name == "host":
            entry = vl.top_level(host.entries(variant.name), target.runtime)
        else:
            entry = vl.target_latency(target, files, enc, cfg, lambda: host.onnx(variant.name), host.profile,
                                      emit.log, label, run.path)
        if entry:
            out[name] = entry
            emit("metric", variant=variant.name, target=name,
                 values={"p50_ms": entry.get("p50_ms"), "p10_ms": entry.get("p10_ms"),
                         "source": entry.get("source"), "runtime": entry.get("runtime")})
    return out
