"""The kill test: SIGKILL a real training process at a random step, resume it, get bit-identical weights."""
from __future__ import annotations

import json
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from toolkit.resources import demo_recipe

# The demo recipe (digits, small CNN) made short and deterministic; a checkpoint every 3 steps.
SETTINGS = ["train.deterministic=true", "train.max_steps=24", "train.checkpoint_every=3", "train.log_every=1",
            "train.keep_checkpoints=2", "train.threads=1", "data.limit=600", "train.batch_size=32"]


def _cmd(out: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "toolkit", "train", str(demo_recipe()), "--out", str(out), "--quiet"]
    for s in SETTINGS:
        cmd += ["--set", s]
    return cmd + list(extra)


def _weights(run: Path) -> dict:
    return load_file(str(run / "train" / "final" / "model.safetensors"))


def _kill_at_step(out: Path, step: int, timeout: float = 120) -> None:
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    events = out / "events.jsonl"
    deadline = time.time() + timeout
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"training ended before step {step}: {proc.stderr.read().decode()[-500:]}")
            if events.exists():
                for line in events.read_text().splitlines():
                    try:
                        e = json.loads(line)
                    except json.JSONDecodeError:
                        continue
                    if e.get("kind") == "progress" and e.get("step", 0) >= step:
                        proc.send_signal(signal.SIGKILL)
                        proc.wait()
                        return
            time.sleep(0.01)
        pytest.fail("timed out waiting for the training step")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("uninterrupted")
    p = subprocess.run(_cmd(out), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    return _weights(out)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_sigkill_then_resume_is_bit_identical(tmp_path, reference, seed):
    step = random.Random(seed).randint(4, 22)  # after the first checkpoint (step 3)
    _kill_at_step(tmp_path, step)
    refused = subprocess.run(_cmd(tmp_path), capture_output=True, text=True, timeout=300)
    assert refused.returncode == 2 and "--resume" in refused.stderr  # no silent overwrite
    p = subprocess.run(_cmd(tmp_path, "--resume"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    resumed = _weights(tmp_path)
    assert resumed.keys() == reference.keys()
    for name, tensor in reference.items():
        assert resumed[name].equal(tensor), f"{name} differs after resuming from a kill at step {step}"


def test_sigkill_during_checkpoint_write_leaves_previous_loadable(tmp_path):
    # Kill the process from inside the second checkpoint write, after its files are written but before
    # the folder is renamed into place.
    code = (
        "import os, signal, sys\n"
        "import toolkit.train.checkpoint as c\n"
        "orig = c.sha256_file\n"
        "def boom(p):\n"
        "    if 'step-000006' in str(p): os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return orig(p)\n"
        "c.sha256_file = boom\n"
        "from toolkit.__main__ import main\n"
        "sys.exit(main(sys.argv[1:]))\n"
    )
    cmd = _cmd(tmp_path)
    p = subprocess.run([sys.executable, "-c", code] + cmd[3:], capture_output=True, text=True, timeout=300)
    assert p.returncode == -signal.SIGKILL
    ckpts = tmp_path / "train" / "checkpoints"
    assert sorted(x.name for x in ckpts.iterdir() if not x.name.startswith(".")) == ["step-000003"]
    assert any(x.name.startswith(".") for x in ckpts.iterdir())  # the half-written folder
    p = subprocess.run(_cmd(tmp_path, "--resume"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert not any(x.name.startswith(".") for x in ckpts.iterdir())


def test_sigint_exits_130_and_run_continues(tmp_path):
    proc = subprocess.Popen(_cmd(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    events = tmp_path / "events.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (events.exists() and '"progress"' in events.read_text()):
        time.sleep(0.01)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "checkpoint" in err and len(err.strip().splitlines()) == 1
    kinds = [json.loads(l)["kind"] for l in events.read_text().splitlines()]
    assert "interrupted" in kinds and not (tmp_path / "run.lock").exists()
    p = subprocess.run(_cmd(tmp_path, "--resume"), capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert (tmp_path / "train" / "final" / "model.safetensors").exists()
