"""The real session end to end on the demo at reduced size: every variant and target in the report, reruns that
skip, a SIGKILL during training that continues to the same result, --verify, a stage failing midway, a full
disk, and another recipe's run directory."""
from __future__ import annotations

import errno
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolkit.config import load_recipe
from toolkit.errors import UserError
from toolkit.events import read_events
from toolkit.report import latency_ms, verify_run
from toolkit.resources import demo_recipe
from toolkit.rundir import RunDir, load_manifest
from toolkit.session import run_session

# The demo made small and deterministic: fewer images and steps, a few timed runs, one .pte-free format list.
SMALL = ["data.limit=500", "train.max_steps=24", "train.batch_size=32", "train.checkpoint_every=4",
         "train.log_every=4", "train.deterministic=true", "train.threads=1", "eval.latency.warmup=2",
         "eval.latency.runs=10", "export.formats=[\"onnx\", \"ort\"]"]
TARGETS = ["host", "raspberry-pi-4", "raspberry-pi-5", "android-arm64", "jetson-orin-nano", "x86-avx2",
           "x86-avx512-vnni"]
VARIANTS = ["base", "student", "pruned", "int8"]


def _cmd(out: Path, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "toolkit", "run", "--out", str(out), "--quiet"]
    for s in SMALL:
        cmd += ["--set", s]
    return cmd + list(extra)


def _run(out: Path, *extra: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(_cmd(out, *extra), capture_output=True, text=True, timeout=timeout)


def _metrics(run: Path) -> dict:
    report = json.loads((run / "report.json").read_text())
    return {v["name"]: v["metrics"] for v in report["variants"]}


def _recipe(*extra: str):
    return load_recipe(demo_recipe(), SMALL + list(extra))


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("e2e") / "run"
    p = _run(out)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"report: {out / 'report.md'}" in p.stdout
    return out


def _copy(reference: Path, tmp_path: Path) -> RunDir:
    dst = tmp_path / "run"
    shutil.copytree(reference, dst)
    return RunDir(dst)


def test_demo_report_has_every_variant_and_target(reference):
    report = json.loads((reference / "report.json").read_text())
    assert [v["name"] for v in report["variants"]] == VARIANTS
    for v in report["variants"]:
        assert set(v["latency"]) == set(TARGETS), v["name"]
        assert v["latency"]["host"]["source"] == "measured"
        for t in TARGETS[1:]:
            assert v["latency"][t]["source"] == "estimated"
        assert 0 <= v["metrics"]["accuracy"] <= 1
        assert {f["format"] for f in v["files"]} >= {"onnx", "ort"}
        assert all(f["verified"] in (True, False) for f in v["files"]), v["files"]
    assert set(report["pareto"]) == set(TARGETS) and set(report["recommendation"]) == set(TARGETS)
    # The recommendation is the fastest within budget: check it against the table itself.
    budget = report["main_metric"]["max_quality_drop"]
    for t in TARGETS:
        ok = [v for v in report["variants"] if v["quality_drop"] is not None and v["quality_drop"] <= budget + 1e-9
              and v["fit"].get(t, {"fits": True})["fits"] and not any(f["verified"] is False for f in v["files"])]
        fastest = min(ok, key=lambda v: latency_ms(v["latency"][t]))["name"] if ok else None
        assert report["recommendation"][t] == fastest
    md = (reference / "report.md").read_text()
    for v in report["variants"]:  # a file that failed its check is flagged in the report
        for f in v["files"]:
            assert (f"{f['path']} FAILED verification" in md) == (f["verified"] is False)
    assert "## Recommendation" in md and "host latency (measured)" in md and "raspberry-pi-4 latency (estimated)" in md
    assert (reference / "plots" / "training_curves.png").exists()
    assert verify_run(RunDir(reference)) == []


def test_rerun_skips_finished_stages(reference, tmp_path):
    run = _copy(reference, tmp_path)
    n = len(read_events(run.events))
    p = _run(run.path)
    assert p.returncode == 0, p.stderr[-2000:]
    events = read_events(run.events)[n:]
    assert [e["stage"] for e in events if e["kind"] == "skip"] == ["train", "compress", "export", "eval", "report"]
    assert not [e for e in events if e["kind"] == "start" and e["stage"] != "session"]


@pytest.mark.slow
def test_changed_eval_setting_reruns_eval_only(reference, tmp_path):
    run = _copy(reference, tmp_path)
    n = len(read_events(run.events))
    p = _run(run.path, "--set", "eval.targets=[\"host\", \"raspberry-pi-4\"]")
    assert p.returncode == 0, p.stderr[-2000:]
    events = read_events(run.events)[n:]
    # eval reran, so the report stage (which alone writes the report) runs after it
    assert [e["stage"] for e in events if e["kind"] == "skip"] == ["train", "compress", "export"]
    assert any(e["stage"] == "report" and e["kind"] == "done" for e in events)
    report = json.loads(run.report_json.read_text())
    assert set(report["recommendation"]) == {"host", "raspberry-pi-4"}


def test_verify_catches_a_modified_artifact(reference, tmp_path):
    run = _copy(reference, tmp_path)
    ok = subprocess.run([sys.executable, "-m", "toolkit", "report", str(run.path), "--verify"],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    onnx = run.variant("int8") / "model.onnx"
    onnx.write_bytes(onnx.read_bytes()[:-1] + b"\0")
    bad = subprocess.run([sys.executable, "-m", "toolkit", "report", str(run.path), "--verify"],
                         capture_output=True, text=True)
    assert bad.returncode == 3
    assert "variants/int8/model.onnx changed" in bad.stderr


def test_another_recipe_is_refused_unless_force(reference, tmp_path):
    run = _copy(reference, tmp_path)
    p = _run(run.path, "--set", "name=other")
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [
        f"error: {run.path}: holds run 'demo' (image-classification), not 'other' (image-classification); "
        f"use another --out or --force to start over"]


def _kill_during_training(out: Path, at_step: int, sig: int = signal.SIGKILL) -> subprocess.Popen:
    proc = subprocess.Popen(_cmd(out), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    try:
        while time.time() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"the session ended before training step {at_step}: {proc.stderr.read().decode()[-800:]}")
            steps = [e.get("step", 0) for e in read_events(out / "events.jsonl")
                     if e["stage"] == "train" and e["kind"] == "progress"]
            if steps and max(steps) >= at_step:
                proc.send_signal(sig)
                proc.wait(timeout=120)
                return proc
            time.sleep(0.02)
        pytest.fail("timed out waiting for the training step")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.slow
def test_sigkill_during_training_continues_to_the_same_report(reference, tmp_path):
    out = tmp_path / "run"
    _kill_during_training(out, at_step=10)  # after the checkpoints at steps 4 and 8
    assert (out / "run.lock").exists()  # a dead session's lock: stale, not live
    n = len(read_events(out / "events.jsonl"))
    p = _run(out)
    assert p.returncode == 0, p.stderr[-3000:]
    logs = [e["message"] for e in read_events(out / "events.jsonl")[n:] if e["kind"] == "log"]
    assert any(m.startswith("continuing the interrupted training from step-0000") for m in logs), logs
    assert any(m.startswith("resumed from step-0000") for m in logs), logs
    assert _metrics(out) == _metrics(reference)


@pytest.mark.slow
def test_ctrl_c_checkpoints_exits_130_and_rerun_continues(tmp_path):
    out = tmp_path / "run"
    proc = _kill_during_training(out, at_step=6, sig=signal.SIGINT)
    err = proc.stderr.read().decode()
    assert proc.returncode == 130, err[-2000:]
    line = err.strip().splitlines()[-1]
    assert line.startswith("interrupted: stopped by SIGINT at step ") and line.endswith(
        "saved; run the same command again to continue"), line
    assert not (out / "run.lock").exists()  # a clean stop releases the lock
    m = load_manifest(RunDir(out))
    assert m["stages"]["train"]["status"] == "interrupted"
    stopped = [e for e in read_events(out / "events.jsonl") if e["kind"] == "interrupted"][-1]
    p = _run(out)
    assert p.returncode == 0, p.stderr[-2000:]
    logs = [e["message"] for e in read_events(out / "events.jsonl") if e["kind"] == "log"]
    assert any(m.startswith(f"resumed from step-{stopped['step']:06d} (step {stopped['step']},") for m in logs), logs


@pytest.mark.slow
def test_stage_failing_midway_keeps_earlier_artifacts(reference, tmp_path, monkeypatch):
    from toolkit.compress import quantize
    from toolkit.steps import HANDLERS, schemes

    run = _copy(reference, tmp_path)
    calls = []

    def broken(step, parent, ctx):
        calls.append(step.name)
        raise RuntimeError("injected failure in the quantize step")

    for scheme in schemes(quantize.QuantizeConfig):
        monkeypatch.setitem(HANDLERS, (quantize.QuantizeConfig, scheme), broken)
    # A changed INT8 setting: compression runs again; its first two steps are unchanged, the third fails.
    changed = _recipe()
    changed.compress[2]["calibration_samples"] = 64
    with pytest.raises(RuntimeError, match="injected failure"):
        run_session(changed, run)
    assert calls == ["int8"]
    m = json.loads(run.manifest.read_text())  # still valid JSON
    assert m["stages"]["compress"]["status"] == "failed"
    assert m["stages"]["train"]["status"] == "done"
    assert "export" not in m["stages"]  # later stages are no longer "done"
    assert verify_run(run) == []  # every recorded artifact is still exactly on disk
    for path in ("train/final", "variants/base/model", "variants/student/model", "variants/pruned/model"):
        assert (run.path / path).is_dir()
    monkeypatch.undo()
    n = len(read_events(run.events))
    run_session(changed, run)
    events = read_events(run.events)[n:]
    # train is unchanged; every stage after the failed one runs again, the report stage included
    assert [e["stage"] for e in events if e["kind"] == "skip" and "step" not in e] == ["train"]
    assert [e["step"] for e in events if e["kind"] == "skip" and "step" in e] == ["student", "pruned"]
    assert load_manifest(run)["stages"]["report"]["status"] == "done"


def test_disk_full_while_writing_records_nothing_half_written(reference, tmp_path, monkeypatch):
    run = _copy(reference, tmp_path)
    real_fdopen = os.fdopen
    writes = []

    class FullDisk:
        def __init__(self, fh):
            self.fh = fh

        def write(self, data):
            self.fh.write(data[: len(data) // 2])
            raise OSError(errno.ENOSPC, "No space left on device")

        def __getattr__(self, name):
            return getattr(self.fh, name)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.fh.close()

    def fdopen(fd, mode="r", *a, **kw):
        target = os.readlink(f"/proc/self/fd/{fd}")
        fh = real_fdopen(fd, mode, *a, **kw)
        if ".eval.json." in target:
            writes.append(target)
            if len(writes) == 2:  # the second variant's eval.json hits the full disk
                return FullDisk(fh)
        return fh

    monkeypatch.setattr("toolkit.rundir.os.fdopen", fdopen)
    with pytest.raises(UserError, match="disk full while the eval stage was writing"):
        run_session(_recipe("eval.limit=20"), run)
    monkeypatch.undo()
    assert load_manifest(run)["stages"]["eval"]["status"] == "failed"
    assert not list(run.variants.rglob(".eval.json.*"))  # no temporary file left
    assert verify_run(run) == []  # what is recorded is whole: the first variant's new file, the others' old ones
    second = json.loads((run.variant(VARIANTS[1]) / "eval.json").read_text())
    assert second["examples"] != 20  # still the complete earlier result, not a torn new one
    run_session(_recipe("eval.limit=20"), run)
    assert json.loads((run.variant(VARIANTS[1]) / "eval.json").read_text())["examples"] == 20
