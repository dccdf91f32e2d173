"""Session semantics with fake stage functions (fast): order, skip by hash, rerun with everything after a change,
no-work stages, failure midway, a full disk, Ctrl-C, the lock, another recipe's run directory, --force.

The end-to-end tests with the real stages are in tests/test_session_e2e.py."""
from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from toolkit import session
from toolkit.config import DataConfig, EvalConfig, Recipe, TrainConfig
from toolkit.errors import UserError
from toolkit.events import read_events
from toolkit.rundir import RunDir, atomic_dir, atomic_write_bytes, load_manifest, record_artifact
from toolkit.session import Stage, run_session

FIXTURES = Path(__file__).parent / "fixtures" / "session"


def _recipe(**kw) -> Recipe:
    base = dict(name="fake", task="image-classification", data=DataConfig(train="builtin:digits"),
                compress=[{"method": "prune", "name": "small"}, {"method": "quantize", "name": "int8"}])
    base.update(kw)
    return Recipe(**base)


class Fakes:
    """Stage functions that write and record real files, count their calls, and fail on request."""

    def __init__(self) -> None:
        self.calls: list[str] = []
        self.fail: dict[str, BaseException] = {}

    def _enter(self, name: str) -> None:
        self.calls.append(name)

    def train(self, recipe, run, emit):
        self._enter("train")
        emit("start", total=3)
        for step in (1, 2, 3):
            emit("progress", step=step, total=3)
        with atomic_dir(run.final) as tmp:
            (tmp / "w.bin").write_text(f"lr={recipe.train.lr}")
        record_artifact(run, "train/final", "model", run.final, "train")
        base = run.variant("base")
        atomic_write_bytes(base / "variant.json", json.dumps({"name": "base", "parent": None}).encode())
        record_artifact(run, "base", "variant", base / "variant.json", "train")

    def compress(self, recipe, run, emit):
        self._enter("compress")
        for i, step in enumerate(recipe.compress):
            if i == 1 and "compress" in self.fail:
                raise self.fail.pop("compress")
            out = run.variant(step["name"]) / "variant.json"
            atomic_write_bytes(out, json.dumps({"name": step["name"], "parent": "base"}).encode())
            record_artifact(run, step["name"], "variant", out, "compress", parent="base")

    def export(self, recipe, run, emit):
        self._enter("export")
        if "export" in self.fail:
            raise self.fail.pop("export")
        for folder in sorted(run.variants.iterdir()):
            atomic_write_bytes(folder / "model.onnx", b"onnx:" + folder.name.encode() * 1000)
            record_artifact(run, f"{folder.name}/onnx", "file", folder / "model.onnx", "export")

    def eval(self, recipe, run, emit):
        self._enter("eval")
        for folder in sorted(run.variants.iterdir()):
            atomic_write_bytes(folder / "eval.json", json.dumps({"limit": recipe.eval.limit}).encode())

    def report(self, recipe, run, emit):
        self._enter("report")
        atomic_write_bytes(run.report_json, json.dumps({"variants": sorted(os.listdir(run.variants))}).encode())


@pytest.fixture
def fakes(monkeypatch) -> Fakes:
    f = Fakes()
    real = {s.name: s for s in session.STAGES}
    table = [Stage(name, getattr(f, name), real[name].sections, no_work=real[name].no_work,
                   files=real[name].files, resets=real[name].resets) for name in real]
    monkeypatch.setattr(session, "STAGES", table)
    return f


def _skips(run: RunDir, since: int = 0) -> list[str]:
    return [e["stage"] for e in read_events(run.events)[since:] if e["kind"] == "skip"]


def test_fresh_run_then_rerun_skips_everything(tmp_path, fakes):
    run = RunDir(tmp_path / "run")
    seen = []
    assert run_session(_recipe(), run, [seen.append]) == run.report_json
    assert fakes.calls == ["train", "compress", "export", "eval", "report"]
    m = load_manifest(run)
    assert {k: v["status"] for k, v in m["stages"].items()} == dict.fromkeys(fakes.calls, "done")
    assert m["run"] == "fake" and (run.path / "recipe.toml").exists()
    assert seen[0]["stage"] == "session" and seen[0]["kind"] == "start"
    assert seen[-1]["stage"] == "session" and seen[-1]["kind"] == "done"
    assert not run.lock.exists()  # released
    n = len(read_events(run.events))
    fakes.calls.clear()
    run_session(_recipe(), run)
    assert fakes.calls == []
    assert _skips(run, n) == ["train", "compress", "export", "eval", "report"]


def test_changed_section_reruns_its_stage_and_everything_after(tmp_path, fakes):
    run = RunDir(tmp_path / "run")
    run_session(_recipe(), run)
    fakes.calls.clear()
    n = len(read_events(run.events))
    run_session(_recipe(eval=EvalConfig(limit=5)), run)  # like --set eval.limit=5
    assert fakes.calls == ["eval", "report"]
    assert _skips(run, n) == ["train", "compress", "export"]
    fakes.calls.clear()
    run_session(_recipe(eval=EvalConfig(limit=5), train=TrainConfig(lr=1e-2)), run)
    assert fakes.calls == ["train", "compress", "export", "eval", "report"]
    assert (run.final / "w.bin").read_text() == "lr=0.01"


def test_changed_input_artifact_reruns_later_stages(tmp_path, fakes):
    """Another command (e.g. `toolkit train`) rewrote an artifact: stages that consumed it run again."""
    run = RunDir(tmp_path / "run")
    run_session(_recipe(), run)
    (run.path / "variants" / "small" / "variant.json").write_text('{"name": "small", "edited": true}')
    record_artifact(run, "small", "variant", run.variant("small") / "variant.json", "compress")
    fakes.calls.clear()
    run_session(_recipe(), run)
    assert fakes.calls == ["export", "eval", "report"]


def test_no_compress_steps_skips_and_drops_old_variants(tmp_path, fakes):
    run = RunDir(tmp_path / "run")
    run_session(_recipe(), run)
    assert run.variant("int8").is_dir()
    fakes.calls.clear()
    n = len(read_events(run.events))
    run_session(_recipe(compress=[]), run)
    assert "compress" not in fakes.calls and fakes.calls == ["export", "eval", "report"]
    skip = [e for e in read_events(run.events)[n:] if e["kind"] == "skip" and e["stage"] == "compress"]
    assert skip and "no [[compress]] steps" in skip[0]["reason"]
    assert sorted(os.listdir(run.variants)) == ["base"]  # the removed steps' variants are gone
    assert json.loads(run.report_json.read_text()) == {"variants": ["base"]}
    assert not [a for a in load_manifest(run)["artifacts"] if a["stage"] == "compress"]


def test_failure_midway_keeps_earlier_artifacts_and_retries_from_that_stage(tmp_path, fakes):
    run = RunDir(tmp_path / "run")
    fakes.fail["compress"] = RuntimeError("boom in step 2")
    with pytest.raises(RuntimeError, match="boom"):
        run_session(_recipe(), run)
    m = json.loads(run.manifest.read_text())  # valid JSON
    assert m["stages"]["train"]["status"] == "done"
    assert m["stages"]["compress"]["status"] == "failed" and "boom" in m["stages"]["compress"]["error"]
    names = {a["name"] for a in m["artifacts"]}
    assert {"train/final", "base", "small"} <= names and "int8" not in names
    assert (run.final / "w.bin").exists()
    errors = [e for e in read_events(run.events) if e["kind"] == "error"]
    assert errors[-1]["stage"] == "compress" and "boom" in errors[-1]["message"]
    assert not run.lock.exists()
    fakes.calls.clear()
    run_session(_recipe(), run)
    assert fakes.calls == ["compress", "export", "eval", "report"]
    assert load_manifest(run)["stages"]["compress"]["status"] == "done"


class _FullDisk:
    """A file object whose write stores half the data and then fails with ENOSPC, like a full disk."""

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


def test_disk_full_records_no_half_written_artifact(tmp_path, fakes, monkeypatch):
    run = RunDir(tmp_path / "run")
    real_fdopen = os.fdopen

    def fdopen(fd, mode="r", *a, **kw):
        target = os.readlink(f"/proc/self/fd/{fd}")  # the temporary file atomic_write_bytes made
        fh = real_fdopen(fd, mode, *a, **kw)
        # Only export's model.onnx writes hit the full disk; the manifest and events still fit.
        return _FullDisk(fh) if fakes.calls and fakes.calls[-1] == "export" and ".model.onnx." in target else fh

    monkeypatch.setattr("toolkit.rundir.os.fdopen", fdopen)
    with pytest.raises(UserError, match="disk full while the export stage was writing"):
        run_session(_recipe(), run)
    monkeypatch.undo()
    m = load_manifest(run)
    assert m["stages"]["export"]["status"] == "failed"
    assert not [a for a in m["artifacts"] if a["stage"] == "export"]  # nothing half-written recorded
    leftovers = [p.name for p in run.variants.rglob("*") if "model.onnx" in p.name]
    assert leftovers == []  # no partial file, no temporary file
    assert {a["name"] for a in m["artifacts"]} >= {"train/final", "base", "small", "int8"}


def test_disk_full_exit_code_is_2(tmp_path, fakes, monkeypatch, capsys):
    from toolkit.__main__ import main

    fakes.fail["export"] = OSError(errno.ENOSPC, "No space left on device", "variants/base/model.onnx")
    code = main(["run", "--out", str(tmp_path / "r"), "--quiet", "--set", "name=fake"])
    err = capsys.readouterr().err
    assert code == 2 and "disk full" in err and "variants/base/model.onnx" in err and "Traceback" not in err


def test_ctrl_c_exits_130_and_rerun_continues(tmp_path, fakes):
    from toolkit.__main__ import main

    out = tmp_path / "r"
    fakes.fail["export"] = KeyboardInterrupt()
    assert main(["run", "--out", str(out), "--quiet", "--set", "name=fake"]) == 130
    run = RunDir(out)
    assert load_manifest(run)["stages"]["export"]["status"] == "interrupted"
    assert [e for e in read_events(run.events) if e["kind"] == "interrupted"][-1]["stage"] == "export"
    fakes.calls.clear()
    assert main(["run", "--out", str(out), "--quiet", "--set", "name=fake"]) == 0
    assert fakes.calls == ["export", "eval", "report"]


def test_live_lock_refuses_a_second_session(tmp_path, fakes):
    run = RunDir(tmp_path / "run")
    run.path.mkdir()
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        run.lock.write_text(json.dumps({"pid": other.pid, "host": socket.gethostname(), "command": "run",
                                        "started": time.time(), "heartbeat": time.time()}))
        with pytest.raises(UserError, match=f"a live run holds it \\(pid {other.pid}"):
            run_session(_recipe(), run)
        assert fakes.calls == [] and not run.manifest.exists()
    finally:
        other.kill()
        other.wait()


def test_stale_lock_is_taken_over(tmp_path, fakes):
    run = RunDir(tmp_path / "run")
    shutil.copytree(FIXTURES / "stale_lock", run.path)
    run_session(_recipe(), run)
    assert fakes.calls[0] == "train" and not run.lock.exists()


def test_another_recipes_run_dir_is_refused_unless_force(tmp_path, fakes):
    run = RunDir(tmp_path / "run")
    shutil.copytree(FIXTURES / "other_run", run.path)
    (run.path / "keep.txt").write_text("theirs")
    with pytest.raises(UserError, match="holds run 'someone-else' \\(seq2seq\\), not 'fake'.*--force"):
        run_session(_recipe(), run)
    assert (run.path / "keep.txt").exists() and fakes.calls == []
    run_session(_recipe(), run, force=True)
    assert not (run.path / "keep.txt").exists() and load_manifest(run)["run"] == "fake"


def test_unreadable_manifest_is_refused(tmp_path, fakes):
    run = RunDir(tmp_path / "run")
    shutil.copytree(FIXTURES / "bad_manifest", run.path)
    with pytest.raises(UserError, match="unreadable manifest; use --force"):
        run_session(_recipe(), run)


def test_force_starts_over(tmp_path, fakes):
    run = RunDir(tmp_path / "run")
    run_session(_recipe(), run)
    fakes.calls.clear()
    run_session(_recipe(), run, force=True)
    assert fakes.calls == ["train", "compress", "export", "eval", "report"]
    assert _skips(run) == []  # events.jsonl started over too


def test_edited_data_file_retrains(tmp_path, fakes):
    data = tmp_path / "data.csv"
    shutil.copy(FIXTURES / "data.csv", data)
    recipe = _recipe(data=DataConfig(train=str(data)))
    run = RunDir(tmp_path / "run")
    run_session(recipe, run)
    fakes.calls.clear()
    run_session(recipe, run)
    assert fakes.calls == []
    data.write_text(data.read_text() + "great movie,1\n")
    run_session(recipe, run)
    assert fakes.calls == ["train", "compress", "export", "eval", "report"]


def test_deleted_output_reruns_its_stage(tmp_path, fakes):
    run = RunDir(tmp_path / "run")
    run_session(_recipe(), run)
    shutil.rmtree(run.variant("int8"))
    fakes.calls.clear()
    run_session(_recipe(), run)
    assert fakes.calls == ["compress", "export", "eval", "report"]


# ---- the real train adapter: resume or start over ----------------------------------------------------------

def test_train_adapter_resumes_only_with_unchanged_settings(tmp_path, monkeypatch):
    from toolkit.train import stage as train_stage
    from toolkit.events import null_emitter
    from toolkit.rundir import init_manifest, update_manifest

    calls = []
    monkeypatch.setattr(train_stage, "run_train", lambda recipe, run, emit, resume=False: calls.append(resume))
    recipe = _recipe()
    run = RunDir(tmp_path / "run")
    init_manifest(run, recipe.name, recipe.task, recipe.seed)
    (run.checkpoints / "step-000003").mkdir(parents=True)
    update_manifest(run, train_config_hash=train_stage.train_config_hash(recipe))
    session._train(recipe, run, null_emitter("train"))
    assert calls == [True] and run.checkpoints.exists()
    changed = _recipe(train=TrainConfig(lr=0.05))
    session._train(changed, run, null_emitter("train"))
    assert calls == [True, False] and not run.checkpoints.exists()  # settings changed: start over


def test_console_shows_stage_states(fakes, tmp_path):
    import io

    from rich.console import Console

    from toolkit.console import ConsoleDisplay

    buf = io.StringIO()
    console = Console(file=buf, force_terminal=True, width=100, color_system=None)
    display = ConsoleDisplay(stages=[s.name for s in session.STAGES], console=console)
    with display:
        run_session(_recipe(), RunDir(tmp_path / "run"), [display])
        assert display.states == dict.fromkeys(["train", "compress", "export", "eval", "report"], "done")
    out = buf.getvalue()
    assert "✓" in out and "train" in out and "report" in out
    display2 = ConsoleDisplay(stages=[s.name for s in session.STAGES], console=Console(file=io.StringIO()))
    run_session(_recipe(), RunDir(tmp_path / "run"), [display2])
    assert set(display2.states.values()) == {"skipped"}


def test_renamed_step_drops_the_old_variant_only(tmp_path, fakes):
    run = RunDir(tmp_path / "run")
    run_session(_recipe(), run)
    (run.variant("small") / "checkpoints").mkdir()  # what a training step keeps to resume
    renamed = _recipe(compress=[{"method": "prune", "name": "small"}, {"method": "quantize", "name": "int8b"}])
    run_session(renamed, run)
    assert sorted(os.listdir(run.variants)) == ["base", "int8b", "small"]
    assert (run.variant("small") / "checkpoints").is_dir()  # the kept step's folder is the stage's to reuse
    names = {a["name"] for a in load_manifest(run)["artifacts"] if a["stage"] == "compress"}
    assert names == {"small", "int8b"}
