"""``python -m toolkit export RECIPE``: exit 0 with a table of verified files, 3 on a failed verification, 2 for bad
input (one line, naming what to fix)."""
from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit.__main__ import main

pytest.importorskip("executorch.exir", reason="ExecuTorch is an optional extra: pip install 'edge-toolkit[executorch]'")
REPO = Path(__file__).resolve().parents[2]
HELPER = Path(__file__).resolve().parents[1] / "fixtures" / "export" / "stage_runs.py"


def load_helper():
    if "stage_runs" not in sys.modules:
        spec = importlib.util.spec_from_file_location("stage_runs", HELPER)
        module = importlib.util.module_from_spec(spec)
        sys.modules["stage_runs"] = module
        spec.loader.exec_module(module)
    return sys.modules["stage_runs"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return load_helper().digits_run(tmp_path_factory.getbasetemp() / "stage-runs")


@pytest.fixture
def run_copy(digits, tmp_path):
    recipe, run, _ = digits
    return load_helper().copy_run(run, tmp_path / "run")


def test_export_command_writes_and_verifies(run_copy):
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "toolkit", "export", str(run_copy.recipe), "--out", str(run_copy.path),
                           "--format", "onnx", "--format", "ort", "--quiet"], capture_output=True, text=True,
                          cwd=REPO, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "variants/base/model.onnx" in proc.stdout and "variants/int8/model.ort" in proc.stdout
    assert "FAILED" not in proc.stdout and proc.stdout.count("yes") == 4  # base and int8, onnx and ort
    assert "agreement" in proc.stdout  # the INT8 variant's check is lossy


def test_a_tampered_export_exits_3(run_copy, monkeypatch, capsys):
    import onnx
    from onnx import numpy_helper

    import toolkit.export.onnx as onnx_mod

    real = onnx_mod.export_onnx

    def tampered(*args, **kwargs):
        result = real(*args, **kwargs)
        model = onnx.load(str(result.path))
        w = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))  # the largest weight
        w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 1.5, w.name))
        onnx.save(model, str(result.path))
        return result

    monkeypatch.setattr(onnx_mod, "export_onnx", tampered)
    code = main(["export", str(run_copy.recipe), "--out", str(run_copy.path), "--format", "onnx", "--quiet"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 3
    # the warning as it happened, then one error line naming the file, the measured value and the bound
    assert err[-1].startswith("error: export verification failed: model.onnx (onnx): max |diff|")
    assert "> atol 0.0001 over 16 samples" in err[-1]


@pytest.mark.parametrize("args, message", [
    (["--format", "onxx"], "--format onxx: unknown format; did you mean 'onnx'?"),
    (["--set", "export.atol=-1"], "export.atol"),
])
def test_bad_arguments_exit_2(run_copy, capsys, args, message):
    code = main(["export", str(run_copy.recipe), "--out", str(run_copy.path), *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and message in err and "\n" not in err


def test_no_run_directory_exits_2(run_copy, tmp_path, capsys):
    code = main(["export", str(run_copy.recipe), "--out", str(tmp_path / "nowhere")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "no such run directory; train first" in err


def test_missing_extra_exits_2_naming_it(run_copy, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "executorch.exir", None)
    code = main(["export", str(run_copy.recipe), "--out", str(run_copy.path), "--format", "pte", "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and "pip install 'edge-toolkit[executorch]'" in err


def test_help_lists_export():
    proc = subprocess.run([sys.executable, "-m", "toolkit", "--help"], capture_output=True, text=True, cwd=REPO,
                          timeout=120)
    assert proc.returncode == 0 and "export" in proc.stdout
