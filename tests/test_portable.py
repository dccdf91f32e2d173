"""A run directory is portable (issue 14): every path inside it is stored relative to it, so a moved or copied run
directory reruns (skipping what is done), verifies and evaluates where it is now."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

FIX = Path(__file__).parent / "fixtures" / "errors"
RECIPE = str(FIX / "digits_int8.toml")


def toolkit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, timeout=600)


def test_a_moved_run_directory_reruns_verifies_and_evaluates(tmp_path):
    first = tmp_path / "a"
    p = toolkit("train", RECIPE, "--out", str(first), "--quiet")
    assert p.returncode == 0, p.stderr
    moved = tmp_path / "b"
    shutil.move(first, moved)  # trained by `toolkit train`, then moved: the session takes it from there
    p = toolkit("run", RECIPE, "--out", str(moved), "--quiet")
    assert p.returncode == 0, p.stderr
    for f in moved.rglob("*.json"):
        assert str(first) not in f.read_text(), f"{f} still names the old place"
    again = tmp_path / "c"
    shutil.copytree(moved, again)  # a copy: the original still exists, the copy uses its own files
    n = len((again / "events.jsonl").read_text().splitlines())
    p = toolkit("run", RECIPE, "--out", str(again), "--quiet")
    assert p.returncode == 0, p.stderr
    new = [json.loads(line) for line in (again / "events.jsonl").read_text().splitlines()[n:]]
    skipped = [e["stage"] for e in new if e["kind"] == "skip"]
    assert skipped == ["train", "compress", "export", "eval", "report"], skipped
    p = toolkit("report", str(again), "--verify")
    assert p.returncode == 0, p.stderr
    shutil.rmtree(moved)  # the copy stands alone
    p = toolkit("eval", RECIPE, "--out", str(again), "--quiet")
    assert p.returncode == 0, p.stderr
    report = json.loads((again / "report.json").read_text())
    assert {v["name"] for v in report["variants"]} == {"base", "quantize"}
    assert all(v["metrics"].get("accuracy") is not None for v in report["variants"])
