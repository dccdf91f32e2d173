"""Execution providers with the CPU build of onnxruntime: --provider cpu works and records the node assignment,
cuda/tensorrt are one exit-2 line naming the gpu extra, the TensorRT options (cache in the run directory, FP16 and
INT8 flags) are built right, and the eval stage, the local runner and the ssh runner pass the provider on."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from toolkit import onnxrt
from toolkit.errors import UserError

REPO = Path(__file__).resolve().parents[2]
EXTRA = "pip install 'edge-toolkit[gpu]'"


def _graph(path: Path, dtype=np.float32, qdq: bool = False) -> Path:
    """y = x @ W (+ a QuantizeLinear/DequantizeLinear pair on x when ``qdq``)."""
    elem = helper.np_dtype_to_tensor_dtype(np.dtype(dtype))
    w = numpy_helper.from_array(np.ones((4, 4), dtype=dtype), "W")
    nodes, src = [], "x"
    inits = [w]
    if qdq:
        inits += [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                  numpy_helper.from_array(np.array(0, np.int8), "z")]
        nodes += [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"]),
                  helper.make_node("DequantizeLinear", ["q", "s", "z"], ["dq"])]
        src = "dq"
    nodes.append(helper.make_node("MatMul", [src, "W"], ["y"]))
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", elem, ["batch", 4])],
                              [helper.make_tensor_value_info("y", elem, ["batch", 4])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _cli(*args: str, module: str = "toolkit", timeout: int = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOOLKIT_DEBUG": "0", "PYTHONPATH": str(REPO)}
    cmd = [sys.executable, "-m", module, *map(str, args)] if module else [sys.executable, *map(str, args)]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


# ---- the options --------------------------------------------------------------------------------------------

def test_provider_chains_and_tensorrt_options(tmp_path):
    assert onnxrt.provider_chain("cpu") == [("CPUExecutionProvider", {})]
    assert onnxrt.provider_chain("cuda") == [("CUDAExecutionProvider", {"device_id": "0"}),
                                             ("CPUExecutionProvider", {})]
    cache = tmp_path / "run" / "trt_cache" / "fp16"
    chain = onnxrt.provider_chain("tensorrt", cache_dir=cache, fp16=True)
    assert [name for name, _ in chain] == ["TensorrtExecutionProvider", "CUDAExecutionProvider",
                                           "CPUExecutionProvider"]
    assert chain[0][1] == {"device_id": "0", "trt_fp16_enable": "True", "trt_int8_enable": "False",
                           "trt_engine_cache_enable": "True", "trt_engine_cache_path": str(cache.resolve()),
                           "trt_timing_cache_enable": "True", "trt_timing_cache_path": str(cache.resolve())}
    assert all(isinstance(v, str) for v in chain[0][1].values())  # ONNX Runtime takes string options
    plain = onnxrt.provider_chain("TensorrtExecutionProvider", int8_qdq=True)[0][1]
    assert plain["trt_int8_enable"] == "True" and "trt_engine_cache_path" not in plain


def test_unknown_provider_word():
    with pytest.raises(UserError, match=r"--provider gpu: not a provider; choose cpu \| cuda \| tensorrt"):
        onnxrt.provider_chain("gpu")


def test_graph_precision_reads_fp16_weights_and_qdq(tmp_path):
    assert onnxrt.graph_precision(_graph(tmp_path / "a.onnx")) == {"fp16": False, "int8_qdq": False}
    assert onnxrt.graph_precision(_graph(tmp_path / "b.onnx", np.float16)) == {"fp16": True, "int8_qdq": False}
    assert onnxrt.graph_precision(_graph(tmp_path / "c.onnx", qdq=True)) == {"fp16": False, "int8_qdq": True}


def test_missing_gpu_providers_name_the_extra():
    for chain in (onnxrt.provider_chain("cuda"), onnxrt.provider_chain("tensorrt")):
        with pytest.raises(UserError) as err:
            onnxrt.check_providers(chain, ["CPUExecutionProvider"])
        assert EXTRA in str(err.value) and "\n" not in str(err.value)
    onnxrt.check_providers(onnxrt.provider_chain("tensorrt"),
                           ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])


def test_a_session_that_fell_back_names_the_library():
    """onnxruntime-gpu without libnvinfer drops TensorRT and runs on CUDA; timing that as TensorRT would lie."""
    session = SimpleNamespace(get_providers=lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(UserError, match="could not start 'TensorrtExecutionProvider'.*libnvinfer"):
        onnxrt.check_session_providers(session, onnxrt.provider_chain("tensorrt"), "m.onnx")
    onnxrt.check_session_providers(session, onnxrt.provider_chain("cuda"), "m.onnx")


def test_node_assignment_on_the_cpu(tmp_path):
    path = _graph(tmp_path / "q.onnx", qdq=True)
    session = onnxrt.open_session(path, assignment=True)
    assert onnxrt.node_assignment(session) == {"CPUExecutionProvider": 1.0}
    assert onnxrt.node_assignment(onnxrt.open_session(path)) is None  # not recorded: unknown, not a guess


# ---- bench ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("provider", ["cuda", "tensorrt"])
def test_bench_gpu_provider_is_one_exit_2_line(tmp_path, provider):
    p = _cli("bench", _graph(tmp_path / "m.onnx"), "--provider", provider, "--runs", 5)
    assert p.returncode == 2, p.stderr
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and EXTRA in lines[0] and "Traceback" not in p.stderr


def test_bench_cpu_provider_records_the_assignment(tmp_path):
    p = _cli("bench", _graph(tmp_path / "m.onnx"), "--provider", "cpu", "--runs", 10, "--threads", 1, "--json")
    assert p.returncode == 0, p.stderr
    d = json.loads(p.stdout)
    assert d["details"]["providers"] == ["CPUExecutionProvider"]
    assert d["details"]["node_assignment"] == {"CPUExecutionProvider": 1.0}
    assert not (tmp_path / "trt_cache").exists()  # only TensorRT keeps a cache


def test_bench_provider_needs_onnxruntime(tmp_path):
    p = _cli("bench", tmp_path / "m.pte", "--provider", "cpu")
    assert p.returncode == 2


# ---- the local runner, the remote script, the ssh runner's command ---------------------------------------------

def test_local_runner_passes_the_provider(tmp_path):
    from toolkit.eval.runners.local import LocalRunner

    target = SimpleNamespace(name="host", threads=1)
    path = _graph(tmp_path / "m.onnx")
    r = LocalRunner(target).measure(path, batch=1, seq_len=4, warmup=2, runs=5, provider="cpu")
    assert r["p50_ms"] > 0
    with pytest.raises(UserError, match=r"edge-toolkit\[gpu\]"):
        LocalRunner(target).measure(path, batch=1, seq_len=4, warmup=2, runs=5, provider="tensorrt",
                                    cache_dir=tmp_path / "trt_cache")


def test_remote_script_provider(tmp_path):
    script = REPO / "toolkit" / "eval" / "runners" / "remote_bench.py"
    path = _graph(tmp_path / "m.onnx")
    ok = _cli(script, path, "--threads", 1, "--runs", 5, "--provider", "cpu", module="")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    d = json.loads(ok.stdout)
    assert d["provider"] == "cpu" and d["node_assignment"] == {"CPUExecutionProvider": 1.0}
    bad = _cli(script, path, "--provider", "tensorrt", "--trt-cache", tmp_path / "c", module="")
    assert bad.returncode == 2 and "TensorrtExecutionProvider" in json.loads(bad.stdout)["error"]


def test_ssh_runner_sends_the_provider_and_a_kept_cache():
    from toolkit.eval.runners.ssh import REMOTE_TRT_CACHE, SshRunner

    target = SimpleNamespace(name="jetson", threads=6,
                             reach=SimpleNamespace(host="10.0.0.2", user="me", port=22, key="", known_hosts=""))
    runner = SshRunner(target, python="python3")
    common = dict(threads=6, batch=1, seq_len=64, warmup=2, runs=5)
    words = runner.bench_words("/tmp/edge-bench.x", "model.onnx", provider="tensorrt", **common)
    assert words[words.index("--provider") + 1] == "tensorrt"
    assert words[words.index("--trt-cache") + 1] == REMOTE_TRT_CACHE
    assert "--provider" not in runner.bench_words("/tmp/edge-bench.x", "model.onnx", **common)


# ---- the recipe and the eval stage ----------------------------------------------------------------------------

def _recipe(**latency):
    from toolkit.config import recipe_from_dict

    return recipe_from_dict({"name": "p", "task": "text-classification",
                             "eval": {"targets": ["host"], "latency": latency}}, "p.toml")


def test_recipe_provider_is_checked():
    assert _recipe().eval.latency.provider == "cpu"
    with pytest.raises(UserError, match="p.toml: eval.latency.provider = 'gpu' is not one of cpu, cuda, tensorrt"):
        _recipe(provider="gpu")


def test_eval_refuses_a_missing_provider_before_any_work():
    from toolkit.eval.stage import check_targets

    check_targets(_recipe())
    with pytest.raises(UserError, match=r"eval.latency.provider = 'cuda': .*edge-toolkit\[gpu\]"):
        check_targets(_recipe(provider="cuda"))


def test_a_target_must_name_the_provider_among_its_accelerators():
    from toolkit.eval.stage import check_provider
    from toolkit.targets import load_target

    jetson = load_target("jetson-orin-nano")
    assert "TensorrtExecutionProvider" in jetson.accelerators[0].execution_providers
    pi = SimpleNamespace(accelerators=[SimpleNamespace(execution_providers=["NnapiExecutionProvider"])])
    with pytest.raises(UserError, match="target 'phone' names only NnapiExecutionProvider"):
        check_provider("tensorrt", {"jetson": jetson, "phone": pi})


def test_the_default_provider_leaves_the_eval_hash_alone():
    """A run evaluated before the key existed is not evaluated again for it; choosing a GPU provider is a change."""
    from toolkit.config import hashed_dict, to_dict

    latency = to_dict(_recipe())["eval"]["latency"]
    assert latency["provider"] == "cpu"
    latency.pop("provider")
    assert hashed_dict(_recipe())["eval"]["latency"] == latency
    assert hashed_dict(_recipe(provider="tensorrt"))["eval"]["latency"]["provider"] == "tensorrt"
