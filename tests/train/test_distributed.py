"""DDP on the CPU (gloo): 2 processes train what 1 process trains, survive SIGKILL, and only rank 0 writes.

The model is a tiny BERT with dropout 0 and no BatchNorm (BatchNorm keeps per-rank statistics under DDP),
on 41 sentences in batches of 8 with 2 accumulation steps: every epoch ends with a batch of one example,
which leaves rank 1 nothing to do — the case the loss weighting must get right.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest
import torch
from safetensors.torch import load_file

from toolkit.events import read_events
from toolkit.train import distributed
from toolkit.train.distributed import DistEnv

FIX = Path(__file__).resolve().parents[1] / "fixtures" / "train"
RECIPE = FIX / "ddp.toml"


def _cmd(out: Path, *extra: str, recipe: Path = RECIPE) -> list[str]:
    return [sys.executable, "-m", "toolkit", "train", str(recipe), "--out", str(out), "--quiet", *extra]


def _run(out: Path, *extra: str, recipe: Path = RECIPE) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(out, *extra, recipe=recipe), capture_output=True, text=True, timeout=300)


def _weights(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "train" / "final" / "model.safetensors"))


def _files(run: Path) -> set[str]:
    # TensorBoard names its event file after the host and pid: count it, not its name.
    return {("train/tensorboard/<events>" if "tfevents" in p.name else p.relative_to(run).as_posix())
            for p in run.rglob("*") if p.is_file()}


def _losses(run: Path) -> list[float]:
    return [r["loss"] for r in map(json.loads, (run / "train" / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


@pytest.fixture(scope="module")
def one(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("one")
    p = _run(out)
    assert p.returncode == 0, p.stderr
    return out


@pytest.fixture(scope="module")
def two(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("two")
    p = _run(out, "--nproc", "2")
    assert p.returncode == 0, p.stderr
    assert "model:" in p.stdout and p.stderr.strip() == "", p.stderr  # --quiet: nothing from any rank
    return out


def test_two_processes_train_what_one_process_trains(one, two):
    a, b = _weights(one), _weights(two)
    assert a.keys() == b.keys()
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=1e-4, atol=1e-4, msg=name)
    # The weights moved far more than the tolerance since step 3, so the comparison means something.
    early = torch.load(one / "train/checkpoints/step-000003/model.pt", weights_only=True)
    assert max(float((a[n] - early[n]).abs().max()) for n in a) > 1e-2
    steps = [json.loads((r / "manifest.json").read_text())["train"]["steps"] for r in (one, two)]
    assert steps == [18, 18]
    assert _losses(two) == pytest.approx(_losses(one), abs=1e-5)  # the global batch's loss, step by step
    assert len(_losses(one)) == 18


def test_only_rank_0_writes(one, two):
    assert _files(two) == _files(one)
    events = read_events(two / "events.jsonl")
    kinds = [e["kind"] for e in events]
    assert kinds.count("start") == 1 and kinds.count("done") == 1
    assert [e for e in events if e["kind"] == "start"][0]["world_size"] == 2
    steps = [json.loads(l)["step"] for l in (two / "train" / "metrics.jsonl").read_text().splitlines()
             if '"loss"' in l]
    assert steps == list(range(1, 19))  # one line per step: no second writer
    state = torch.load(two / "train/checkpoints/step-000018/state.pt", weights_only=True)
    assert state["world_size"] == 2 and len(state["rng_ranks"]) == 2
    # Each rank has its own RNG stream (dropout, augmentation), all of them saved.
    assert not torch.equal(state["rng_ranks"][0]["torch"], state["rng_ranks"][1]["torch"])


def _kill_tree_at_step(out: Path, step: int) -> int:
    """Start a 2-process run; SIGKILL every process of it (workers, torchrun, launcher) at ``step``."""
    proc = subprocess.Popen(_cmd(out, "--nproc", "2"), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.time() + 240
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"training ended before step {step}: {proc.stderr.read().decode()[-500:]}")
            done = max((e.get("step", 0) for e in read_events(out / "events.jsonl") if e["kind"] == "progress"),
                       default=0)
            if done >= step:
                tree = psutil.Process(proc.pid).children(recursive=True)
                for p in reversed(tree):  # the workers first, so none sees its parent die
                    p.send_signal(signal.SIGKILL)
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                psutil.wait_procs(tree, timeout=10)
                return done
            time.sleep(0.01)
        pytest.fail("timed out waiting for the training step")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_sigkill_of_a_two_process_run_resumes_bit_identical(tmp_path, two):
    killed_at = _kill_tree_at_step(tmp_path, 7)
    assert killed_at < 18
    assert (tmp_path / "train/checkpoints/step-000006").is_dir()
    # Another number of processes is refused at once, in one line.
    p = _run(tmp_path, "--resume")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "saved by 2 process(es)" in p.stderr and "--nproc 2" in p.stderr
    p = _run(tmp_path, "--resume", "--nproc", "2")
    assert p.returncode == 0, p.stderr
    starts = [e for e in read_events(tmp_path / "events.jsonl") if e["kind"] == "start"]
    assert starts[-1]["resumed_from"] >= 6
    resumed, reference = _weights(tmp_path), _weights(two)
    for name, tensor in reference.items():
        assert resumed[name].equal(tensor), f"{name} differs after resuming from a kill at step {killed_at}"
    assert not (tmp_path / "run.lock").exists()


def test_ctrl_c_under_nproc_checkpoints_and_exits_130(tmp_path):
    proc = subprocess.Popen(_cmd(tmp_path, "--nproc", "2", "--set", "train.epochs=60"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and not any(e["kind"] == "progress" for e in read_events(tmp_path / "events.jsonl")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)  # what Ctrl-C sends the launcher; it passes it on once
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 130, err
    lines = err.strip().splitlines()
    assert lines[-1].startswith("interrupted: stopped by SIGINT at step"), err
    assert "Traceback" not in err and "SignalException" not in err, err
    [stop] = [e for e in read_events(tmp_path / "events.jsonl") if e["kind"] == "interrupted"]
    assert Path(stop["checkpoint"]).is_dir() and not (tmp_path / "run.lock").exists()
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(tmp_path) in " ".join(p.info["cmdline"] or [])]


def test_a_worker_error_is_one_line_and_its_exit_code(tmp_path):
    p = _run(tmp_path, "--nproc", "2", recipe=FIX / "ddp_missing_data.toml")
    assert p.returncode == 2, p.stderr
    lines = p.stderr.strip().splitlines()
    # The last line is the error, once; torchrun's own report and torch's log lines are not shown.
    assert lines[-1].startswith("error: ") and "no_such_file.tsv" in lines[-1], p.stderr
    assert sum(l.startswith("error: ") for l in lines) == 1
    assert "ChildFailedError" not in p.stderr and "Traceback" not in p.stderr
    assert not any(distributed._TORCH_LOG.match(l) for l in lines), p.stderr


def test_batch_that_does_not_split_is_refused_before_launching(tmp_path):
    t = time.time()
    p = _run(tmp_path, "--nproc", "3")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert "batch_size = 8" in p.stderr and "multiple of 6" in p.stderr
    assert not (tmp_path / "manifest.json").exists() and time.time() - t < 60


def test_shards_and_batch_checks():
    batch = list(range(10, 17))  # 7 items
    shards = [distributed.shard(batch, DistEnv(rank=r, world=3)) for r in range(3)]
    assert shards == [[10, 13, 16], [11, 14], [12, 15]]
    assert sorted(sum(shards, [])) == batch
    assert distributed.shard([5], DistEnv(rank=1, world=2)) == []
    distributed.check_batch(8, 2, 2)
    distributed.check_batch(7, 3, 1)  # one process: uneven micro-batches are fine, as before
    with pytest.raises(Exception, match="multiple of 4"):
        distributed.check_batch(6, 2, 2)


def test_torchrun_command_is_an_argument_list_on_loopback():
    cmd = distributed.torchrun_command(2, 29555, ["train", "r.toml"])
    assert cmd[:3] == [sys.executable, "-m", "torch.distributed.run"]
    assert cmd[cmd.index("--master_addr") + 1] == "127.0.0.1" and cmd[cmd.index("--nproc_per_node") + 1] == "2"
    assert cmd[-4:] == ["-m", "toolkit", "train", "r.toml"]


def test_launcher_reports_the_root_cause(tmp_path, capsys):
    now = time.time()
    for rank, code, line, t in [(0, 1, "internal error: RuntimeError: Connection closed by peer", now + 1),
                                (1, 2, "error: data.train: no such file", now)]:
        (tmp_path / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "code": code, "line": line, "t": t}))
    assert distributed._outcome(tmp_path, 2, 1) == 2
    assert capsys.readouterr().err.strip() == "error: data.train: no such file (rank 1)"
    for rank in (0, 1):
        (tmp_path / f"rank-{rank}.json").write_text(json.dumps({"rank": rank, "code": 0, "line": "", "t": now}))
    assert distributed._outcome(tmp_path, 2, 0) == 0
    os.unlink(tmp_path / "rank-1.json")
    assert distributed._outcome(tmp_path, 2, 1) == 1  # a worker that died without a word
    assert "died without reporting" in capsys.readouterr().err
