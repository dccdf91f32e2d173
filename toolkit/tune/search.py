"""The budgeted search of ``toolkit tune``: cheap trials first, then optuna over the training chains.

1. The base is trained (or reused) and timed; it is trial ``base``.
2. Cheap trials: every quantization of the base the space holds (seconds each).
3. Training trials while budget is left, in brackets of successive halving: optuna's TPE sampler (ask/tell, so
   the wall-clock budget is checked between trials) proposes ETA chains (a student, a pruning level, a
   quantization); each runs with its fine-tunes cut to 1/ETA of their length, to the end (quantized, exported,
   timed); the one whose full run can change the outcome — over the quality budget but faster than the best
   trial within it, the nearest the budget first — is then run at full length (its speed is the short one's;
   more training may bring it within the budget), the others are told PRUNED. A trial whose expected cost (the
   median of its kind so far) exceeds the budget left is not started. The quality budget is a constraint (``trial.set_constraint``), so the
   sampler learns to avoid chains over it. A full-length chain whose trained model is already over the budget
   stops before its quantization and timing (quantization does not give quality back). The longer run trains
   from the start: the fine-tunes' schedules depend on their length, so a short run's checkpoint is not the
   long run's midpoint.
4. Finished trials are read back from ``tune/trials/`` first: a rerun repeats none of them, and they are added to
   the study so the sampler starts from what is known.
Then :mod:`toolkit.tune.result` writes the fronts, confirms winners on the eval split and writes the recipes.
"""
from __future__ import annotations

import dataclasses
import math
import re
import time
from typing import Any

from toolkit.config import Recipe
from toolkit.errors import UserError
from toolkit.events import Emitter
from toolkit.rundir import RunDir
from toolkit.tune import space as sp
from toolkit.tune.trial import Bench, complete_latency, failed_record, load_all, run_trial, validation_quality

STAGE = "tune"
MAX_REPEATS = 25
ETA = 3
"""successive halving: chains per bracket, and the fraction (1/ETA) of their fine-tunes the first rung trains"""
"""consecutive proposals of already-finished chains after which the training space counts as exhausted"""


def parse_budget(text: str) -> float:
    """'90s', '2m', '45m', '1.5h' or a bare number of minutes -> seconds.

    Raises:
        UserError: not a duration, or not above zero.
    """
    m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*(s|sec|m|min|h)?\s*", str(text))
    if not m:
        raise UserError(f"--budget {text}: not a duration; write e.g. 90s, 2m, 45m or 1h")
    seconds = float(m.group(1)) * {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, None: 60}[m.group(2)]
    if seconds <= 0:
        raise UserError(f"--budget {text}: the budget must be above zero (e.g. --budget 45m)")
    return seconds


def check_trainable(recipe: Recipe) -> None:
    """tune trains students and prunes with recovery: the base must be a PyTorch model that trains (or a trained
    folder used as given).

    Raises:
        UserError: an ONNX model source, or a built-in model with training switched off (untrained weights).
    """
    file = recipe.source_path or "recipe"
    source = recipe.model.source.strip()
    if source.lower().endswith(".onnx"):
        raise UserError(f"{file}: model.source = '{source}' is an ONNX file: tune needs a PyTorch model to "
                        f"distil and prune; point model.source at a Hugging Face folder or a builtin: model")
    if not recipe.train.enabled and (not source or source.startswith("builtin:")):
        raise UserError(f"{file}: train.enabled = false with the built-in model '{source or 'default'}' leaves its "
                        f"weights untrained; set train.enabled = true (or point model.source at a trained folder)")


def ensure_base(recipe: Recipe, run: RunDir, emitter: Emitter) -> None:
    """Train the base (resuming its checkpoints) unless ``variants/base`` is up to date with the recipe."""
    from toolkit.rundir import load_manifest
    from toolkit.train import checkpoint as ckpt_io
    from toolkit.train.stage import has_finished, run_train, train_config_hash
    from toolkit.variants import load_variants

    emit = emitter.for_stage("train")
    same = load_manifest(run).get("train_config_hash") in (None, train_config_hash(recipe))
    if "base" in load_variants(run.variants) and same and has_finished(run, recipe):
        emit("skip", reason="the baseline variant is up to date with the recipe")
        return
    resume = bool(ckpt_io.list_checkpoints(run.checkpoints)) and same
    if not resume and ckpt_io.list_checkpoints(run.checkpoints):
        import shutil

        emit.log("the recipe's training settings changed: training starts over", "warning")
        shutil.rmtree(run.checkpoints)
    run_train(recipe, run, emit, resume=resume)


def tune_latency(recipe: Recipe) -> Any:
    """Trial timing: the recipe's latency settings with fewer runs (the search ranks; the eval stage reports)."""
    cfg = recipe.eval.latency
    return dataclasses.replace(cfg, warmup=min(cfg.warmup, 10), runs=min(cfg.runs, 60), rounds=min(cfg.rounds, 5),
                               budget_s=min(cfg.budget_s, 4.0), generation_runs=min(cfg.generation_runs, 2))


class _Search:
    """The state of one ``tune``: the bench, the trials by key, the deadline, the events."""

    def __init__(self, bench: Bench, space: sp.Space, primary: str, deadline: float) -> None:
        self.bench, self.space, self.primary, self.deadline = bench, space, primary, deadline
        self.trials: dict[str, dict[str, Any]] = load_all(bench)
        self.reused = set(self.trials)
        self.ran: list[str] = []
        self.failed: list[dict[str, Any]] = []
        self.announced: set[str] = set()
        combos = (len(space.students) + 1) * (len(space.prunes) + 1) * (len(space.quants) + 1)
        self.total = combos

    def failed_keys(self) -> set[str]:
        return {f["key"] for f in self.failed}

    def left(self) -> float:
        return self.deadline - time.time()

    def best(self) -> dict[str, Any]:
        """Best so far per target: the fastest trial within the quality budget (validation)."""
        out = {}
        for target in self.bench.targets:
            ok = [t for t in self.trials.values() if t.get("within_budget") and target in t.get("latency", {})]
            if ok:
                top = max(ok, key=lambda t: t["latency"][target]["speedup"])
                out[target] = {"trial": top["key"], "speedup": top["latency"][target]["speedup"]}
        return out

    def run(self, params: dict[str, str], tables: list[dict[str, Any]], length: float = 1.0) -> dict | None:
        """Run one chain unless it is known; returns its record (None when it failed).

        A full-length chain whose trained model is over the quality budget stops before quantization (which does
        not give quality back); a shortened one (``length`` < 1, the first rung) always runs to the end: its
        quality is a lower bound, and its speed is the full chain's (same structure)."""
        emit = self.bench.emit
        key = sp.chain_key(tables)
        if key in self.trials:
            if key in self.reused and key not in self.announced:
                self.announced.add(key)
                emit("skip", trial=key, reason="finished in an earlier tune", params=params)
            return self.trials[key]
        if key in self.failed_keys():
            return None  # failed once in this tune: not again (a rerun of tune retries it)

        def should_stop(excess: float) -> bool:
            return excess > 0 and length >= 1.0

        shown = " → ".join(f"{k}={v}" for k, v in params.items() if v != sp.NONE) or "base"
        emit.log(f"trial {key}: {shown}" + (f" (fine-tunes at {length:.2g} of their length)" if length < 1 else ""))
        t0 = time.time()
        try:
            record = run_trial(self.bench, key, params, tables, should_stop, length)
        except UserError as e:
            record = failed_record(key, params, tables, e, time.time() - t0)
            emit.log(f"trial {key} failed: {record['why']}", "warning")
            self.failed.append(record)
            return None
        self.trials[key] = record
        self.ran.append(key)
        emit("metric", trial=key, params=params, status=record["status"],
             values={"drop": (record.get("validation") or record.get("trained") or {}).get("drop"),
                     **{f"speedup_{t}": v["speedup"] for t, v in record.get("latency", {}).items()}},
             seconds=record.get("seconds"))
        emit("progress", step=len(self.trials), total=self.total, best=self.best(),
             seconds_left=round(max(0.0, self.left()), 1))
        return record


def _objective(record: dict[str, Any], primary: str) -> float | None:
    """What the sampler minimises: the trial's latency on the primary target relative to the base."""
    entry = record.get("latency", {}).get(primary)
    return 1.0 / entry["speedup"] if entry else None


def _excess(record: dict[str, Any], max_drop: float) -> float:
    """How far the trial is over the quality budget (<= 0: within), from its final or its trained model."""
    return (record.get("validation") or record.get("trained") or {}).get("drop", math.inf) - max_drop


def _speedup(record: dict[str, Any], primary: str) -> float:
    return record.get("latency", {}).get(primary, {}).get("speedup", 0.0)


def _tell(study: Any, trial: Any, record: dict[str, Any] | None, search: "_Search") -> None:
    """Report a finished (or failed, or stopped) trial to optuna, with the quality budget as its constraint."""
    from optuna.trial import TrialState

    if record is None:
        study.tell(trial, state=TrialState.FAIL)
        return
    trial.set_constraint("quality", _finite(_excess(record, search.bench.max_drop)))
    value = _objective(record, search.primary)
    if record["status"] == "pruned" or value is None:
        study.tell(trial, state=TrialState.PRUNED)
    else:
        study.tell(trial, value)


def promote(records: list[dict[str, Any]], best: float, primary: str, max_drop: float) -> int | None:
    """Which short chain of a bracket goes on at full length (its index), or None: the nearest the quality budget
    of those over it but faster on ``primary`` than ``best``, the best speed-up within the budget so far."""
    over = [i for i, r in enumerate(records) if not r["within_budget"] and _speedup(r, primary) > best]
    return min(over, key=lambda i: _excess(records[i], max_drop)) if over else None


def _expected_s(search: "_Search", length: float) -> float:
    """The median cost of the finished training trials of this fine-tune length (0 when none finished yet)."""
    import statistics

    costs = [r["seconds"] for r in search.trials.values() if r.get("status") == "done" and r.get("seconds")
             and abs(r.get("length", 1.0) - length) < 1e-6 and sp.needs_training(r.get("chain", []))]
    return float(statistics.median(costs)) if costs else 0.0


def _finite(excess: float) -> float:
    return excess if math.isfinite(excess) else 1.0  # optuna refuses inf/NaN constraints; 1.0 = far over budget


def _optuna_phase(search: _Search) -> None:
    import optuna
    from optuna.distributions import CategoricalDistribution
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    space, bench = search.space, search.bench
    dists = {"student": CategoricalDistribution([sp.NONE, *space.students]),
             "prune": CategoricalDistribution([sp.NONE, *space.prunes]),
             "quant": CategoricalDistribution([sp.NONE, *space.quants])}
    if not space.students and not space.prunes:
        bench.emit.log("no student or pruning level fits this model: only quantization was searched", "warning")
        return

    # the quality budget is a constraint (excess drop > 0: infeasible), which TPE weighs when it samples
    sampler = optuna.samplers.TPESampler(seed=bench.recipe.seed, n_startup_trials=4, multivariate=True)
    study = optuna.create_study(direction="minimize", sampler=sampler)
    for record in search.trials.values():  # what earlier runs (and the cheap phase) learnt
        params = record.get("params") or {}
        if set(params) != set(dists) or any(params[k] not in dists[k].choices for k in dists):
            continue
        value = _objective(record, search.primary)
        excess = _excess(record, bench.max_drop)
        if record["status"] == "pruned" or value is None or record.get("length", 1.0) < 1.0:
            study.add_trial(create_trial(params=params, distributions=dists, state=TrialState.PRUNED,
                                         constraints={"quality": _finite(excess)}))
        else:
            study.add_trial(create_trial(params=params, distributions=dists, value=value,
                                         constraints={"quality": _finite(excess)}))
    repeats = 0
    while search.left() > 0 and repeats < MAX_REPEATS:
        # one bracket of successive halving: ETA chains at 1/ETA of their fine-tune length, the best continued
        asked = [study.ask(dists) for _ in range(ETA)]
        rung0: list[tuple[Any, dict[str, str], dict[str, Any] | None]] = []
        for trial in asked:
            params = {k: trial.params[k] for k in dists}
            training = params["student"] != sp.NONE or params["prune"] != sp.NONE
            length = 1.0 / ETA if training else 1.0  # a quantization of the base trains nothing: full at once
            tables = sp.chain_tables(space, **params, length=length, train=bench.recipe.train)
            known = sp.chain_key(tables) in search.trials or sp.chain_key(tables) in search.failed_keys()
            repeats = repeats + 1 if known else 0
            expected = _expected_s(search, length) if training else 0.0
            if not known and (search.left() <= 0 or search.left() < expected):
                study.tell(trial, state=TrialState.FAIL)  # asked, never run: the budget is spent
                if search.left() > 0:
                    bench.emit.log(f"a training trial takes about {expected:.0f} s; {search.left():.0f} s of the "
                                   f"budget are left: no new one starts")
                    search.deadline = time.time()  # what is left is too little for any training trial
                continue
            record = search.run(params, tables, length=length)
            if not training:
                _tell(study, trial, record, search)
            else:
                rung0.append((trial, params, record))
        finished = [(t, p, r) for t, p, r in rung0 if r is not None and r.get("status") == "done"]
        for t, p, r in rung0:
            if r is None:
                study.tell(t, state=TrialState.FAIL)
        # Promote a short chain only where the full run can change the outcome: its speed is the short one's (same
        # structure), so a chain already within the budget gains nothing by training longer, and one slower than
        # the best within the budget cannot win. Left: over budget but faster than the best; the nearest the
        # budget goes on at full length (more training may bring it within).
        best = search.best().get(search.primary, {}).get("speedup", 1.0)
        pick = promote([r for _, _, r in finished], best, search.primary, bench.max_drop)
        top = finished[pick] if pick is not None else None
        expected = _expected_s(search, 1.0) or (top[2].get("seconds", 0.0) * ETA if top else 0.0)
        if top is not None and search.left() < expected:
            bench.emit.log(f"trial {top[2]['key']} at full length would take about {expected:.0f} s; "
                           f"{max(0.0, search.left()):.0f} s of the budget are left: not started")
            top = None
        for t, _, r in finished:
            if top is None or t is not top[0]:
                t.report(_objective(r, search.primary) or 1.0, 0)
                t.set_constraint("quality", _finite(_excess(r, bench.max_drop)))
                study.tell(t, state=TrialState.PRUNED)
        if top is None:
            continue
        top, params, _ = top
        record = search.run(params, sp.chain_tables(space, **params))
        _tell(study, top, record, search)
    if repeats >= MAX_REPEATS:
        bench.emit.log(f"the sampler proposed only finished chains {MAX_REPEATS} times in a row: the space is "
                       f"searched out")


def run_tune(recipe: Recipe, run: RunDir, emitter: Emitter, targets: dict[str, Any], max_drop: float,
             budget_s: float) -> dict[str, Any]:
    """Search chains for ``recipe`` within ``budget_s`` seconds; write ``tune/`` in ``run``; returns the summary
    (``tune/report.json``'s content).

    Raises:
        UserError: a recipe tune cannot work with (named key), bad data (as training raises it).
    """
    from toolkit.data import load_splits
    from toolkit.rundir import quiet_onnxruntime
    from toolkit.targets import detect_host
    from toolkit.tasks import get_task
    from toolkit.tune.result import write_results

    quiet_onnxruntime()
    started = time.time()
    deadline = started + budget_s
    check_trainable(recipe)
    space = sp.search_space(recipe, targets, max_drop)
    emit = emitter.for_stage(STAGE)
    emit("start", targets=list(targets), max_drop=max_drop, budget_s=budget_s, space=space.to_dict())
    for note in space.notes:
        emit.log(f"left out of the search: {note}")
    if recipe.train.threads:
        import torch

        torch.set_num_threads(recipe.train.threads)
    ensure_base(recipe, run, emitter)
    splits = load_splits(recipe, log=emit.log)
    if not splits.validation:
        raise UserError(f"{recipe.source_path or 'recipe'}: the validation split is empty; tune checks quality on "
                        f"it: set data.validation or give data.split a validation fraction above 0")
    bench = Bench(recipe=recipe, run=run, emit=emit, compress_emit=emitter.for_stage("compress"), splits=splits,
                  targets=targets, max_drop=max_drop, latency=tune_latency(recipe),
                  host=targets.get("host") or detect_host(), task=get_task(recipe.task))
    from toolkit.tune.trial import export_onnx

    export_onnx(bench, "base")
    bench.base_quality = validation_quality(bench, "base")
    bench.base_value = bench.base_quality.metrics.get(bench.task.main_metric.name)
    search = _Search(bench, space, next(iter(targets)), deadline)
    for key in list(search.trials):  # trials of an earlier tune with fewer targets: timed on the new ones too
        search.trials[key] = complete_latency(bench, search.trials[key])
    search.run({"student": sp.NONE, "prune": sp.NONE, "quant": sp.NONE}, [])
    for quant in space.quants:  # the cheap phase: seconds each
        if search.left() <= 0:
            break
        search.run({"student": sp.NONE, "prune": sp.NONE, "quant": quant}, sp.chain_tables(space, sp.NONE, sp.NONE, quant))
    if search.left() > 0:
        _optuna_phase(search)
    else:
        emit.log("the budget was spent before any training trial: widen --budget to search students and pruning",
                 "warning")
    summary = write_results(search, started)
    for target, keys in summary["fronts"].items():  # the front at the end, for every front end's log
        by_key = {t["key"]: t for t in summary["trials"]}
        emit.log(f"front {target}: " + ", ".join(
            f"{k} {by_key[k]['latency'][target]['speedup']:.2f}x (drop {by_key[k]['validation']['drop']:+.4f})"
            for k in keys))
        win = summary["winners"][target]
        emit.log(f"winner {target}: {win['trial']}: {win['why']}" if win.get("trial") else
                 f"no winner for {target}: {win['why']}", "info" if win.get("trial") else "warning")
    emit("done", trials=len(search.trials), ran=len(search.ran), reused=len(search.reused & set(search.trials)),
         winners={t: w.get("trial") for t, w in summary["winners"].items()}, seconds=round(time.time() - started, 1))
    return summary
