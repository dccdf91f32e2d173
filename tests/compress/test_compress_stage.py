"""The compress stage on a tiny trained CNN: steps in order, events, manifest, skip/redo, leftovers, errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from toolkit.variants import load_variants
from toolkit.compress.stage import run_compress
from toolkit.config import recipe_from_dict
from toolkit.errors import UserError
from toolkit.events import Emitter
from toolkit.rundir import RunDir, load_manifest, sha256_path
from toolkit.train.stage import prepare_run_dir, run_train

DIGITS = {"name": "stage", "task": "image-classification", "seed": 0,
          "data": {"train": "builtin:digits", "limit": 500},
          "model": {"source": "builtin:cnn-small"},
          "train": {"max_steps": 120, "batch_size": 32, "lr": 3e-3, "threads": 1, "checkpoint_every": 0}}
STEPS = [{"name": "int8", "method": "quantize", "scheme": "int8-static", "calibration_samples": 32},
         {"name": "half", "from": "base", "method": "fp16"}]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("stage")
    recipe = recipe_from_dict(DIGITS, str(root / "r.toml"))
    run = RunDir(root / "run")
    prepare_run_dir(recipe, run, force=True)
    run_train(recipe, run, Emitter(None, "stage").for_stage("train"))
    return run


def _setup(trained: RunDir, tmp_path: Path, steps: list[dict]):
    run = RunDir(tmp_path / "run")
    shutil.copytree(trained.path, run.path)
    return run, recipe_from_dict({**DIGITS, "compress": steps}, str(tmp_path / "r.toml"))


def _compress(run, recipe) -> tuple[dict, list[dict]]:
    events: list[dict] = []
    emitter = Emitter(run.events, recipe.name, [events.append])
    try:
        return run_compress(recipe, run, emitter.for_stage("compress")), events
    finally:
        emitter.close()


def test_steps_run_in_order_with_events_and_manifest(trained, tmp_path):
    run, recipe = _setup(trained, tmp_path, STEPS)
    variants, events = _compress(run, recipe)
    assert list(variants) == ["base", "int8", "half"]
    kinds = [(e["kind"], e.get("variant") or e.get("step")) for e in events if e["kind"] != "log"]
    assert kinds == [("start", None), ("artifact", "int8"), ("progress", "int8"), ("artifact", "half"),
                     ("progress", "half"), ("done", None)]
    assert events[0]["total"] == 2 and events[0]["steps"] == ["int8", "half"]
    assert [e["step"] for e in events if e["kind"] == "progress"] == [1, 2]
    assert all(e["stage"] == "compress" for e in events)
    # what each step did is in the events...
    art = next(e for e in events if e["kind"] == "artifact" and e["variant"] == "int8")
    assert art["path"] == "variants/int8/model.onnx" and art["parent"] == "base" and art["within_budget"] is True
    assert art["summary"]["int8_format"].startswith(("U8S8", "S8S8"))
    logs = [e["message"] for e in events if e["kind"] == "log"]
    assert any(m.startswith("step 1/2: int8 = quantize int8-static of 'base'") for m in logs)
    # ...and in the manifest, with the step's settings and a hash of its file
    manifest = load_manifest(run)
    entries = {a["name"]: a for a in manifest["artifacts"]}
    for name in ("int8", "half"):
        a = entries[name]
        assert a["stage"] == "compress" and a["kind"] == "variant" and a["parent"] == "base" and a["config_hash"]
        assert a["sha256"] == sha256_path(run.path / a["path"])
        assert a["info"]["size_bytes"] == (run.path / a["path"]).stat().st_size
    assert entries["int8"]["step"]["calibration_samples"] == 32
    assert manifest["compress"]["steps"] == ["int8", "half"]
    # events.jsonl holds the same events, and variant.json the same variants
    on_disk = [json.loads(line) for line in run.events.read_text().splitlines()]
    assert [e["kind"] for e in on_disk if e["stage"] == "compress"] == [e["kind"] for e in events]
    assert {n: v.to_dict() for n, v in load_variants(run.variants).items()} == {n: v.to_dict() for n, v in variants.items()}
    assert not any(p.name == ".work" for p in run.variants.rglob("*"))  # intermediates are gone


def test_rerun_skips_unchanged_steps_and_redoes_changed_ones(trained, tmp_path):
    run, recipe = _setup(trained, tmp_path, STEPS)
    _compress(run, recipe)
    stamp = {n: (run.variant(n) / "model.onnx").stat().st_mtime_ns for n in ("int8", "half")}
    _, events = _compress(run, recipe)
    assert [e["step"] for e in events if e["kind"] == "skip"] == ["int8", "half"]
    assert stamp == {n: (run.variant(n) / "model.onnx").stat().st_mtime_ns for n in ("int8", "half")}
    changed = recipe_from_dict({**DIGITS, "compress": [STEPS[0], {**STEPS[1], "keep_io_types": False}]},
                               str(tmp_path / "r.toml"))
    variants, events = _compress(run, changed)
    assert [e["step"] for e in events if e["kind"] == "skip"] == ["int8"]
    assert variants["half"].info["keep_io_types"] is False
    assert (run.variant("half") / "model.onnx").stat().st_mtime_ns != stamp["half"]


def test_a_changed_parent_redoes_its_children(trained, tmp_path):
    run, recipe = _setup(trained, tmp_path, STEPS[:1])
    _compress(run, recipe)
    # retraining changes the base's recorded hash: the step built on it must run again
    manifest = json.loads(run.manifest.read_text())
    for a in manifest["artifacts"]:
        if a["name"] == "base":
            a["sha256"] = "0" * 64
    run.manifest.write_text(json.dumps(manifest))
    _, events = _compress(run, recipe)
    assert not [e for e in events if e["kind"] == "skip"]


def test_leftovers_of_an_interrupted_step_are_cleared(trained, tmp_path):
    run, recipe = _setup(trained, tmp_path, STEPS[1:])
    stale = run.variant("half") / "stale.onnx"
    stale.parent.mkdir(parents=True)
    stale.write_bytes(b"half-written")
    (run.variant("half") / "checkpoints").mkdir()  # a training step's checkpoints stay for its resume
    _compress(run, recipe)
    assert not stale.exists() and (run.variant("half") / "checkpoints").is_dir()
    assert (run.variant("half") / "variant.json").is_file()


def test_without_a_baseline_the_stage_says_to_train_first(tmp_path):
    recipe = recipe_from_dict({**DIGITS, "compress": STEPS}, str(tmp_path / "r.toml"))
    run = RunDir(tmp_path / "run")
    with pytest.raises(UserError, match="no baseline variant; run `python -m toolkit train`"):
        run_compress(recipe, run, Emitter(None, "x").for_stage("compress"))


def test_a_failing_step_leaves_no_variant_json(trained, tmp_path):
    run, recipe = _setup(trained, tmp_path, [{"name": "bad", "method": "quantize", "nodes_to_exclude": ["nope"]}])
    with pytest.raises(UserError, match="nodes_to_exclude: no node 'nope'"):
        _compress(run, recipe)
    assert not (run.variant("bad") / "variant.json").exists()
    assert "bad" not in load_variants(run.variants)
    assert not (run.variant("bad") / ".work").exists()
