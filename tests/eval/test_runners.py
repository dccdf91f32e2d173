"""Runners: which one a profile gets, the local runner (a child process with the profile's threads and affinity),
and the self-contained remote benchmark script run here as a device would run it."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit.errors import UserError
from toolkit.eval.runners import runner_for
from toolkit.eval.runners.local import LocalRunner
from toolkit.eval.runners.ssh import SCRIPT, SshRunner
from toolkit.targets import detect_host, load_target

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"


def tiny_onnx(path: Path) -> Path:
    """input_ids (batch, seq) -> Gather(100 x 16) -> ReduceMean over seq -> MatMul -> (batch, 3)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((100, 16)).astype(np.float32), "emb"),
             numpy_helper.from_array(rng.standard_normal((16, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis")]
    nodes = [helper.make_node("Gather", ["emb", "input_ids"], ["e"]),
             helper.make_node("ReduceMean", ["e", "axis"], ["m"], keepdims=0),
             helper.make_node("MatMul", ["m", "w"], ["logits"])]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 3])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), path)
    return path


def test_runner_for_each_reach_kind():
    assert isinstance(runner_for(detect_host()), LocalRunner)
    assert runner_for(load_target("raspberry-pi-4")) is None  # reach.kind = "none": estimated instead
    assert isinstance(runner_for(load_target(str(FIXTURES / "targets" / "runner_closed_port.toml"))), SshRunner)


def test_local_runner_measures_with_the_profile_threads(tmp_path):
    host = dataclasses.replace(detect_host(), threads=1)
    r = runner_for(host).measure(tiny_onnx(tmp_path / "m.onnx"), batch=2, seq_len=16, warmup=3, runs=30)
    assert r["source"] == "measured" and r["where"] == "local" and r["target"] == "host"
    assert r["runtime"] == "onnxruntime" and r["threads"] == 1 and r["runs"] == 30
    assert r["input_shapes"] == {"input_ids": [2, 16]} and r["details"]["intra_op_threads"] == 1
    assert 0 < r["p50_ms"] <= r["p99_ms"] and r["throughput"] == pytest.approx(2000 / r["mean_ms"])
    assert r["peak_rss_mb"] > 10  # the child's own process


@pytest.mark.skipif(not hasattr(os, "sched_getaffinity"), reason="CPU affinity is Linux-only")
def test_local_runner_pins_to_the_given_cpus(tmp_path):
    cpu = sorted(os.sched_getaffinity(0))[0]
    r = LocalRunner(detect_host(), affinity=[cpu]).measure(tiny_onnx(tmp_path / "m.onnx"), warmup=1, runs=5,
                                                           threads=1)
    assert r["affinity"] == [cpu]


def test_local_runner_real_inputs(tmp_path):
    ids = np.random.default_rng(0).integers(0, 100, size=(4, 7))
    r = LocalRunner(detect_host()).measure(tiny_onnx(tmp_path / "m.onnx"), batch=2, warmup=1, runs=4, threads=1,
                                           inputs={"input_ids": ids})
    assert r["inputs"] == "real" and r["input_shapes"] == {"input_ids": [2, 7]}


def test_local_runner_reports_a_bad_model_in_one_line(tmp_path):
    bad = tmp_path / "broken.onnx"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(UserError, match="measuring on this machine failed") as err:
        LocalRunner(detect_host()).measure(bad, runs=2, warmup=1)
    assert "\n" not in str(err.value)
    with pytest.raises(UserError, match="no such model file"):
        LocalRunner(detect_host()).measure(tmp_path / "absent.onnx")


def _remote_bench(*args: str) -> tuple[int, dict]:
    # as the device runs it: a plain interpreter, the script alone, no toolkit on its path
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-I", str(SCRIPT), *args], capture_output=True, text=True, env=env,
                          cwd=Path(SCRIPT.anchor), timeout=120)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_remote_bench_script_is_self_contained():
    # the script must not import the toolkit: a device has only numpy and the runtime
    source = SCRIPT.read_text()
    assert "import toolkit" not in source and "from toolkit" not in source


def test_remote_bench_measures_with_synthetic_inputs(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    code, r = _remote_bench(str(model), "--threads", "1", "--batch", "3", "--seq-len", "5", "--warmup", "2",
                            "--runs", "20", "--vocab-size", "100")
    assert code == 0, r
    assert r["source"] == "measured" and r["runs"] == 20 and r["input_shapes"] == {"input_ids": [3, 5]}
    assert r["batch"] == 3 and r["threads"] == 1 and r["runtime"] == "onnxruntime"
    assert r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] <= r["max_ms"]
    assert r["model_size_bytes"] == model.stat().st_size


def test_remote_bench_errors_are_json(tmp_path):
    code, r = _remote_bench(str(tmp_path / "absent.onnx"))
    assert code == 2 and "no such file" in r["error"]
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"garbage")
    code, r = _remote_bench(str(bad), "--runs", "2")
    assert code == 2 and "cannot load" in r["error"]


def test_remote_bench_cuts_real_inputs_into_batches(tmp_path):
    model = tiny_onnx(tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", input_ids=np.random.default_rng(0).integers(0, 100, size=(7, 9)))
    code, r = _remote_bench(str(model), "--threads", "1", "--batch", "3", "--runs", "6", "--warmup", "1",
                            "--inputs", str(tmp_path / "in.npz"))
    assert code == 0, r
    assert r["inputs"] == "real" and r["input_shapes"] == {"input_ids": [3, 9]} and r["batch"] == 3
    code, r = _remote_bench(str(model), "--batch", "8", "--inputs", str(tmp_path / "in.npz"))
    assert code == 2 and "fewer than one batch of 8" in r["error"]


def test_remote_bench_runs_an_executorch_program(tmp_path):
    pytest.importorskip("executorch.exir", reason="ExecuTorch is an optional extra")
    import torch

    from toolkit.export.executorch import export_pte

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 5)).eval()
    pte = export_pte(net, tmp_path, "image-classification",
                     example_inputs={"pixel_values": torch.zeros(2, 3, 4, 4)}).path
    np.savez(tmp_path / "in.npz", pixel_values=np.zeros((4, 3, 4, 4), np.float32))
    code, r = _remote_bench(str(pte), "--threads", "1", "--batch", "2", "--runs", "5", "--warmup", "1",
                            "--inputs", str(tmp_path / "in.npz"))
    assert code == 0, r
    assert r["runtime"] == "executorch" and r["runtime_version"].startswith("executorch ") and r["runs"] == 5
    assert r["inputs"] == "real" and r["input_shapes"] == {"input_0": [2, 3, 4, 4]} and r["batch"] == 2
