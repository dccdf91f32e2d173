"""`python -m toolkit train`: bad input exits 2 with one line and loses nothing; each recipe trains."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.resources import demo_recipe, recipes_dir

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "train"
FAST = ["--set", "train.max_steps=3", "--set", "train.threads=1", "--set", "data.limit=300", "--quiet"]


def _train(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", "train", *args], capture_output=True, text=True,
                          timeout=timeout)


def _one_line_error(p: subprocess.CompletedProcess, code: int = 2) -> str:
    assert p.returncode == code, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


def test_demo_trains_and_writes_the_run_directory(tmp_path):
    p = _train(str(demo_recipe()), "--out", str(tmp_path), *FAST)
    assert p.returncode == 0, p.stderr
    assert "model:" in p.stdout
    for rel in ("recipe.toml", "manifest.json", "events.jsonl", "train/final/config.json",
                "train/final/model.safetensors", "train/final/labels.json", "variants/base/model/config.json",
                "variants/base/variant.json", "train/metrics.jsonl"):
        assert (tmp_path / rel).exists(), rel
    assert not (tmp_path / "run.lock").exists()
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert set(manifest["data"]["fingerprints"]) == {"train", "validation", "eval"}
    assert {a["name"] for a in manifest["artifacts"]} >= {"train/final", "base"}
    assert manifest["libraries"]["torch"].startswith("2.")
    kinds = [json.loads(l)["kind"] for l in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert kinds[0] == "log" and "start" in kinds and kinds[-1] == "done"


def test_existing_run_from_another_recipe_is_refused(tmp_path):
    assert _train(str(demo_recipe()), "--out", str(tmp_path), *FAST).returncode == 0
    before = (tmp_path / "manifest.json").read_text()
    line = _one_line_error(_train(str(FIX / "other_name.toml"), "--out", str(tmp_path), "--quiet"))
    assert "holds run 'demo'" in line and "--force" in line
    assert (tmp_path / "manifest.json").read_text() == before  # nothing lost
    assert (tmp_path / "train/final/model.safetensors").exists()
    p = _train(str(FIX / "other_name.toml"), "--out", str(tmp_path), "--quiet", "--force")
    assert p.returncode == 0, p.stderr
    assert json.loads((tmp_path / "manifest.json").read_text())["run"] == "other-name"


@pytest.mark.parametrize("command", ["train", "compress"])
def test_force_takes_the_lock_before_touching_a_live_run(tmp_path, command):
    """--force on a run directory another process works in is refused, and nothing of that run is lost (issue 14)."""
    import os
    import socket
    import time

    assert _train(str(demo_recipe()), "--out", str(tmp_path), *FAST).returncode == 0
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = {"pid": holder.pid, "host": socket.gethostname(), "command": "run", "started": time.time(),
                "heartbeat": time.time()}
        (tmp_path / "run.lock").write_text(json.dumps(lock))
        before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
        events = (tmp_path / "events.jsonl").read_text()
        p = subprocess.run([sys.executable, "-m", "toolkit", command, str(demo_recipe()), "--out", str(tmp_path),
                            "--force", "--quiet"], capture_output=True, text=True, timeout=120)
        line = _one_line_error(p)
        assert f"a live run holds it (pid {holder.pid}" in line
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before  # nothing removed
        assert (tmp_path / "events.jsonl").read_text() == events  # and nothing written
        assert json.loads((tmp_path / "run.lock").read_text())["pid"] == holder.pid
    finally:
        holder.kill()
        os.waitpid(holder.pid, 0)


def test_second_train_without_resume_is_refused(tmp_path):
    assert _train(str(demo_recipe()), "--out", str(tmp_path), *FAST).returncode == 0
    line = _one_line_error(_train(str(demo_recipe()), "--out", str(tmp_path), *FAST))
    assert "--resume" in line and "--force" in line


def test_resume_with_only_corrupt_checkpoints_exits_2(tmp_path):
    assert _train(str(demo_recipe()), "--out", str(tmp_path), *FAST).returncode == 0
    for ckpt in (tmp_path / "train/checkpoints").iterdir():
        (ckpt / "model.pt").write_bytes(b"not a checkpoint")
    line = _one_line_error(_train(str(demo_recipe()), "--out", str(tmp_path), *FAST, "--resume"))
    assert "no valid checkpoint" in line


@pytest.mark.parametrize("fixture, expected", [
    ("missing_data.toml", "no/such/file.csv"),
    ("not_a_model.toml", "not_a_model"),
])
def test_bad_inputs_exit_2_with_one_line(tmp_path, fixture, expected):
    line = _one_line_error(_train(str(FIX / fixture), "--out", str(tmp_path / "run"), "--quiet"))
    assert expected in line


def test_debug_shows_the_traceback(tmp_path):
    p = _train(str(FIX / "missing_data.toml"), "--out", str(tmp_path / "run"), "--quiet", "--debug")
    assert p.returncode == 2 and "Traceback" in p.stderr


# ---- each packaged text recipe trains on a slice of the real data (../shared/data) ----------------------

RECIPE_DATA = {
    "text-classification": ["data.train={d}/sst2/train.tsv", "data.eval={d}/sst2/test.tsv"],
    "language-modeling": ["data.train={d}/tinyshakespeare/input.txt"],
    "translation": ['data.train=["{d}/multi30k/train.en", "{d}/multi30k/train.de"]',
                    'data.validation=["{d}/multi30k/val.en", "{d}/multi30k/val.de"]',
                    'data.eval=["{d}/multi30k/test_2016_flickr.en", "{d}/multi30k/test_2016_flickr.de"]'],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(RECIPE_DATA))
def test_each_text_recipe_trains(tmp_path, shared_data, name):
    args = []
    for s in RECIPE_DATA[name]:
        args += ["--set", s.format(d=shared_data)]
    p = _train(str(recipes_dir() / f"{name}.toml"), "--out", str(tmp_path), *args,
               "--set", "train.max_steps=30", "--set", "data.limit=1000", "--set", "train.threads=2", "--quiet")
    assert p.returncode == 0, p.stderr
    rows = [json.loads(l) for l in (tmp_path / "train/metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0], losses  # it learns
    assert (tmp_path / "train/final/config.json").exists()
    assert (tmp_path / "train/final/tokenizer.json").exists()
