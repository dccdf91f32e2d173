#!/usr/bin/env python3
"""Measure one model file's latency and print one JSON object: the script the ssh runner copies to a device.

Self-contained on purpose: it needs Python 3.8+, numpy and the runtime (onnxruntime for .onnx/.ort; executorch,
which brings torch, for .pte), nothing of the toolkit. It follows the toolkit's latency harness: load (timed), first
run (timed apart), the rest of the warm-up, then ``--runs`` calls with ``time.perf_counter_ns`` around each call
only; percentiles by numpy's default (linear) method.

    python3 remote_bench.py model.onnx --threads 4 --batch 1 --seq-len 64 --warmup 20 --runs 200 [--inputs in.npz]

Inputs: ``--inputs`` names an .npz of arrays (by input name for ONNX Runtime; in the program's input order for
ExecuTorch) with ``--batch`` rows per call. Without it, ONNX inputs are synthesised as the harness does (axis 0 =
batch, other dynamic axes = seq_len; masks ones, token_type_ids zeros, position_ids 0..S-1, other integer inputs
token ids in [1, min(100, --vocab-size)), floats standard normal) and .pte inputs at the program's own sizes.
On an error it prints {"error": "..."} and exits with 2.
"""
from __future__ import annotations

import argparse
import functools
import gc
import json
import os
import platform
import sys
import time

SCHEMA_VERSION = 1
CONVENTIONS = {
    "timer": "time.perf_counter_ns around each call only; inputs prepared before timing; gc disabled while timing",
    "percentiles": "numpy.percentile(method='linear') over the per-call times",
    "throughput": "samples/s = batch / mean latency",
    "first_inference": "load + first run, measured apart from the timed runs",
    "peak_rss": "resource.getrusage(RUSAGE_SELF).ru_maxrss: peak RSS of the benchmark process",
}


class BenchError(Exception):
    """A problem to report as {"error": ...}."""


def _onnx_feed(session, np, batch: int, seq_len: int, vocab: int | None) -> dict:
    types = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
             "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
             "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}
    rng = np.random.default_rng(0)
    feed = {}
    for i in session.get_inputs():
        if i.type not in types:
            raise BenchError(f"input '{i.name}' has type {i.type}, which this script cannot synthesise")
        dtype = np.dtype(types[i.type])
        shape = tuple(d if isinstance(d, int) and d > 0 else (batch if axis == 0 else seq_len)
                      for axis, d in enumerate(i.shape))
        if dtype == np.bool_ or (np.issubdtype(dtype, np.integer) and i.name.endswith("mask")):
            feed[i.name] = np.ones(shape, dtype=dtype)
        elif i.name == "token_type_ids":
            feed[i.name] = np.zeros(shape, dtype=dtype)
        elif i.name == "position_ids":
            feed[i.name] = np.broadcast_to(np.arange(shape[-1], dtype=dtype), shape).copy()
        elif np.issubdtype(dtype, np.integer):
            feed[i.name] = rng.integers(1, max(2, min(100, vocab or 100)), size=shape, dtype=dtype)
        else:
            feed[i.name] = rng.standard_normal(size=shape).astype(dtype)
    return feed


def _load_npz(path: str, np) -> list:
    with np.load(path, allow_pickle=False) as data:  # never unpickle what was copied over
        return [(name, data[name]) for name in data.files]


PROVIDERS = {"cpu": "CPUExecutionProvider", "cuda": "CUDAExecutionProvider", "tensorrt": "TensorrtExecutionProvider"}


def _providers(args, ort) -> list:
    """The execution providers for ``--provider`` with their options (the toolkit's ``onnxrt.provider_chain``,
    restated: this script imports nothing of the toolkit)."""
    cpu = [("CPUExecutionProvider", {})]
    if args.provider == "cpu":
        return cpu
    chain = [("CUDAExecutionProvider", {"device_id": "0"})] + cpu
    if args.provider == "tensorrt":
        fp16, qdq = _graph_flags(args.model)
        options = {"device_id": "0", "trt_fp16_enable": str(fp16), "trt_int8_enable": str(qdq)}
        if args.trt_cache:
            cache = os.path.abspath(os.path.expanduser(args.trt_cache))
            os.makedirs(cache, exist_ok=True)
            options.update(trt_engine_cache_enable="True", trt_engine_cache_path=cache,
                           trt_timing_cache_enable="True", trt_timing_cache_path=cache)
        chain = [("TensorrtExecutionProvider", options)] + chain
    available = ort.get_available_providers()
    for name, _ in chain:
        if name not in available:
            raise BenchError(f"execution provider '{name}' is not in this onnxruntime build (it has "
                             f"{', '.join(available)}); install onnxruntime-gpu (on a Jetson: JetPack's build)")
    return chain


def _graph_flags(path: str) -> tuple:
    """(FP16 weights, Q/DQ nodes) of an .onnx graph, for TensorRT's FP16 and INT8 flags; onnx is optional here."""
    try:
        import onnx
    except ImportError:
        return False, False
    if not path.endswith(".onnx"):
        return False, False
    graph = onnx.load(path, load_external_data=False).graph
    fp16 = any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)
    return fp16, any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in graph.node)


def _node_assignment(session):
    """The fraction of nodes each provider took (onnxruntime >= 1.23), else None."""
    try:
        subgraphs = session.get_provider_graph_assignment_info()
    except Exception:
        return None
    counts = {}
    for sub in subgraphs:
        counts[sub.ep_name] = counts.get(sub.ep_name, 0) + len(sub.get_nodes())
    total = sum(counts.values())
    return {ep: round(n / total, 4) for ep, n in counts.items()} if total else None


def _onnxruntime(args, np):
    import onnxruntime as ort

    providers = _providers(args, ort)
    so = ort.SessionOptions()
    so.add_session_config_entry("session.record_ep_graph_assignment_info", "1")
    so.intra_op_num_threads = args.threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 4
    t0 = time.perf_counter_ns()
    try:
        session = ort.InferenceSession(args.model, so, providers=providers)
    except Exception as exc:
        raise BenchError(f"onnxruntime cannot load {os.path.basename(args.model)}: {_line(exc)}") from exc
    load_ns = time.perf_counter_ns() - t0
    if providers[0][0] not in session.get_providers():  # its libraries did not load: ORT fell back silently
        raise BenchError(f"onnxruntime could not start {providers[0][0]} (the session fell back to "
                         f"{', '.join(session.get_providers())}); install its libraries (CUDA/cuDNN, TensorRT)")
    args.node_assignment = _node_assignment(session)
    if args.inputs:
        feeds = _batches(_load_npz(args.inputs, np), args.batch)
        kind = "real"
    else:
        feeds = [_onnx_feed(session, np, args.batch, args.seq_len, args.vocab_size)]
        kind = "synthetic"
    feeds = [{k: np.ascontiguousarray(v) for k, v in f.items()} for f in feeds]
    call = functools.partial(session.run, None)  # session.run(None, feed): what a user's own loop calls
    return call, feeds, load_ns, f"onnxruntime {ort.__version__}", kind, {k: list(v.shape) for k, v in feeds[0].items()}


def _batches(named: list, batch: int) -> list:
    """Real samples cut into consecutive batches of ``batch`` rows (a short last one is dropped, so every call
    sees the same shapes), cycled through the timed runs as the harness does."""
    rows = min(a.shape[0] for _, a in named)
    if rows < batch:
        raise BenchError(f"{rows} real samples are fewer than one batch of {batch}")
    return [{k: a[i:i + batch] for k, a in named} for i in range(0, rows - batch + 1, batch)]


def _executorch(args, np):
    import torch
    from executorch.runtime import Runtime

    try:
        import executorch.extension.pybindings.portable_lib as pool

        pool._unsafe_reset_threadpool(args.threads)
    except (ImportError, AttributeError):  # older builds: the pool keeps its default size
        pass
    t0 = time.perf_counter_ns()
    try:
        program = Runtime.get().load_program(args.model)
        method = program.load_method("forward")
    except Exception as exc:
        raise BenchError(f"executorch cannot load {os.path.basename(args.model)}: {_line(exc)}") from exc
    load_ns = time.perf_counter_ns() - t0
    if args.inputs:
        feeds = [list(f.values()) for f in _batches(_load_npz(args.inputs, np), args.batch)]
        kind = "real"
    else:
        md, arrays = method.metadata, []
        for i in range(md.num_inputs()):
            meta = md.input_tensor_meta(i)
            sizes = [int(d) for d in meta.sizes()]
            arrays.append(np.ones(sizes, dtype=np.int64) if meta.dtype() == 4 else
                          np.random.default_rng(i).standard_normal(sizes).astype(np.float32))
        feeds, kind = [arrays], "synthetic"
    tensors = [[torch.from_numpy(np.ascontiguousarray(a)) for a in f] for f in feeds]
    from importlib.metadata import version

    # the method borrows from the program: the caller keeps both alive
    return method.execute, tensors, load_ns, f"executorch {version('executorch')}", kind, \
        {f"input_{i}": list(a.shape) for i, a in enumerate(feeds[0])}, (program, method)


def _line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return (text[0] if text else type(exc).__name__)[:300]


def run(args) -> dict:
    import numpy as np

    if args.affinity:
        os.sched_setaffinity(0, [int(c) for c in args.affinity.split(",")])
    runtime = args.runtime or ("executorch" if args.model.endswith(".pte") else "onnxruntime")
    try:
        setup = _onnxruntime(args, np) if runtime == "onnxruntime" else _executorch(args, np)
    except ImportError as exc:
        raise BenchError(f"{runtime} is not installed for {sys.executable} ({_line(exc)})") from exc
    call, feeds, load_ns, version, kind, shapes = setup[:6]
    k = len(feeds)
    t0 = time.perf_counter_ns()
    try:
        call(feeds[0])
    except Exception as exc:
        raise BenchError(f"the first run failed with inputs {shapes}: {_line(exc)}") from exc
    first_ns = time.perf_counter_ns() - t0
    for i in range(1, max(args.warmup, 1)):
        call(feeds[i % k])
    clock = time.perf_counter_ns
    samples = []
    gc.disable()
    try:
        for i in range(args.runs):
            feed = feeds[i % k]
            t0 = clock()
            call(feed)
            samples.append(clock() - t0)
    finally:
        gc.enable()
    ms = np.asarray(samples, dtype=np.float64) / 1e6
    p50, p90, p99 = np.percentile(ms, [50, 90, 99])
    batch = next(iter(shapes.values()))[0] if shapes and next(iter(shapes.values())) else args.batch
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)
    return {
        "schema_version": SCHEMA_VERSION, "source": "measured", "runtime": runtime, "runtime_version": version,
        "threads": args.threads, "batch": int(batch), "seq_len": args.seq_len, "warmup": max(args.warmup, 1),
        "runs": len(samples), "p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99),
        "mean_ms": float(ms.mean()), "min_ms": float(ms.min()), "max_ms": float(ms.max()), "std_ms": float(ms.std()),
        "throughput": float(batch * 1000.0 / ms.mean()), "load_ms": load_ns / 1e6, "first_run_ms": first_ns / 1e6,
        "first_inference_ms": (load_ns + first_ns) / 1e6, "peak_rss_mb": peak / 2**20,
        "model_size_bytes": os.path.getsize(args.model), "inputs": kind, "input_shapes": shapes,
        "machine": {"node": platform.node(), "machine": platform.machine(), "python": platform.python_version(),
                    "cpus": os.cpu_count()},
        "conventions": CONVENTIONS,
        **({"provider": args.provider, "node_assignment": getattr(args, "node_assignment", None)}
           if runtime == "onnxruntime" else {}),
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="measure a model file's latency; prints one JSON object")
    p.add_argument("model")
    p.add_argument("--runtime", choices=("onnxruntime", "executorch"), help="default: from the extension")
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--seq-len", type=int, default=64)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--runs", type=int, default=200)
    p.add_argument("--inputs", help=".npz of input arrays (a batch of rows)")
    p.add_argument("--vocab-size", type=int, help="synthetic token ids stay below this")
    p.add_argument("--affinity", help="comma-separated CPU ids to pin to")
    p.add_argument("--provider", choices=tuple(PROVIDERS), default="cpu", help="ONNX Runtime execution provider")
    p.add_argument("--trt-cache", help="TensorRT engine cache folder (kept between runs)")
    args = p.parse_args(argv)
    try:
        for key in ("threads", "batch", "seq_len", "runs"):
            if getattr(args, key) < 1:
                raise BenchError(f"--{key.replace('_', '-')} must be at least 1")
        if not os.path.isfile(args.model):
            raise BenchError(f"{args.model}: no such file")
        result = run(args)
    except BenchError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
