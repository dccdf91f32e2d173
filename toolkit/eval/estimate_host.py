"""What ONNX Runtime and the memory system achieve on this machine: the host figures the latency estimates
(:mod:`toolkit.eval.estimate`) are calibrated with — GEMM and conv throughput at a few sizes in FP32 and INT8, the
cost of a kernel call, DRAM and cache bandwidth. Measured once per CPU, thread count and onnxruntime version (a
few seconds), then cached in memory and on disk.
"""
from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

SCHEMA_VERSION = 1
# Kernels the host calibration times: GEMMs (M, K, N) from a tiny layer to a large transformer FFN; a dense 3x3 conv
# (Cin, Cout, H=W) and a depthwise one (C, H=W).
GEMM_SIZES = ((64, 64, 64), (64, 128, 512), (64, 384, 1536), (128, 384, 1536))
CONV_SIZE = (32, 64, 32)
DWCONV_SIZE = (128, 32)

_FIGURES: dict[str, dict[str, Any]] = {}


def _cache_file() -> Path:
    root = os.environ.get("EDGE_TOOLKIT_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "edge-toolkit")
    return Path(root) / "host-figures.json"


def host_llc_bytes() -> int:
    """The largest cache of CPU 0 (sysfs "1024K", "32M"), 0 when unknown."""
    sizes = [0]
    for f in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        try:
            text = f.read_text().strip().upper()
            sizes.append(int(text.rstrip("KMG")) * {"K": 2**10, "M": 2**20, "G": 2**30}.get(text[-1:], 1))
        except (OSError, ValueError):
            continue
    return max(sizes)


def _best_copy_gbs(nbytes: int, repeats: int) -> float:
    """The best of ``repeats`` numpy copies of ``nbytes`` (read + write bytes), GB/s."""
    src = np.ones(max(nbytes // 4, 1), dtype=np.float32)
    dst = np.empty_like(src)
    np.copyto(dst, src)  # touch the pages first
    best = math.inf
    for _ in range(repeats):
        # this thread's CPU time: a copy the scheduler interrupts is not counted slower than it ran
        t0 = time.thread_time_ns()
        np.copyto(dst, src)
        best = min(best, max(time.thread_time_ns() - t0, 1))
    return 2 * src.nbytes / best


def _session(model, threads: int, optimize: bool = True):
    from toolkit import onnxrt

    return onnxrt.open_session(model, threads=threads, timing=True, optimize=optimize)


def _best_s(session, feed: dict[str, np.ndarray], runs: int, threads: int) -> float:
    """The fastest of ``runs`` calls: other processes only ever add time, so the minimum is the hardware's. At one
    thread ONNX Runtime computes in the calling thread, whose CPU time a busy machine does not inflate."""
    clock = time.thread_time_ns if threads == 1 else time.perf_counter_ns
    for _ in range(3):
        session.run(None, feed)
    best = math.inf
    for _ in range(runs):
        t0 = clock()
        session.run(None, feed)
        best = min(best, clock() - t0)
    return best / 1e9


def _kernel_model(kind: str, int8: bool, size: tuple[int, ...]):
    """A one-node graph: gemm (M, K, N), conv (Cin, Cout, HW: 3x3) or dwconv (C, HW: 3x3 depthwise); its MACs."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    if kind == "gemm":
        m, k, n = size
        a_shape, w_shape, y_shape, macs, attrs = [m, k], [k, n], [m, n], m * k * n, {}
    else:
        cin, cout, hw = (size[0], size[0], size[1]) if kind == "dwconv" else size
        group = cin if kind == "dwconv" else 1
        a_shape, w_shape, y_shape = [1, cin, hw, hw], [cout, cin // group, 3, 3], [1, cout, hw, hw]
        macs, attrs = cout * hw * hw * (cin // group) * 9, {"pads": [1, 1, 1, 1], "group": group}
    op = {"gemm": "MatMul", "conv": "Conv", "dwconv": "Conv"}[kind] + ("Integer" if int8 else "")
    w = rng.integers(-127, 127, w_shape).astype(np.int8) if int8 else rng.standard_normal(w_shape).astype(np.float32)
    a = rng.integers(0, 255, a_shape).astype(np.uint8) if int8 else rng.standard_normal(a_shape).astype(np.float32)
    a_type, y_type = (TensorProto.UINT8, TensorProto.INT32) if int8 else (TensorProto.FLOAT, TensorProto.FLOAT)
    graph = helper.make_graph([helper.make_node(op, ["a", "w"], ["y"], **attrs)], kind,
                              [helper.make_tensor_value_info("a", a_type, a_shape)],
                              [helper.make_tensor_value_info("y", y_type, y_shape)], [numpy_helper.from_array(w, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {"a": a}, macs


def _chain_model(length: int):
    """``length`` Adds in a row on a (1, 8) tensor: the cost of a kernel call with no work in it."""
    from onnx import TensorProto, helper, numpy_helper

    nodes = [helper.make_node("Add", [f"x{i}", "one"], [f"x{i + 1}"]) for i in range(length)]
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x0", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info(f"x{length}", TensorProto.FLOAT, [1, 8])],
                              [numpy_helper.from_array(np.ones((1, 8), np.float32), "one")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), {"x0": np.zeros((1, 8), np.float32)}


def host_figures(threads: int, refresh: bool = False) -> dict[str, Any]:
    """What ONNX Runtime and the memory system achieve here at ``threads`` intra-op threads (a few seconds once;
    then cached in memory and in ~/.cache/edge-toolkit/host-figures.json, or $EDGE_TOOLKIT_CACHE).

    Returns:
        {"threads", "run_overhead_us" (a one-op call), "op_overhead_us" (each further kernel), "dram_gbs",
        "cache_gbs", "llc_bytes", "kernels": {"gemm": {"fp32": [[macs, GOP/s], ...], "int8": [...]},
        "conv": {...}, "dwconv": {...}}, "key"}
    """
    import onnxruntime
    import platform

    from toolkit.targets import _cpuinfo

    cpu = _cpuinfo().get("model name") or platform.processor() or platform.machine()
    sizes = {"gemm": GEMM_SIZES, "conv": (CONV_SIZE,), "dwconv": (DWCONV_SIZE,)}
    key = f"{cpu}|cpus={os.cpu_count()}|threads={threads}|onnxruntime={onnxruntime.__version__}|{sizes}"
    if not refresh and key in _FIGURES:
        return _FIGURES[key]
    cache = _cache_file()
    try:
        stored = json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
    except (OSError, json.JSONDecodeError):
        stored = {}
    if not refresh and isinstance(stored.get(key), dict) and stored[key].get("schema_version") == SCHEMA_VERSION:
        _FIGURES[key] = stored[key]
        return stored[key]
    one, feed1 = _chain_model(1)
    chain, feed_chain = _chain_model(101)
    t1 = _best_s(_session(one, threads, optimize=False), feed1, 300, threads)
    t101 = _best_s(_session(chain, threads, optimize=False), feed_chain, 100, threads)
    llc = host_llc_bytes()
    figures: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION, "key": key, "threads": threads, "run_overhead_us": round(t1 * 1e6, 3),
        "op_overhead_us": round(max(t101 - t1, 0.0) / 100 * 1e6, 4), "llc_bytes": llc,
        "dram_gbs": round(_best_copy_gbs(64 * 2**20 if llc <= 16 * 2**20 else 4 * llc, 10), 2),
        "cache_gbs": round(_best_copy_gbs(min(llc // 4, 4 * 2**20) if llc else 2**20, 50), 2),
        "kernels": {}}
    for kind, shapes in sizes.items():
        for precision in ("fp32", "int8"):
            points = []
            for size in shapes:
                model, feed, macs = _kernel_model(kind, precision == "int8", size)
                t = _best_s(_session(model, threads), feed, int(min(200, max(10, 2e8 / macs))), threads) - t1
                points.append([macs, round(2 * macs / max(t, 1e-9) / 1e9, 2)])  # the kernel alone, not the call
            figures["kernels"].setdefault(kind, {})[precision] = points
    _FIGURES[key] = figures
    try:
        from toolkit.rundir import atomic_write_json

        atomic_write_json(cache, {**stored, key: figures})
    except OSError:  # a read-only home: the figures stay cached in memory
        pass
    return figures
