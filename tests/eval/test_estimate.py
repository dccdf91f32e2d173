"""Latency estimates: operation/byte counts from the ONNX graph (INT8-aware), a roofline per profile, a host
calibration; and the fit check against a target's budget."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from toolkit.errors import UserError
from toolkit.eval.estimate import calibrate, count_ops, dominant_precision, estimate_latency, host_figures
from toolkit.eval.fit import fit_check
from toolkit.targets import detect_host, list_targets, load_target

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "targets"
DIMS = [512, 1024, 1024, 10]


def _save(nodes, inputs, outputs, inits, path: Path) -> Path:
    import onnx
    from onnx import helper

    graph = helper.make_graph(nodes, path.stem, inputs, outputs, inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def mlp(path: Path) -> Path:
    """x (batch, 512) -> [MatMul + Add + Relu] x 2 -> MatMul + Add -> (batch, 10): Linear-heavy (6 MB of FP32 weights)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, x = [], [], "x"
    for i, (a, b) in enumerate(zip(DIMS[:-1], DIMS[1:])):
        inits += [numpy_helper.from_array(rng.standard_normal((a, b)).astype(np.float32) / a**0.5, f"w{i}"),
                  numpy_helper.from_array(np.zeros(b, np.float32), f"b{i}")]
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"mm{i}"]), helper.make_node("Add", [f"mm{i}", f"b{i}"], [f"y{i}"])]
        x = f"y{i}"
        if i < len(DIMS) - 2:
            nodes.append(helper.make_node("Relu", [x], [f"r{i}"]))
            x = f"r{i}"
    nodes.append(helper.make_node("Identity", [x], ["logits"]))
    return _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 512])],
                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 10])], inits, path)


@pytest.fixture(scope="module")
def models(tmp_path_factory) -> dict[str, Path]:
    import logging

    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_dynamic, \
        quantize_static

    logging.disable(logging.WARNING)  # the quantizer's "run pre-processing" advice
    d = tmp_path_factory.mktemp("estimate")
    fp32 = mlp(d / "mlp.onnx")
    quantize_dynamic(fp32, d / "mlp_int8.onnx", weight_type=QuantType.QInt8, per_channel=True)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.rows = iter([{"x": np.random.default_rng(i).standard_normal((1, 512)).astype(np.float32)}
                              for i in range(4)])

        def get_next(self):
            return next(self.rows, None)

    quantize_static(fp32, d / "mlp_qdq.onnx", Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QInt8, weight_type=QuantType.QInt8)
    logging.disable(logging.NOTSET)
    return {"fp32": fp32, "int8": d / "mlp_int8.onnx", "qdq": d / "mlp_qdq.onnx"}


def test_matmul_counts_are_exact(models):
    ops = [op for op in count_ops(models["fp32"], batch=4, seq_len=1) if op.op_class == "matmul"]
    assert [op.macs for op in ops] == [4 * a * b for a, b in zip(DIMS[:-1], DIMS[1:])]
    # weights fp32 (4 bytes); activations in + out
    assert [op.weight_bytes for op in ops] == [4 * a * b for a, b in zip(DIMS[:-1], DIMS[1:])]
    assert [op.act_bytes for op in ops] == [4 * 4 * (a + b) for a, b in zip(DIMS[:-1], DIMS[1:])]
    assert {op.precision for op in ops} == {"fp32"}


def test_conv_counts_are_exact(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.ones((16, 8, 3, 3), np.float32), "w")
    dw = numpy_helper.from_array(np.ones((16, 1, 3, 3), np.float32), "dw")
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2]),
             helper.make_node("Relu", ["c"], ["r"]),  # fused into the Conv by ONNX Runtime: not an op of its own
             helper.make_node("Conv", ["r", "dw"], ["y"], pads=[1, 1, 1, 1], group=16)]
    path = _save(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8, 32, 32])],
                 [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 16, 16, 16])], [w, dw],
                 tmp_path / "conv.onnx")
    ops = count_ops(path, batch=2)
    assert [(op.op_type, op.kernel) for op in ops] == [("Conv", "conv"), ("Conv", "dwconv")]
    assert ops[0].macs == 2 * 16 * 16 * 16 * 8 * 9 and ops[1].macs == 2 * 16 * 16 * 16 * 9


def test_int8_graphs_are_recognised_in_both_forms(models):
    fp32 = count_ops(models["fp32"])
    for form in ("int8", "qdq"):
        ops = count_ops(models[form])
        mm = [op for op in ops if op.op_class == "matmul"]
        assert len(mm) == 3 and {op.precision for op in mm} == {"int8"}, form
        assert [op.macs for op in mm] == [op.macs for op in fp32 if op.op_class == "matmul"]
        # int8 weights: a quarter of the float bytes (plus at most per-channel scales / zero points)
        fp32_w = sum(op.weight_bytes for op in fp32 if op.op_class == "matmul")
        assert fp32_w / 4 <= sum(op.weight_bytes for op in mm) < fp32_w / 3.5, form
        assert dominant_precision(ops) == "int8"
    assert any(op.op_type == "DynamicQuantizeLinear" and op.op_class == "quantize" for op in count_ops(models["int8"]))


@pytest.mark.parametrize("target", [t for t in list_targets() if t.name != "host"], ids=lambda t: t.name)
def test_every_profile_gets_an_estimate(models, target):
    e = estimate_latency(models["fp32"], target, batch=1, seq_len=64)
    assert e["source"] == "estimated" and e["target"] == target.name
    assert e["runtime"] == target.runtime and e["threads"] == target.threads
    assert 0 < e["p50_ms"] == e["p90_ms"] == e["p99_ms"] == e["mean_ms"] < 1000
    assert e["throughput"] == pytest.approx(1000 / e["p50_ms"])
    assert "uncalibrated" in e["basis"]["calibration"] and "max(2*MACs" in e["basis"]["formula"]
    assert e["basis"]["figures"]["source"] == target.peak.source
    assert sum(e["basis"]["bounds_ms"].values()) == pytest.approx(e["p50_ms"], abs=1e-5)
    # INT8-aware: fewer weight bytes and an INT8 peak at least the FP32 one
    assert estimate_latency(models["int8"], target)["p50_ms"] < e["p50_ms"]


def test_faster_hardware_gets_a_lower_estimate(models):
    pi4, avx512 = load_target("raspberry-pi-4"), load_target("x86-avx512-vnni")
    assert estimate_latency(models["fp32"], avx512)["p50_ms"] < estimate_latency(models["fp32"], pi4)["p50_ms"]
    # a bigger batch is more work
    assert estimate_latency(models["fp32"], pi4, batch=8)["p50_ms"] > estimate_latency(models["fp32"], pi4)["p50_ms"]


@pytest.fixture(scope="module")
def figures(tmp_path_factory):
    import os

    old = os.environ.get("EDGE_TOOLKIT_CACHE")
    os.environ["EDGE_TOOLKIT_CACHE"] = str(tmp_path_factory.mktemp("cache"))
    host = dataclasses.replace(detect_host(), threads=1)
    yield host, host_figures(1, refresh=True)
    if old is None:
        os.environ.pop("EDGE_TOOLKIT_CACHE")
    else:
        os.environ["EDGE_TOOLKIT_CACHE"] = old


def test_host_figures_are_measured_and_cached(figures):
    import os

    host, f = figures
    assert f["threads"] == 1 and f["dram_gbs"] > 0 and f["cache_gbs"] > 0 and f["run_overhead_us"] > 0
    assert [len(f["kernels"][k]["fp32"]) for k in ("gemm", "conv", "dwconv")] == [4, 1, 1]
    assert all(gops > 0 for k in f["kernels"].values() for pts in k.values() for _, gops in pts)
    assert (Path(os.environ["EDGE_TOOLKIT_CACHE"]) / "host-figures.json").is_file()
    assert host_figures(1) is f  # measured once per process


def test_calibration_reproduces_the_host_and_moves_the_targets(models, figures):
    host, _ = figures
    cal = calibrate(models["fp32"], 2.0, host, batch=1, seq_len=64)
    cal = calibrate(models["int8"], 0.5, host, batch=1, seq_len=64, calibration=cal)
    assert set(cal["scale"]) == {"fp32", "int8"} and len(cal["models"]) == 2
    # on the host itself, the calibrated estimate of a calibration model is its measurement
    assert estimate_latency(models["fp32"], host, cal)["p50_ms"] == pytest.approx(2.0, rel=1e-3)
    assert estimate_latency(models["int8"], host, cal)["p50_ms"] == pytest.approx(0.5, rel=1e-3)
    pi4 = load_target("raspberry-pi-4")
    e = estimate_latency(models["fp32"], pi4, cal)
    assert e["source"] == "estimated" and "calibrated on the host" in e["basis"]["calibration"]
    # a slower host measurement means a slower device estimate, in proportion
    slow = calibrate(models["fp32"], 4.0, host)
    assert estimate_latency(models["fp32"], pi4, slow)["p50_ms"] == pytest.approx(2 * e["p50_ms"], rel=1e-3)


def test_bad_inputs_are_user_errors(models, figures, tmp_path):
    host, _ = figures
    with pytest.raises(UserError, match="positive number"):
        calibrate(models["fp32"], 0.0, host)
    with pytest.raises(UserError, match="not an ONNX model"):
        count_ops(FIXTURES / "runner_not_onnx.onnx")
    with pytest.raises(UserError, match="no such ONNX file"):
        estimate_latency(tmp_path / "absent.onnx", load_target("raspberry-pi-4"))
    unknown = dataclasses.replace(host, peak=dataclasses.replace(host.peak, gflops_fp32=0.0, bandwidth_gbs=0.0))
    with pytest.raises(UserError, match="peak figures are unknown"):
        estimate_latency(models["fp32"], unknown)


def test_fit_check_flags_what_exceeds_the_budget():
    pi4 = load_target("raspberry-pi-4")  # budget: 1024 MB file, 2048 MB memory
    ok = fit_check(10 * 2**20, 100.0, pi4)
    assert ok["fits"] is True and ok["reasons"] == [] and ok["size_mb"] == 10.0
    big = fit_check(2000 * 2**20, 100.0, pi4)
    assert big["fits"] is False and big["size_ok"] is False and big["memory_ok"] is True
    assert "max_model_mb 1024" in big["reasons"][0] and "raspberry-pi-4" in big["reasons"][0]
    hungry = fit_check(10 * 2**20, 4096.0, pi4)
    assert hungry["fits"] is False and "peak memory 4096.0 MiB" in hungry["reasons"][0]
    assert fit_check(None, None, pi4)["fits"] is None  # nothing known, nothing flagged
    assert fit_check(10 * 2**20, None, pi4)["fits"] is True


def test_a_merged_decoder_counts_its_first_step_branch(tmp_path):
    from onnx import TensorProto, helper, numpy_helper

    def branch(name: str, width: int):
        w = numpy_helper.from_array(np.ones((16, width), np.float32), f"w_{name}")
        back = numpy_helper.from_array(np.ones((width, 4), np.float32), f"b_{name}")
        nodes = [helper.make_node("MatMul", ["x", f"w_{name}"], [f"h_{name}"]),
                 helper.make_node("MatMul", [f"h_{name}", f"b_{name}"], [f"y_{name}"])]
        return helper.make_graph(nodes, name, [], [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT,
                                                                                 ["batch", 4])], [w, back])

    # optimum's merged decoders: If(use_cache_branch) then = with a cache (one token), else = the first step
    node = helper.make_node("If", ["use_cache_branch"], ["logits"], then_branch=branch("cached", 2),
                            else_branch=branch("first", 32))
    path = _save([node], [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 16]),
                          helper.make_tensor_value_info("use_cache_branch", TensorProto.BOOL, [1])],
                 [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", 4])], [], tmp_path / "m.onnx")
    ops = count_ops(path, batch=3)
    assert [op.macs for op in ops if op.op_class == "matmul"] == [3 * 16 * 32, 3 * 32 * 4]
