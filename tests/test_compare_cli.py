"""`python -m toolkit compare RUN_A RUN_B` and `python -m toolkit report RUN_DIR [--verify] [--json]` on run
directories built from the hand-written report fixtures."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from toolkit.__main__ import main
from toolkit.config import load_recipe
from toolkit.report import write_report
from toolkit.rundir import RunDir

FIXTURES = Path(__file__).parent / "fixtures" / "report"


def _run(tmp_path: Path, name: str, case: str = "cls") -> Path:
    dst = tmp_path / name
    shutil.copytree(FIXTURES / case, dst)
    return dst


def _report(path: Path) -> Path:
    write_report(load_recipe(path / "recipe.toml"), RunDir(path))
    return path


@pytest.fixture
def two_runs(tmp_path):
    a = _report(_run(tmp_path, "a"))
    b = _run(tmp_path, "b")
    # B: int8 became more accurate and 2x faster on the host; student vanished; a new variant appeared.
    ev = json.loads((b / "variants/int8/eval.json").read_text())
    ev["metrics"]["accuracy"] = 0.958
    ev["latency"]["host"]["p50_ms"] = 0.5
    (b / "variants/int8/eval.json").write_text(json.dumps(ev))
    shutil.rmtree(b / "variants/student")
    shutil.copytree(b / "variants/pruned", b / "variants/pruned2")
    vj = json.loads((b / "variants/pruned2/variant.json").read_text())
    vj["name"] = "pruned2"
    (b / "variants/pruned2/variant.json").write_text(json.dumps(vj))
    return a, _report(b)


def test_compare_side_by_side(two_runs, capsys):
    a, b = two_runs
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    int8_acc = next(ln for ln in lines if ln.startswith("int8") and "accuracy" in ln)
    assert "0.9520" in int8_acc and "0.9580" in int8_acc and "+0.0060 (better)" in int8_acc
    host = next(ln for ln in lines[lines.index(int8_acc):] if "host p50_ms (measured)" in ln)
    assert "1.000 ms" in host and "0.500 ms" in host and "2.00× faster" in host
    rpi = next(ln for ln in lines[lines.index(int8_acc):] if "raspberry-pi-4 p50_ms (estimated)" in ln)
    assert "same speed" in rpi
    assert any(ln.startswith("student (only in A)") for ln in lines)
    assert any(ln.startswith("pruned2 (only in B)") for ln in lines)
    assert "recommended for host: A int8, B int8" in out


def test_compare_json(two_runs, capsys):
    a, b = two_runs
    assert main(["compare", str(a), str(b), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["targets"] == ["host", "raspberry-pi-4"]
    int8 = next(v for v in result["variants"] if v["name"] == "int8")
    row = next(r for r in int8["rows"] if r["quantity"] == "host p50_ms")
    assert row["a"] == 1.0 and row["b"] == 0.5 and row["change"]["speedup"] == pytest.approx(2.0)
    size = next(r for r in int8["rows"] if r["quantity"] == "size_bytes")
    assert size["change"]["ratio"] == pytest.approx(1.0)


def test_compare_different_tasks_has_no_common_targets(tmp_path, capsys):
    a = _report(_run(tmp_path, "a"))
    b = _report(_run(tmp_path, "b", "lm"))
    assert main(["compare", str(a), str(b)]) == 0
    out = capsys.readouterr().out
    assert "different tasks" in out
    assert "host p50_ms" in out  # both report host


@pytest.mark.parametrize("case, message", [
    ("missing", "no such run directory"),
    ("no_report", "no report yet"),
    ("torn_report", "not valid JSON"),
    ("not_a_report", "not a report.json"),
])
def test_compare_bad_input(tmp_path, capsys, case, message):
    a = _report(_run(tmp_path, "a"))
    if case == "missing":
        b = tmp_path / "nope"
    elif case == "no_report":
        b = _run(tmp_path, "b")
    else:
        b = FIXTURES / case
    assert main(["compare", str(a), str(b)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_report_prints_and_verifies(tmp_path, capsys):
    a = _report(_run(tmp_path, "a"))
    assert main(["report", str(a)]) == 0
    assert "**host**: ship `int8`" in capsys.readouterr().out
    assert main(["report", str(a), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["recommendation"]["host"] == "int8"
    assert main(["report", str(a), "--verify"]) == 0
    (a / "report.md").write_text("edited by hand\n")
    (a / "plots" / "training_curves.png").unlink()
    assert main(["report", str(a), "--verify"]) == 3
    err = capsys.readouterr().err
    assert "report.md changed" in err and "plots/training_curves.png is missing" in err


@pytest.mark.parametrize("case, message", [("missing", "no such run directory"),
                                           ("no_manifest", "not a run directory"),
                                           ("no_report", "no report yet")])
def test_report_bad_input(tmp_path, capsys, case, message):
    path = tmp_path / "r"
    if case != "missing":
        shutil.copytree(FIXTURES / "cls", path)
    if case == "no_manifest":
        (path / "manifest.json").unlink()
    assert main(["report", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1
