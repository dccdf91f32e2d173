"""`python -m toolkit eval` end to end, in a child process: eval.json per variant and the summary, and bad input
as exit 2 with one line on stderr naming what to fix."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "eval"
RECIPE = FIXTURES / "stage_digits.toml"


def toolkit(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOOLKIT_DEBUG": "0", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "toolkit", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def one_error_line(p: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in p.stderr.splitlines() if ln.startswith("error:")]
    assert p.returncode == 2, (p.returncode, p.stderr[-2000:])
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr[-2000:]
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "run"
    p = toolkit("train", RECIPE, "--out", out, "--quiet")
    assert p.returncode == 0, p.stderr[-2000:]
    return out


def test_eval_writes_eval_json_and_prints_a_summary(trained):
    p = toolkit("eval", RECIPE, "--out", trained, "--quiet", "--set", "eval.latency.runs=10",
                "--set", "eval.latency.budget_s=0")
    assert p.returncode == 0, p.stderr[-2000:]
    record = json.loads((trained / "variants" / "base" / "eval.json").read_text())
    assert record["evaluated_with"] == "pytorch" and 0 <= record["metrics"]["accuracy"] <= 1
    assert record["latency"]["host"]["runs"] == 10  # --set reached the stage (no extra rounds: budget_s=0)
    # no export ran: the host's preferred runtime (ONNX Runtime) has no file, PyTorch eager stands in, said so
    assert record["latency"]["host"]["runtime"] == "torch"
    assert record["latency"]["host"]["preferred_runtime"] == "onnxruntime"
    assert f"accuracy {record['metrics']['accuracy']:.4g}" in p.stdout and "base:" in p.stdout
    assert "report:" in p.stdout
    events = [json.loads(ln) for ln in (trained / "events.jsonl").read_text().splitlines()]
    kinds = [e["kind"] for e in events if e["stage"] == "eval"]
    assert kinds[0] == "start" and kinds[-1] == "done" and "artifact" in kinds
    manifest = json.loads((trained / "manifest.json").read_text())
    assert any(a["name"] == "eval/base" and a["kind"] == "eval" for a in manifest["artifacts"])


def test_metric_that_does_not_fit_the_task(trained):
    line = one_error_line(toolkit("eval", RECIPE, "--out", trained, "--metric", "bleu"))
    assert line == "error: bleu does not apply to image-classification; use accuracy or f1"


def test_unknown_metric_suggests_the_nearest(trained):
    line = one_error_line(toolkit("eval", RECIPE, "--out", trained, "--metric", "acuracy"))
    assert "'acuracy' is not a metric; did you mean 'accuracy'?" in line


def test_unknown_variant_suggests_the_nearest(trained):
    line = one_error_line(toolkit("eval", RECIPE, "--out", trained, "--variant", "bsae"))
    assert "--variant bsae: no such variant" in line and "did you mean 'base'?" in line


def test_unknown_target_in_the_recipe(trained):
    line = one_error_line(toolkit("eval", FIXTURES / "stage_unknown_target.toml", "--out", trained))
    assert "eval.targets: unknown target 'raspbery-pi-4'" in line and "did you mean 'raspberry-pi-4'?" in line


def test_a_run_directory_of_another_recipe_is_refused(trained):
    line = one_error_line(toolkit("eval", FIXTURES / "stage_other_run.toml", "--out", trained))
    assert "holds run 'stage-digits'" in line and "not 'stage-other'" in line


def test_missing_run_directory(tmp_path):
    line = one_error_line(toolkit("eval", RECIPE, "--out", tmp_path / "nowhere"))
    assert f"{tmp_path / 'nowhere'}: no such run directory" in line and "train first" in line


def test_run_directory_without_variants(tmp_path):
    (tmp_path / "run").mkdir()
    line = one_error_line(toolkit("eval", RECIPE, "--out", tmp_path / "run"))
    assert "no variants to evaluate" in line
