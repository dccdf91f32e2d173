"""Run states from the files alone; the recipe list; the new-session form's overrides, checks and saving."""
from __future__ import annotations

import json
import os
import socket
import time
import tomllib
from pathlib import Path

import pytest

from toolkit.config import load_recipe
from toolkit.errors import UserError
from tui import form, runner
from tui.runs import best_variant, list_recipes, load_report, run_state, scan_runs


def test_states_of_the_fixture_runs(fixture_runs: Path) -> None:
    states = {r.name: (r.state, r.best, r.task) for r in scan_runs([fixture_runs])}
    assert states["demo-done"] == ("done", "pruned @host", "image-classification")
    assert states["demo-failed"][0] == "failed"
    assert states["demo-interrupted"][0] == "interrupted"
    # Killed mid-stage: the stale lock (another host, old heartbeat) does not make it "running".
    assert states["demo-killed"][0] == "interrupted"
    assert "training diverged" in run_state(fixture_runs / "demo-failed")[1]


def test_a_fresh_lock_of_a_live_process_means_running(fixture_runs: Path) -> None:
    run = fixture_runs / "demo-interrupted"
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "command": "run", "started": time.time(),
            "heartbeat": time.time()}
    (run / "run.lock").write_text(json.dumps(lock))
    assert run_state(run)[0] == "running"
    lock["heartbeat"] = time.time() - 120  # the heartbeat stopped two minutes ago
    (run / "run.lock").write_text(json.dumps(lock))
    assert run_state(run)[0] == "interrupted"


def test_stage_done_without_the_sessions_done_is_not_done(tmp_path: Path) -> None:
    run = tmp_path / "r"
    run.mkdir()
    events = [{"t": 1, "stage": "session", "kind": "start"}, {"t": 2, "stage": "train", "kind": "done"}]
    (run / "events.jsonl").write_text("".join(json.dumps(e) + "\n" for e in events))
    assert run_state(run)[0] == "interrupted"
    with open(run / "events.jsonl", "a") as fh:
        fh.write(json.dumps({"t": 3, "stage": "session", "kind": "done"}) + "\n")
    assert run_state(run)[0] == "done"
    # `toolkit export` run afterwards (the results screen's action) appends a stage of its own.
    with open(run / "events.jsonl", "a") as fh:
        for kind in ("start", "done"):
            fh.write(json.dumps({"t": 4, "stage": "export", "kind": kind}) + "\n")
    assert run_state(run)[0] == "done"


def test_best_variant_reads_the_recommendation(fixture_runs: Path) -> None:
    report = load_report(fixture_runs / "demo-done")
    assert best_variant(report) == "pruned @host"
    report["recommendation"]["android-arm64"] = "int8"
    assert best_variant(report) == "pruned @host +1"
    assert best_variant(None) == ""


def test_recipes_packaged_then_local(ui_home: Path, tui_fixtures: Path) -> None:
    entries = list_recipes([tui_fixtures / "recipes"])
    names = [e.name for e in entries]
    assert names[0] == "demo" and entries[0].origin == "built-in"
    assert {"tiny-digits", "bad-lr"} <= set(names)
    assert next(e for e in entries if e.name == "tiny-digits").task == "image-classification"


def test_form_overrides_only_what_changed(ui_home: Path) -> None:
    from toolkit.resources import demo_recipe

    state = form.load_form(demo_recipe())
    values = dict(state.values)
    assert form.overrides(state, values, state.steps) == []
    values.update({"train.epochs": "2", "train.precision": "bf16", "data.train": "mydata.csv",
                   "eval.targets": ["host", "x86-avx2"]})
    items = form.overrides(state, values, state.steps, 'train.max_steps=20 export.formats=["onnx", "ort"]')
    assert "train.epochs=2.0" in items and 'train.precision="bf16"' in items
    assert 'eval.targets=["host", "x86-avx2"]' in items
    # A path typed in the form is relative to the cwd; the override carries it absolute.
    assert f'data.train={json.dumps(str(ui_home / "mydata.csv"))}' in items
    assert items[-2:] == ["train.max_steps=20", 'export.formats=["onnx", "ort"]']
    recipe = form.check(state, items)
    assert recipe.train.max_steps == 20 and recipe.export.formats == ["onnx", "ort"]
    assert recipe.resolve_path(recipe.data.train) == ui_home / "mydata.csv"


def test_form_compression_toggles_become_a_compress_override(ui_home: Path) -> None:
    from toolkit.resources import demo_recipe

    state = form.load_form(demo_recipe())
    assert not state.custom_steps, "the demo's steps fit the form: one per method, in session order"
    enabled = [m for m, t in state.steps.items() if t is not None]
    assert enabled and form.overrides(state, state.values, state.steps) == []
    steps = dict(state.steps, **{enabled[0]: None})  # switch the first step off
    (item,) = form.overrides(state, state.values, steps)
    assert item.startswith("compress=[") and f'method = "{enabled[0]}"' not in item
    recipe = form.check(state, [item])  # the core's own checks accept it: the next step now takes "base"
    assert [s["method"] for s in recipe.compress] == enabled[1:]


def test_custom_compress_steps_are_left_alone() -> None:
    steps, custom = form.split_steps([{"method": "prune"}, {"method": "prune", "sparsity": 0.7}])
    assert custom and all(v is None for v in steps.values())
    steps, custom = form.split_steps([{"method": "quantize"}, {"method": "prune"}])  # not the session's order
    assert custom
    steps, custom = form.split_steps([{"name": "s", "method": "distill", "from": "base"},
                                      {"method": "prune", "from": "s"}])
    assert not custom and "from" not in steps["prune"]


def test_form_shows_the_cores_own_message(ui_home: Path, tui_fixtures: Path) -> None:
    with pytest.raises(UserError, match=r"train\.lr = -0\.1: must be a positive number"):
        form.load_form(tui_fixtures / "recipes" / "bad-lr.toml")
    state = form.load_form(tui_fixtures / "recipes" / "tiny-digits.toml")
    with pytest.raises(UserError, match="train.precision = 'fp64' is not one of"):
        form.check(state, ['train.precision="fp64"'])
    with pytest.raises(UserError, match="expected a number"):
        form.overrides(state, dict(state.values, **{"train.epochs": "three"}), state.steps)


def test_save_writes_a_recipe_that_loads_with_the_same_files(ui_home: Path, tui_fixtures: Path) -> None:
    (ui_home / "data").mkdir()
    (ui_home / "data" / "train.csv").write_text("text,label\nhi,1\n")
    state = form.load_form(tui_fixtures / "recipes" / "tiny-digits.toml")
    items = form.overrides(state, dict(state.values, **{"data.train": "data/train.csv", "name": "mine"}), state.steps)
    out = form.save(state, items, "recipes/mine.toml")
    saved = tomllib.loads(out.read_text())
    assert saved["name"] == "mine" and saved["data"]["train"] == "../data/train.csv"  # relative to the new file
    assert load_recipe(out).resolve_path(saved["data"]["train"]).resolve() == (ui_home / "data" / "train.csv").resolve()
    from toolkit.resources import demo_recipe

    with pytest.raises(UserError, match="packaged recipe"):
        form.save(state, items, demo_recipe())
    with pytest.raises(UserError, match=r"\.toml"):
        form.save(state, items, "recipes/mine.txt")


def test_run_and_resume_commands(ui_home: Path) -> None:
    argv = runner.run_argv("r.toml", Path("runs/x"), ["train.max_steps=20"], force=True)
    assert argv[1:] == ["-m", "toolkit", "run", "r.toml", "--out", "runs/x", "--set", "train.max_steps=20", "--force"]
    with pytest.raises(UserError, match="no recipe.toml"):
        runner.resume_argv(Path("runs/x"))
    Path("runs/x").mkdir(parents=True)
    Path("runs/x/recipe.toml").write_text('name = "x"\n')
    assert runner.resume_argv(Path("runs/x"))[3:] == ["run", str(ui_home / "runs/x/recipe.toml"), "--out",
                                                     str(ui_home / "runs/x")]
    with pytest.raises(UserError, match="nothing is running"):
        runner.cancel(Path("runs/x"))


@pytest.mark.parametrize("arg", ["not_a_run.txt", "no-such-folder"])
def test_tui_command_refuses_a_path_that_is_not_a_folder(tui_fixtures: Path, arg: str) -> None:
    import subprocess
    import sys

    p = subprocess.run([sys.executable, "-m", "toolkit", "tui", str(tui_fixtures / arg)], capture_output=True,
                       text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and arg in lines[0] and "run directory" in lines[0]
