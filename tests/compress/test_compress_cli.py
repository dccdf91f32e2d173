"""``python -m toolkit compress``: end to end on a reduced digits recipe (training first), reruns, bad input."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.__main__ import main
from toolkit.events import read_events

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "compress"

RECIPE = """\
# the demo (digits + cnn-small) at reduced size, with two compression steps
schema_version = 1
name = "demo-small"
task = "image-classification"
seed = 0
[data]
train = "builtin:digits"
limit = 500
[model]
source = "builtin:cnn-small"
[train]
max_steps = {steps}
batch_size = 32
lr = 3e-3
threads = 1
checkpoint_every = 20
[[compress]]
name = "int8"
method = "quantize"
scheme = "int8-static"
target = "x86-avx2"
calibration_samples = 32
[[compress]]
name = "half"
from = "base"
method = "fp16"
"""


def _recipe(tmp_path: Path, steps: int = 120) -> Path:
    path = tmp_path / "demo-small.toml"
    path.write_text(RECIPE.format(steps=steps), encoding="utf-8")
    return path


def test_compress_trains_first_then_compresses_and_reruns_skip(tmp_path, capsys):
    recipe, out = _recipe(tmp_path), tmp_path / "run"
    assert main(["compress", str(recipe), "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "int8" in printed and "half" in printed and f"run directory: {out}" in printed
    events = read_events(out / "events.jsonl")
    stages = [e["stage"] for e in events]
    assert stages.index("train") < stages.index("compress")  # the baseline was trained first
    for name in ("int8", "half"):
        v = json.loads((out / "variants" / name / "variant.json").read_text())
        assert v["parent"] == "base" and v["within_budget"] is True
        assert (out / "variants" / name / "model.onnx").is_file()
        assert (out / "variants" / name / "labels.json").is_file()
    assert json.loads((out / "variants/int8/variant.json").read_text())["info"]["int8_format"] == \
        "U8S8 QOperator reduce_range"
    assert not (out / "run.lock").exists()
    # a rerun finds everything up to date: neither training nor any step runs again
    n = len(events)
    assert main(["compress", str(recipe), "--out", str(out), "--quiet"]) == 0
    again = read_events(out / "events.jsonl")[n:]
    assert [e["kind"] for e in again if e["stage"] == "train"] == ["skip"]
    assert [e.get("step") for e in again if e["kind"] == "skip" and e["stage"] == "compress"] == ["int8", "half"]


def test_compress_resumes_training_from_checkpoints(tmp_path):
    recipe, out = _recipe(tmp_path, steps=60), tmp_path / "run"
    assert main(["train", str(recipe), "--out", str(out), "--quiet"]) == 0
    # as if the run had stopped after training's checkpoints but before the baseline was written
    import shutil

    shutil.rmtree(out / "variants")
    shutil.rmtree(out / "train" / "final")
    n = len(read_events(out / "events.jsonl"))
    assert main(["compress", str(recipe), "--out", str(out), "--quiet"]) == 0
    events = read_events(out / "events.jsonl")[n:]
    start = next(e for e in events if e["stage"] == "train" and e["kind"] == "start")
    assert start["resumed_from"] == 60
    assert (out / "variants" / "int8" / "variant.json").is_file()


@pytest.mark.parametrize("fixture,message", [
    ("unknown_method.toml", "unknown method 'quantise'; did you mean 'quantize'?"),
    ("empty_calibration.toml", "an empty calibration set"),
    ("no_steps.toml", "the recipe has no [[compress]] steps"),
])
def test_bad_recipes_exit_2_with_one_line(tmp_path, capsys, fixture, message):
    code = main(["compress", str(FIXTURES / fixture), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and message in err
    assert err.startswith("error: ") and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_nothing_to_quantize_exits_2_naming_the_ops(tmp_path, capsys):
    import shutil

    for name in ("no_weights.toml", "no_weights.onnx"):
        shutil.copy(FIXTURES / name, tmp_path / name)
    code = main(["compress", str(tmp_path / "no_weights.toml"), "--out", str(tmp_path / "run"), "--quiet"])
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]  # the console shows the failed step above; the error itself is one line
    assert code == 2 and last.startswith("error: ") and "nothing to quantize" in last and "Tanh 1" in last


def test_the_real_command_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "toolkit", "compress", str(FIXTURES / "bad_scheme.toml"), "--out",
                           str(tmp_path / "run")], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 2
    assert "did you mean 'int8-dynamic'?" in proc.stderr and "Traceback" not in proc.stderr
    help_ = subprocess.run([sys.executable, "-m", "toolkit", "--help"], capture_output=True, text=True, cwd=REPO,
                           timeout=120)
    assert "compress" in help_.stdout
