"""Bad input gets one line, exit 2 (3 where a check failed), and loses nothing (issue 14): each case has a fixture
file in tests/fixtures/errors/ and runs the command line as a user would."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

FIX = Path(__file__).parent / "fixtures" / "errors"


def toolkit(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", *args], capture_output=True, text=True, timeout=timeout)


def one_line(p: subprocess.CompletedProcess, code: int = 2) -> str:
    assert p.returncode == code, (p.returncode, p.stderr[-2000:])
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in p.stderr, p.stderr
    return lines[0]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished `toolkit train` run of the tiny digits recipe."""
    out = tmp_path_factory.mktemp("trained") / "run"
    p = toolkit("train", str(FIX / "digits.toml"), "--out", str(out), "--quiet")
    assert p.returncode == 0, p.stderr
    return out


def test_out_naming_a_file(tmp_path):
    afile = tmp_path / "notes.txt"
    afile.write_text("mine\n")
    line = one_line(toolkit("train", str(FIX / "digits.toml"), "--out", str(afile), "--quiet"))
    assert str(afile) in line and "is a file" in line
    assert afile.read_text() == "mine\n"  # untouched


def test_a_run_directory_that_cannot_be_written(tmp_path, monkeypatch, capsys):
    """The system refuses the write (a read-only folder; root ignores chmod, so the refusal is injected)."""
    import errno

    from toolkit import __main__ as cli

    real = os.open

    def refuse(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path / "ro")):
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", refuse)
    monkeypatch.setattr("tempfile._os.open", refuse, raising=False)
    code = cli.main(["train", str(FIX / "digits.toml"), "--out", str(tmp_path / "ro"), "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert str(tmp_path / "ro") in err[0] and "permission denied" in err[0].lower()


def test_garbage_onnx_as_model_source(tmp_path):
    line = one_line(toolkit("run", str(FIX / "garbage_onnx.toml"), "--out", str(tmp_path / "run"), "--quiet"))
    assert "garbage.onnx" in line and "not an ONNX model" in line


def test_zero_epochs_is_an_error_not_one_silent_step(tmp_path):
    line = one_line(toolkit("train", str(FIX / "zero_epochs.toml"), "--out", str(tmp_path / "run"), "--quiet"))
    assert "zero_epochs.toml" in line and "train.epochs = 0" in line
    assert not (tmp_path / "run").exists()


def test_a_fifo_as_data_is_refused_not_waited_on(tmp_path):
    recipe = tmp_path / "fifo_data.toml"
    shutil.copy(FIX / "fifo_data.toml", recipe)
    os.mkfifo(tmp_path / "fifo.tsv")
    line = one_line(toolkit("train", str(recipe), "--out", str(tmp_path / "run"), "--quiet", timeout=120))
    assert "fifo.tsv" in line and "not a regular file" in line


def test_a_target_typo_is_found_before_any_work(tmp_path):
    t0 = time.perf_counter()
    line = one_line(toolkit("run", str(FIX / "target_typo.toml"), "--out", str(tmp_path / "run"), "--quiet"))
    assert "target_typo.toml" in line and "raspbery-pi-4" in line and "did you mean 'raspberry-pi-4'" in line
    assert not (tmp_path / "run").exists()  # nothing trained, nothing written
    assert time.perf_counter() - t0 < 60


def test_a_torn_manifest(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.copy(FIX / "torn_manifest.json", run / "manifest.json")
    line = one_line(toolkit("run", str(FIX / "digits.toml"), "--out", str(run), "--quiet"))
    assert "manifest.json" in line
    line = one_line(toolkit("report", str(run), "--verify"), code=3)
    assert "manifest.json" in line and "torn" in line


@pytest.mark.parametrize("flag", [[], ["--json"]])
def test_a_torn_report_is_a_failed_check(trained, tmp_path, flag):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    shutil.copy(FIX / "torn_report.json", run / "report.json")
    (run / "report.md").write_text("# Report\n")
    line = one_line(toolkit("report", str(run), *flag), code=3)
    assert "report.json" in line and "torn" in line


def test_a_rejected_argument_writes_no_event(trained, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    events = (run / "events.jsonl").read_text()
    line = one_line(toolkit("eval", str(FIX / "digits.toml"), "--out", str(run), "--variant", "int9", "--quiet"))
    assert "--variant int9" in line
    assert (run / "events.jsonl").read_text() == events


def test_files_the_run_writes_follow_the_umask(trained):
    """report.json, manifest.json, recipe.toml and variant.json are as readable as any file the user makes."""
    mask = os.umask(0)
    os.umask(mask)
    want = 0o666 & ~mask
    for rel in ("manifest.json", "recipe.toml", "variants/base/variant.json"):
        assert (trained / rel).stat().st_mode & 0o777 == want, rel


def test_int8_steps_and_estimates_write_nothing_outside_the_run_directory(tmp_path, monkeypatch):
    """ONNX Runtime's symbolic shape inference saves sym_shape_infer_temp.onnx and uuid-named *.data files into the
    working folder; the quantizers (through the transformer optimizer) and the latency estimator run it."""
    import importlib.util

    from toolkit.eval.estimate import estimate_latency
    from toolkit.targets import load_target

    spec = importlib.util.spec_from_file_location("kit", Path(__file__).parent / "compress" / "test_distill.py")
    kit = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kit)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    ctx, base = kit.make_base(tmp_path / "run", "language-modeling", train_steps=2)
    for scheme in ("int8-dynamic", "int8-static"):
        v = kit.run_step(ctx, base, {"method": "quantize", "scheme": scheme, "name": scheme, "calibration_samples": 8,
                                     "max_accuracy_drop": 1.0})
        estimate_latency(v.onnx, load_target("raspberry-pi-4"))
    assert sorted(p.name for p in cwd.iterdir()) == []
    assert Path.cwd() == cwd
