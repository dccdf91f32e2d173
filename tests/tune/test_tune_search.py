"""``toolkit tune`` end to end on a tiny BERT (tests/fixtures/tune/bert.toml): a short budget finds a variant faster
than the base within the quality budget, confirmed on the eval split; the winner's recipe parses; an interrupted
tune resumes without repeating a finished trial."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolkit.__main__ import main
from toolkit.events import read_events

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "tests" / "fixtures" / "tune" / "bert.toml"
BUDGET_S = 40
MAX_DROP = 0.02

pytestmark = pytest.mark.slow  # about a minute for the search, as much again for the interruption


@pytest.fixture(scope="module")
def tuned(tmp_path_factory) -> tuple[Path, float, int]:
    run = tmp_path_factory.mktemp("tune") / "run"
    t0 = time.time()
    code = main(["tune", str(RECIPE), "--target", "host", "--target", "raspberry-pi-4", "--budget", f"{BUDGET_S}s",
                 "--max-drop", str(MAX_DROP), "--out", str(run), "--quiet"])
    return run, time.time() - t0, code


def _report(run: Path) -> dict:
    return json.loads((run / "tune" / "report.json").read_text())


def test_short_budget_finds_a_faster_variant_within_the_quality_budget(tuned):
    run, seconds, code = tuned
    assert code == 0
    report = _report(run)
    # the budget holds: training the base and one trial that started before the deadline may run past it
    assert seconds < BUDGET_S + 60
    assert report["trials_run"] >= 3
    for target in ("host", "raspberry-pi-4"):
        win = report["winners"][target]
        assert win.get("trial"), win.get("why")
        # faster than the base on every target (the bar); on the host, where it is measured, the INT8
        # trials alone make that clear. An estimated target's margin depends on how many training trials the
        # wall-clock budget allowed, which a loaded machine cuts (1.07x seen beside another 2-thread job)
        assert win["speedup"] > (1.2 if target == "host" else 1.0), win
        assert win["validation_drop"] <= MAX_DROP and win["eval_drop"] <= MAX_DROP
        front = json.loads((run / "tune" / f"front-{target}.json").read_text())
        assert front["split"] == "validation" and win["trial"] in [p["trial"] for p in front["front"]]
    assert report["winners"]["host"]["source"] == "measured"
    assert report["winners"]["raspberry-pi-4"]["source"] == "estimated"
    # every trial says what it cost
    assert all(t["seconds"] is not None for t in report["trials"])
    kinds = {(e["stage"], e["kind"]) for e in read_events(run / "events.jsonl")}
    assert {("tune", "start"), ("tune", "progress"), ("tune", "done")} <= kinds


def test_max_drop_is_honoured_on_the_eval_split(tuned):
    """The winner's eval-split accuracy, measured here with the evaluator (not read from tune's report)."""
    import dataclasses

    from toolkit.config import load_recipe
    from toolkit.data import load_splits
    from toolkit.eval.evaluate import evaluate_variant
    from toolkit.variants import load_variants

    run, _, _ = tuned
    recipe = load_recipe(RECIPE)
    splits = load_splits(recipe)
    every = load_variants(run / "variants")
    win = _report(run)["winners"]["host"]
    acc = {n: evaluate_variant(recipe, every[n], every, splits).metrics["accuracy"] for n in ("base", win["variant"])}
    assert acc["base"] - acc[win["variant"]] <= MAX_DROP
    assert abs((acc["base"] - acc[win["variant"]]) - win["eval_drop"]) < 1e-9
    assert len(dataclasses.replace(splits).eval) > 0


def test_best_recipe_is_a_recipe_run_accepts(tuned):
    from toolkit.config import load_recipe
    from toolkit.session import preflight

    run, _, _ = tuned
    best = load_recipe(run / "tune" / "best-host.toml")
    preflight(best)  # the steps against the model, the targets: what `toolkit run` checks before any work
    win = _report(run)["winners"]["host"]
    chain = next(t["params"] for t in _report(run)["trials"] if t["key"] == win["trial"])
    assert [s.name for s in best.steps] and best.eval.targets == ["host"]
    assert best.eval.max_quality_drop == MAX_DROP
    assert len(best.steps) == sum(v != "none" for v in chain.values())
    assert Path(best.data.train).is_absolute()  # reproducible from wherever the file is copied


def test_interrupted_tune_resumes_without_repeating_finished_trials(tuned, tmp_path):
    run, _, _ = tuned
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    trials = copy / "tune" / "trials"
    before = {p.name for p in trials.glob("*.json")}
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "toolkit", "tune", str(RECIPE), "--target", "host",
                             "--target", "raspberry-pi-4", "--budget", "5m", "--max-drop", str(MAX_DROP),
                             "--out", str(copy), "--quiet"], env=env, cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and len(set(p.name for p in trials.glob("*.json")) - before) < 1:
        time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    done = {p.name: p.stat().st_mtime_ns for p in trials.glob("*.json")}
    assert len(done) > len(before)  # the interrupted tune finished at least one new trial
    events_before = len(read_events(copy / "events.jsonl"))
    code = main(["tune", str(RECIPE), "--target", "host", "--target", "raspberry-pi-4", "--budget", "10s",
                 "--max-drop", str(MAX_DROP), "--out", str(copy), "--quiet"])
    assert code == 0
    # nothing finished was made again: same records, untouched; each reused one announced once
    assert all(trials.joinpath(n).stat().st_mtime_ns == m for n, m in done.items())
    report = _report(copy)
    assert report["trials_reused"] == len(done)
    new_events = read_events(copy / "events.jsonl")[events_before:]
    ran_again = [e for e in new_events if e["stage"] == "tune" and e["kind"] == "metric"
                 and f"{e['trial']}.json" in done]
    assert not ran_again
    skipped = {e["trial"] for e in new_events if e["stage"] == "tune" and e["kind"] == "skip"}
    assert skipped <= {n[:-5] for n in done}


def test_toolkit_run_reproduces_the_winner(tuned, tmp_path):
    """`toolkit run tune/best-host.toml` makes the winner's chain again, and its last variant is within the budget
    on the eval split and faster than its own base (a fresh training: its numbers, not tune's, are checked)."""
    run, _, _ = tuned
    out = tmp_path / "reproduced"
    code = main(["run", str(run / "tune" / "best-host.toml"), "--out", str(out), "--quiet",
                 "--set", "export.formats=[\"onnx\"]", "--set", "eval.latency.runs=40"])
    assert code == 0
    report = json.loads((out / "report.json").read_text())
    variants = {v["name"]: v for v in report["variants"]}
    last = report["variants"][-1]
    assert last["parent"] is not None and len(variants) >= 2
    base = variants["base"]
    assert base["metrics"]["accuracy"] - last["metrics"]["accuracy"] <= MAX_DROP
    assert last["latency"]["host"]["p50_ms"] < base["latency"]["host"]["p50_ms"]


def test_a_wider_tune_reuses_the_trials_for_a_new_target_and_budget(tuned, tmp_path):
    """Another target and a tighter --max-drop: nothing is trained again; the finished trials are timed (estimated)
    on the new target and judged by the new budget."""
    run, _, _ = tuned
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    before = {p.name: p.stat().st_mtime_ns for p in (copy / "variants").glob("*/variant.json")}
    code = main(["tune", str(RECIPE), "--target", "host", "--target", "android-arm64", "--budget", "1s",
                 "--max-drop", "0.0", "--out", str(copy), "--quiet"])
    assert code == 0
    report = _report(copy)
    assert report["trials_run"] == 0 and report["trials_reused"] == report["trials_total"]
    assert {p.name: p.stat().st_mtime_ns for p in (copy / "variants").glob("*/variant.json")} == before
    done = [t for t in report["trials"] if t["status"] == "done"]
    assert all(t["latency"]["android-arm64"]["source"] == "estimated" for t in done)
    assert all(t["within_budget"] == (t["validation"]["drop"] <= 0.0) for t in done)
