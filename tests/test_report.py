"""The report from hand-written run directories (tests/fixtures/report/): Pareto fronts, recommendations, ratios,
fit flags and verification flags, checked against values worked out by hand in the comments."""
from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest

from toolkit.config import load_recipe
from toolkit.report import build_report, main_metric, pareto_front, verify_run, write_report
from toolkit.rundir import RunDir, record_artifact
from toolkit.targets import Budget, load_target

FIXTURES = Path(__file__).parent / "fixtures" / "report"


def _copy(tmp_path: Path, case: str) -> tuple:
    dst = tmp_path / case
    shutil.copytree(FIXTURES / case, dst)
    return load_recipe(dst / "recipe.toml"), RunDir(dst)


def _row(report: dict, name: str) -> dict:
    return next(v for v in report["variants"] if v["name"] == name)


# ---- classification: base 0.960 @ host 4.0 ms / rpi 20 ms; student 0.955 @ 2.0 / 10; pruned 0.945 @ 1.5 / 7;
#      int8 0.952 @ 1.0 / 8; budget 0.01 (absolute accuracy) ---------------------------------------------------

def test_classification_pareto_and_recommendation(tmp_path):
    recipe, run = _copy(tmp_path, "cls")
    report = build_report(recipe, run)
    assert [v["name"] for v in report["variants"]] == ["base", "student", "pruned", "int8"]
    # host: int8 (0.952, 1.0) beats pruned (0.945, 1.5) on both axes; base, student, int8 trade off.
    assert report["pareto"]["host"] == ["int8", "student", "base"]
    # rpi: pruned is fastest (7 ms) there, int8 (8 ms) more accurate: nobody is dominated.
    assert report["pareto"]["raspberry-pi-4"] == ["pruned", "int8", "student", "base"]
    # pruned's drop 0.015 > 0.01; of base/student/int8 (drops 0, 0.005, 0.008) int8 is fastest on both.
    assert report["recommendation"] == {"host": "int8", "raspberry-pi-4": "int8"}
    assert _row(report, "pruned")["within_budget"] is False
    assert _row(report, "int8")["within_budget"] is True
    assert _row(report, "int8")["quality_drop"] == pytest.approx(0.008)
    assert _row(report, "int8")["speedup"] == {"host": pytest.approx(4.0), "raspberry-pi-4": pytest.approx(2.5)}
    assert _row(report, "int8")["size_ratio"] == pytest.approx(20000 / 400000)
    assert _row(report, "student")["size_bytes"] == 100000  # the ONNX file, not the .ort
    assert _row(report, "student")["params"] == 10000
    assert _row(report, "int8")["latency"]["raspberry-pi-4"]["source"] == "estimated"
    assert _row(report, "base")["latency"]["host"]["source"] == "measured"
    assert report["main_metric"]["name"] == "accuracy" and report["baseline"] == "base"


def test_failed_verification_is_not_recommended(tmp_path):
    recipe, run = _copy(tmp_path, "cls")
    f = run.variant("int8") / "export.json"
    data = json.loads(f.read_text())
    data["files"][1]["verified"] = False
    f.write_text(json.dumps(data))
    report = build_report(recipe, run)
    # Without int8 the fastest within budget is student on both targets (2.0 ms, 10 ms).
    assert report["recommendation"] == {"host": "student", "raspberry-pi-4": "student"}
    assert _row(report, "int8")["verification_failed"] == ["variants/int8/model.ort"]


def test_an_export_that_failed_outright_is_flagged_and_the_report_is_complete(tmp_path):
    """An export that wrote no file (path None) is a line in report.md, not a crash (issue 12)."""
    recipe, run = _copy(tmp_path, "cls")
    f = run.variant("int8") / "export.json"
    data = json.loads(f.read_text())
    data["files"].append({"format": "pte", "path": None, "size_bytes": 0, "verified": False, "check": {},
                          "reason": "RuntimeError: lowering failed"})
    f.write_text(json.dumps(data))
    with open(run.events, "a", encoding="utf-8") as events:  # the export stage's warning about it
        events.write(json.dumps({"t": 1, "run": "cls", "stage": "export", "kind": "log", "level": "warning",
                                 "message": "int8: pte export FAILED: RuntimeError: lowering failed"}) + "\n")
    write_report(recipe, run)
    md = run.report_md.read_text()
    assert "`int8`: pte export FAILED (RuntimeError: lowering failed); not recommended" in md
    report = json.loads(run.report_json.read_text())
    assert report["recommendation"] == {"host": "student", "raspberry-pi-4": "student"}


def test_fit_check_and_no_recommendation(tmp_path):
    recipe, run = _copy(tmp_path, "cls")
    rpi = load_target("raspberry-pi-4")
    # 0.05 MiB = 52,428 bytes: only int8 (20,000 B) fits; 0.01 MiB = 10,485 bytes: nothing fits.
    roomy = dataclasses.replace(rpi, budget=Budget(max_model_mb=0.05, max_memory_mb=2048))
    report = build_report(recipe, run, profiles={"host": None, "raspberry-pi-4": roomy})
    assert report["recommendation"]["raspberry-pi-4"] == "int8"
    assert _row(report, "student")["fit"]["raspberry-pi-4"]["fits"] is False
    assert _row(report, "int8")["fit"]["raspberry-pi-4"]["fits"] is True
    tiny = dataclasses.replace(rpi, budget=Budget(max_model_mb=0.01, max_memory_mb=2048))
    report = build_report(recipe, run, profiles={"host": None, "raspberry-pi-4": tiny})
    assert report["recommendation"]["raspberry-pi-4"] is None
    assert "budget" in report["no_recommendation"]["raspberry-pi-4"]
    assert report["recommendation"]["host"] == "int8"  # host has no profile here: no fit check


def test_write_report_files(tmp_path):
    recipe, run = _copy(tmp_path, "cls")
    path = write_report(recipe, run)
    report = json.loads(path.read_text())
    assert report["schema_version"] == 1 and report["run"] == "fixture-cls"
    for key in ("name", "parent", "method", "params", "size_bytes", "files", "metrics", "conventions", "groups",
                "robustness", "within_budget", "latency"):
        assert key in report["variants"][0]
    md = run.report_md.read_text()
    # One row per variant; estimated/measured labelled once per target column; marks explained.
    for name in ("base", "student", "pruned", "int8"):
        assert md.count(f"| `{name}` |") == 1
    assert "host latency (measured)" in md and "raspberry-pi-4 latency (estimated)" in md
    assert "**host**: ship `int8`" in md and "4.00× the baseline's speed" in md
    assert "1.000 ms · 4.00× ◆★" in md
    assert "drop +0.0150 is over the budget 0.01" in md  # pruned flagged
    assert "executorch extra is not installed" in md
    assert "sklearn accuracy_score" in md  # conventions stated under the table
    plots = sorted(p.name for p in (run.path / "plots").iterdir())
    assert plots == ["quality_vs_latency_host.png", "quality_vs_latency_raspberry-pi-4.png", "training_curves.png"]
    for p in (run.path / "plots").iterdir():
        assert p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert verify_run(run) == []  # the report's own files are recorded with their hashes


def test_no_recommendation_statement(tmp_path):
    recipe, run = _copy(tmp_path, "cls")
    for name in ("student", "pruned", "int8"):
        f = run.variant(name) / "eval.json"
        data = json.loads(f.read_text())
        data["metrics"]["accuracy"] = 0.90  # drop 0.06: every compressed variant is over the budget
        f.write_text(json.dumps(data))
    (run.variant("base") / "eval.json").unlink()  # and the baseline has no result at all
    write_report(recipe, run)
    report = json.loads(run.report_json.read_text())
    assert report["recommendation"] == {"host": None, "raspberry-pi-4": None}
    md = run.report_md.read_text()
    assert "**host**: no variant meets the budget" in md
    assert "`base`: not evaluated (no eval.json)" in md


def test_language_model_lower_is_better(tmp_path):
    recipe, run = _copy(tmp_path, "lm")
    report = build_report(recipe, run)
    # base 40.0 @ 10 ms, small 41.0 @ 5 ms (+2.5 % > 1 %), int8 40.3 @ 7 ms (+0.75 %): int8 is recommended.
    assert report["recommendation"] == {"host": "int8"}
    assert report["pareto"]["host"] == ["small", "int8", "base"]
    assert _row(report, "small")["quality_drop"] == pytest.approx(0.025)
    assert _row(report, "int8")["quality_drop"] == pytest.approx(0.0075)
    assert _row(report, "int8")["size_ratio"] == pytest.approx(900000 / 3200000)  # no export.json: eval's size


def test_pareto_front_by_hand():
    pts = [("a", 0.9, 1.0), ("b", 0.9, 2.0), ("c", 0.95, 2.0), ("d", 0.8, 0.5), ("e", 0.95, 2.0)]
    # b is dominated by a (same quality, slower); c and e tie exactly: neither dominates the other.
    assert pareto_front(pts, higher_is_better=True) == ["d", "a", "c", "e"]
    # lower is better: (q, lat) = (0.8, 0.5) dominates everything but nothing beats it.
    assert pareto_front(pts, higher_is_better=False) == ["d"]


def test_quality_drop_conventions():
    assert main_metric("seq2seq").drop_of(30.0, 29.5) == pytest.approx(0.005)  # BLEU points / 100
    assert main_metric("text-classification").drop_of(0.9, 0.92) == pytest.approx(-0.02)  # better: negative
    assert main_metric("language-modeling").drop_of(40.0, 44.0) == pytest.approx(0.1)


def test_verify_run_names_changed_and_missing(tmp_path):
    run = RunDir(tmp_path / "r")
    (run.path / "variants" / "a").mkdir(parents=True)
    (run.path / "variants" / "a" / "model.onnx").write_bytes(b"onnx bytes")
    (run.path / "variants" / "b").mkdir()
    (run.path / "variants" / "b" / "w.bin").write_bytes(b"weights")
    run.manifest.write_text(json.dumps({"schema_version": 1, "artifacts": []}))
    record_artifact(run, "a", "variant", run.path / "variants" / "a" / "model.onnx", "compress")
    record_artifact(run, "b", "variant", run.path / "variants" / "b", "compress")
    assert verify_run(run) == []
    (run.path / "variants" / "a" / "model.onnx").write_bytes(b"onnx bytez")
    shutil.rmtree(run.path / "variants" / "b")
    problems = verify_run(run)
    assert problems == ["a: variants/a/model.onnx changed (sha256 differs from the manifest)",
                        "b: variants/b is missing"]
