"""One trial of ``toolkit tune``: a chain of [[compress]] steps made, exported, measured, and remembered.

The chain's steps go through the compress stage itself (``run_compress`` with a recipe holding just these steps),
so a trial's variants are ordinary variants of the run directory, named by the hash of the chain up to each step:
two chains sharing a student share its variant, and the stage skips a step whose settings and parent are
unchanged. Quality is measured on the *validation* split (the eval split is kept for confirming winners).
Latency: the host times the trial's ONNX graph and the base's together in interleaved rounds (so load on this
shared machine lands on both, and the speed-up is a ratio within one measurement); other targets are estimated
from the graph by the eval stage's machinery (calibrated on that host measurement). The record goes to
``tune/trials/<key>.json`` last, so its presence means the trial finished.
"""
from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from toolkit.config import Recipe
from toolkit.errors import UserError, first_line
from toolkit.events import StageEmitter
from toolkit.rundir import RunDir, atomic_write_json
from toolkit.tune.space import TRAINING

TRIAL_SCHEMA = 1


@dataclass
class Bench:
    """What every trial of one ``tune`` shares: the recipe, run, splits, targets and the base's measurements."""

    recipe: Recipe
    run: RunDir
    emit: StageEmitter
    compress_emit: StageEmitter
    splits: Any
    targets: dict[str, Any]
    max_drop: float
    latency: Any
    """the LatencyConfig trials are timed with (fewer runs than the eval stage's: the search only ranks)"""
    host: Any = None
    task: Any = None
    base_value: float | None = None
    base_quality: Any = None
    base_estimates: dict[str, float] = field(default_factory=dict)

    @property
    def trials_dir(self) -> Path:
        return self.run.path / "tune" / "trials"

    def quality_recipe(self) -> Recipe:
        """The recipe as the search measures quality: the main metric only (no robustness passes)."""
        return dataclasses.replace(self.recipe, eval=dataclasses.replace(self.recipe.eval, robustness=False))

    def validation_splits(self) -> Any:
        """The splits with the validation set in the eval slot: the evaluator measures what the search may see."""
        return dataclasses.replace(self.splits, eval=list(self.splits.validation))


def load_trial(bench: Bench, key: str) -> dict[str, Any] | None:
    """The finished trial ``key`` (its record), or None."""
    path = bench.trials_dir / f"{key}.json"
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError:  # torn by a kill mid-write (atomic writes make this unlikely): redo it
        return None
    variant = record.get("variant")
    if variant and not (bench.run.variant(variant) / "variant.json").is_file():
        return None  # its variant was removed since: the record describes nothing on disk
    if record.get("validation"):  # this tune's --max-drop decides, not the one the trial ran under
        record["within_budget"] = record["validation"]["drop"] <= bench.max_drop + 1e-12
    return record


def complete_latency(bench: Bench, record: dict[str, Any]) -> dict[str, Any]:
    """A finished trial reused by a tune with more targets: its latency on the targets it lacks (the host is timed
    again with the base, as the trial was; an estimate costs little)."""
    missing = [t for t in bench.targets if t not in record.get("latency", {})]
    if not missing or record.get("status") != "done":
        return record
    # the base's encoding: the timed inputs are the same texts/images, and a chain keeps its base's preprocessing
    latency = measure(bench, record["variant"], bench.base_quality)
    record["latency"] = {**record.get("latency", {}), **{t: latency[t] for t in missing if t in latency}}
    _save(bench, record["key"], record)
    return record


def load_all(bench: Bench) -> dict[str, dict[str, Any]]:
    out = {}
    if bench.trials_dir.is_dir():
        for p in sorted(bench.trials_dir.glob("*.json")):
            record = load_trial(bench, p.stem)
            if record is not None:
                out[p.stem] = record
    return out


def _variants(run: RunDir) -> dict[str, Any]:
    from toolkit.variants import load_variants

    return load_variants(run.variants)


def validation_quality(bench: Bench, name: str) -> Any:
    """The Quality of variant ``name`` on the validation split."""
    from toolkit.eval.evaluate import evaluate_variant

    every = _variants(bench.run)
    return evaluate_variant(bench.quality_recipe(), every[name], every, bench.validation_splits(),
                            log=bench.emit.log)


def drop_of(bench: Bench, value: float | None) -> float:
    """The main metric's drop against the base (task units); inf when the value is missing."""
    if value is None or bench.base_value is None:
        return float("inf")
    return float(bench.task.main_metric.drop_of(bench.base_value, value))


def compress(bench: Bench, tables: list[dict[str, Any]]) -> None:
    """Make the chain's variants (steps already made with the same settings are skipped by the stage)."""
    from toolkit.compress.stage import run_compress

    if tables:
        run_compress(dataclasses.replace(bench.recipe, compress=tables), bench.run, bench.compress_emit)


def export_onnx(bench: Bench, name: str) -> None:
    """An ONNX graph for variant ``name`` when it has none (a PyTorch result: student, pruned)."""
    from toolkit.export.stage import run_export

    variant = _variants(bench.run)[name]
    if variant.onnx is not None and Path(variant.onnx).is_file():
        return
    recipe = dataclasses.replace(bench.recipe, export=dataclasses.replace(bench.recipe.export, formats=["onnx"]))
    run_export(recipe, bench.run, bench.compress_emit.parent.for_stage("export"), only=[name])
    if _variants(bench.run)[name].onnx is None:
        raise UserError(f"variant '{name}': the ONNX export failed (see events.jsonl); the trial is dropped")


def measure(bench: Bench, name: str, quality: Any) -> dict[str, dict[str, Any]]:
    """Latency of variant ``name`` per target, each with the base's figure from the same measurement."""
    from toolkit.eval import variant_latency as vl

    every = _variants(bench.run)
    jobs = {"base": (vl.variant_files(every["base"], bench.task), bench.base_quality.encoding)}
    if name != "base":
        jobs[name] = (vl.variant_files(every[name], bench.task), quality.encoding)
    threads = bench.latency.threads or bench.host.threads
    measured = vl.measure_host(jobs, bench.latency, threads, bench.emit.log, ("onnxruntime",), bench.run.path)
    host_entry = measured.get(name, {}).get("onnxruntime")
    base_entry = measured.get("base", {}).get("onnxruntime")
    if not host_entry or not base_entry:
        raise UserError(f"variant '{name}': ONNX Runtime could not time it on the host (see events.jsonl)")
    out: dict[str, dict[str, Any]] = {}
    for tname, target in bench.targets.items():
        if tname == "host":
            p50, base_p50, source = host_entry["p50_ms"], base_entry["p50_ms"], "measured"
        else:
            entry = vl.target_latency(target, jobs[name][0], quality.encoding, bench.latency, lambda: host_entry,
                                      bench.host, bench.emit.log, f"{name}: ", bench.run.path)
            if not entry:
                continue
            p50, source = entry["p50_ms"], entry.get("source", "estimated")
            base_p50 = bench.base_estimates.get(tname)
            if base_p50 is None or source == "measured":
                base = vl.target_latency(target, jobs["base"][0], bench.base_quality.encoding, bench.latency,
                                         lambda: base_entry, bench.host, bench.emit.log, "base: ", bench.run.path)
                base_p50 = (base or {}).get("p50_ms")
                if source != "measured" and base_p50:
                    bench.base_estimates[tname] = base_p50  # an estimate of the same graph does not change
        if p50 and base_p50:
            out[tname] = {"p50_ms": round(float(p50), 4), "base_p50_ms": round(float(base_p50), 4),
                          "speedup": round(float(base_p50) / float(p50), 4), "source": source}
    return out


def run_trial(bench: Bench, key: str, params: dict[str, str], tables: list[dict[str, Any]],
              should_stop: Callable[[float], bool] = lambda excess: False, length: float = 1.0) -> dict[str, Any]:
    """Run (or finish) the trial ``key`` and write its record; returns it.

    ``should_stop(excess)`` is asked once the chain's training steps are done, with how far the trained model is
    over the quality budget (<= 0: within): True stops the trial there (the record says ``pruned``). ``length``:
    the fraction of the full fine-tunes the chain's tables were shortened to (recorded).
    """
    t0 = time.time()
    cost: dict[str, float] = {}
    name = tables[-1]["name"] if tables else "base"
    record: dict[str, Any] = {"schema_version": TRIAL_SCHEMA, "key": key, "params": params, "chain": tables,
                              "variant": name, "status": "done", "length": length}
    training = [t for t in tables if t["method"] in TRAINING]
    if training:
        t = time.time()
        compress(bench, tables[: len(training)])
        cost["train_s"] = round(time.time() - t, 2)
        trained = validation_quality(bench, training[-1]["name"])
        excess = drop_of(bench, trained.metrics.get(bench.task.main_metric.name)) - bench.max_drop
        record["trained"] = {"variant": training[-1]["name"], "drop": round(excess + bench.max_drop, 6)}
        if should_stop(excess):
            record.update(status="pruned", seconds=round(time.time() - t0, 2), cost=cost,
                          why=f"the trained model is {excess:+.4f} over the quality budget before quantization")
            _save(bench, key, record)
            return record
    t = time.time()
    compress(bench, tables)  # the whole chain: the stage skips the steps already made
    cost["compress_s"] = round(time.time() - t, 2)
    t = time.time()
    export_onnx(bench, name)
    cost["export_s"] = round(time.time() - t, 2)
    t = time.time()
    quality = validation_quality(bench, name) if name != "base" else bench.base_quality
    value = quality.metrics.get(bench.task.main_metric.name)
    cost["quality_s"] = round(time.time() - t, 2)
    t = time.time()
    latency = measure(bench, name, quality)
    cost["latency_s"] = round(time.time() - t, 2)
    drop = drop_of(bench, value)
    variant = _variants(bench.run)[name]
    record.update(validation={"metric": bench.task.main_metric.name, "value": value, "base": bench.base_value,
                              "drop": round(drop, 6), "examples": quality.examples},
                  within_budget=drop <= bench.max_drop + 1e-12, latency=latency,
                  size_bytes=variant.info.get("size_bytes"), seconds=round(time.time() - t0, 2), cost=cost)
    _save(bench, key, record)
    return record


def _save(bench: Bench, key: str, record: dict[str, Any]) -> None:
    bench.trials_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(bench.trials_dir / f"{key}.json", record)


def failed_record(key: str, params: dict[str, str], tables: list[dict[str, Any]], exc: BaseException,
                  seconds: float) -> dict[str, Any]:
    """A trial that could not be made or measured (an export or a quantizer that fails on this chain): reported,
    not fatal, and not saved (a rerun tries it again, e.g. after the user fixed a missing extra)."""
    return {"schema_version": TRIAL_SCHEMA, "key": key, "params": params, "chain": tables, "status": "failed",
            "why": first_line(exc), "seconds": round(seconds, 2)}
