"""`python -m toolkit bench` end to end, in a child process: JSON with DESIGN.md's keys, and bad inputs → exit 2."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures" / "eval"


def bench(*args: str, timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOOLKIT_DEBUG": "0"}
    return subprocess.run([sys.executable, "-m", "toolkit", "bench", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    import torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Embedding(64, 16), torch.nn.Linear(16, 4)).eval()
    path = tmp_path_factory.mktemp("cli") / "tiny.onnx"
    torch.onnx.export(model, (torch.ones(1, 8, dtype=torch.long),), str(path), dynamo=False,
                      input_names=["input_ids"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "sequence"}})
    return path


def test_json_has_the_design_latency_fields(tiny_onnx):
    p = bench(tiny_onnx, "--threads", 1, "--batch", 2, "--seq-len", 16, "--runs", 40, "--warmup", 3, "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "threads", "runtime", "source"} <= set(d)
    assert {"min_ms", "max_ms", "std_ms", "first_inference_ms", "load_ms", "peak_rss_mb", "model_size_bytes",
            "runs", "warmup", "batch", "seq_len", "inputs", "conventions"} <= set(d)
    assert (d["runtime"], d["threads"], d["batch"], d["seq_len"]) == ("onnxruntime", 1, 2, 16)
    assert (d["runs"], d["warmup"], d["inputs"], d["source"]) == (40, 3, "synthetic", "measured")
    assert 0 < d["p50_ms"] <= d["p90_ms"] <= d["p99_ms"] < 1000
    assert d["throughput"] == pytest.approx(2 * 1000 / d["mean_ms"])
    assert d["model_size_bytes"] == tiny_onnx.stat().st_size
    assert d["details"]["intra_op_threads"] == 1
    assert "samples_ns" not in d


def test_target_host_seconds_and_samples(tiny_onnx):
    p = bench(tiny_onnx, "--target", "host", "--seconds", "0.1", "--runs", 5, "--json", "--samples")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["target"] == "host" and d["runtime"] == "onnxruntime" and d["threads"] >= 1
    assert d["duration_s"] >= 0.09 and len(d["samples_ns"]) == d["runs"] >= 5


def test_table_output(tiny_onnx):
    p = bench(tiny_onnx, "--runs", 10, "--threads", 1)
    assert p.returncode == 0, p.stderr
    assert "p50 / p90 / p99" in p.stdout and "onnxruntime, 1 thread" in p.stdout and p.stderr == ""


@pytest.mark.parametrize("args, message", [
    ([FIXTURES / "bench_not_onnx.onnx"], "bench_not_onnx.onnx: not an ONNX model (.*); export one with"),
    ([FIXTURES / "bench_garbage.pte"], "bench_garbage.pte: not an ExecuTorch program"),
    (["no/such/model.onnx"], "no/such/model.onnx: no such file"),
    (["{onnx}", "--threads", "0"], "--threads must be at least 1"),
    (["{onnx}", "--batch", "0"], "--batch must be at least 1"),
    (["{onnx}", "--target", "nowhere-9"], "unknown target 'nowhere-9'; known: host"),
    (["{onnx}", "--runtime", "onnxruntme"], "unknown runtime 'onnxruntme'; did you mean 'onnxruntime'"),
    (["{onnx}", "--affinity", "a-b"], "--affinity a-b: give CPU ids"),
], ids=["not-onnx", "not-pte", "missing", "threads-0", "batch-0", "target", "runtime", "affinity"])
def test_bad_input_exits_2_with_one_line(tiny_onnx, args, message):
    p = bench(*[tiny_onnx if a == "{onnx}" else a for a in args])
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in p.stderr and p.stdout == ""
