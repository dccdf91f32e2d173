"""Latency estimates for targets that cannot be reached: a roofline over the ONNX graph, calibrated on the host.

1. **Counts** (:func:`count_ops`): every node, with shapes inferred at the given batch / sequence length (dynamic
   axes substituted as the latency harness fills them: axis 0 = batch, other dynamic axes = seq_len), gets an
   operator class (matmul, conv, attention, elementwise, quantize, shape), a precision (fp32 / int8 / fp16), its
   multiply-accumulates and the bytes it moves (weights and activations apart, at their element size: 1 byte for
   INT8 weights; a Gather reads only the rows it gathers). INT8 is recognised in both ONNX forms: QOperator
   (MatMulInteger, QLinearMatMul, ConvInteger, QLinearConv, DynamicQuantizeMatMul, ...) and QDQ (a MatMul/Conv/Gemm
   whose weight is a DequantizeLinear of an int8 initializer, which ONNX Runtime fuses into an int8 kernel).
2. **Roofline** per op: ``time = max(2*MACs / (peak_ops * eff), weight_bytes / bw_w + act_bytes / bw_a)`` plus a
   per-op overhead, summed, plus one call overhead. ``peak_ops`` is the profile's FP32 or INT8 figure; ``eff`` the
   efficiency of the op's kernel kind (GEMM by size, dense conv, depthwise conv) and precision; weights stream from
   DRAM when the model's weights do not fit in half the last-level cache, else from cache, and so do activations.
3. **Calibration** (:func:`calibrate`): the efficiencies are measured on the host with ONNX Runtime (GEMMs at four
   sizes, a dense and a depthwise conv, FP32 and INT8, against the host's theoretical peak; per-op and per-call
   overheads; DRAM and cache bandwidth by numpy copies; once, then cached), and a model measured on the host fixes
   one residual scale per precision (measured p50 / roofline). Targets get the same efficiencies against their own
   peak figures, overheads scaled by clock, DRAM at 70 % of the profile's bandwidth, and the residual scale.

Every estimate says ``source = "estimated"`` and carries its ``basis``.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import UserError
from toolkit.eval.estimate_host import GEMM_SIZES, SCHEMA_VERSION, host_figures

# Without a host calibration: typical figures for ONNX Runtime's CPU kernels (MLAS reaches 50-70 % of FP32 peak on
# mid-size GEMMs, less of the INT8 peak), DRAM at 70 % of theoretical (STREAM-like), cache at 4x DRAM, ~1 us per
# kernel at 2.5 GHz. Stated in every uncalibrated estimate's basis.
DEFAULT_EFFICIENCY = {"fp32": 0.5, "int8": 0.35}
DEFAULT_BW_EFFICIENCY = 0.7
DEFAULT_CACHE_RATIO = 4.0
DEFAULT_OP_OVERHEAD_US = 1.0
DEFAULT_RUN_OVERHEAD_US = 10.0
DEFAULT_GHZ = 2.5
# Last-level cache when a profile does not say (no profile field yet): small SoCs 1-2 MiB (Pi 4: 1 MiB L2; Pi 5,
# Orin Nano: 2 MiB L3), desktop/server x86 8-30 MiB.
DEFAULT_LLC_MIB = {"aarch64": 2, "x86_64": 8}

ELEM_SIZE = {1: 4, 2: 1, 3: 1, 4: 2, 5: 2, 6: 4, 7: 8, 9: 1, 10: 2, 11: 8, 12: 4, 13: 8, 16: 2}
"""ONNX TensorProto element type -> bytes"""
_INT8_TYPES = (2, 3)  # UINT8, INT8
MATMUL_OPS = {"MatMul": (0, 1), "Gemm": (0, 1), "FusedMatMul": (0, 1), "FusedGemm": (0, 1)}
INT8_MATMUL_OPS = {"MatMulInteger": (0, 1), "QLinearMatMul": (0, 3), "DynamicQuantizeMatMul": (0, 1),
                   "MatMulIntegerToFloat": (0, 1), "QGemm": (0, 3)}
"""op -> (activation input, weight input)"""
CONV_OPS = {"Conv": (0, 1), "ConvTranspose": (0, 1), "FusedConv": (0, 1)}
INT8_CONV_OPS = {"ConvInteger": (0, 1), "QLinearConv": (0, 3)}
ATTENTION_OPS = {"Attention", "MultiHeadAttention", "QAttention", "GroupQueryAttention"}
QUANTIZE_OPS = {"QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear"}
VIEW_OPS = {"Reshape", "Squeeze", "Unsqueeze", "Flatten", "Shape", "Size"}
"""relabel a tensor: a kernel call, no bytes moved"""
FREE_OPS = {"Constant", "Identity", "Dropout"}
"""removed when the session is created"""
FUSED_INTO_CONV = {"Relu", "Clip", "LeakyRelu", "Sigmoid", "HardSigmoid", "Tanh", "BatchNormalization"}
"""ONNX Runtime folds these into the float Conv before them (its Conv+activation and Conv+BatchNorm fusions)"""


@dataclass
class OpCost:
    """One node's work at the given input sizes."""

    name: str
    op_type: str
    op_class: str
    """matmul | conv | attention | elementwise | quantize | shape"""
    precision: str
    """fp32 | int8 | fp16"""
    macs: int
    weight_bytes: int
    """bytes of constant inputs (weights) read"""
    act_bytes: int
    """bytes of activations read and written"""
    kernel: str = ""
    """gemm | conv | dwconv for ops whose efficiency is measured, else empty"""

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.act_bytes


# --- counting ----------------------------------------------------------------------------------------------------


def _fixed_model(path: Path, batch: int, seq_len: int):
    import onnx

    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        raise UserError(f"{path}: not an ONNX model ({type(exc).__name__}); estimates read an .onnx graph") from exc
    init = {t.name for t in model.graph.initializer}
    for value in model.graph.input:
        if value.name in init:
            continue
        for axis, dim in enumerate(value.type.tensor_type.shape.dim):
            if not dim.HasField("dim_value") or dim.dim_value <= 0:
                # the harness's rule: axis 0 is the batch, every other dynamic axis the sequence length
                dim.Clear()
                dim.dim_value = batch if axis == 0 else seq_len
    return model


def _infer(model):
    """Shapes of every value: ONNX Runtime's symbolic shape inference (onnx.shape_inference plus the Shape/Reshape
    arithmetic and com.microsoft ops of transformer graphs), else onnx.shape_inference with data propagation."""
    try:
        from onnxruntime.tools.symbolic_shape_infer import SymbolicShapeInference

        from toolkit.onnxrt import scratch_cwd

        with scratch_cwd():  # it leaves files in the working folder when a shape stays unknown
            return SymbolicShapeInference.infer_shapes(model, auto_merge=True, guess_output_rank=False)
    except Exception:  # symbolic inference gives up on some graphs; the plain one still types most values
        import onnx

        return onnx.shape_inference.infer_shapes(model, data_prop=True)


def count_ops(onnx_path: str | Path, batch: int = 1, seq_len: int = 64) -> list[OpCost]:
    """Each node's class, precision, MACs and bytes moved at ``batch`` x ``seq_len``.

    Raises:
        UserError: the file is missing or not an ONNX graph.
    """
    path = Path(onnx_path)
    if not path.is_file():
        raise UserError(f"{path}: no such ONNX file to estimate")
    graphs = _graphs(_infer(_fixed_model(path, batch, seq_len)).graph)
    nodes = [n for g in graphs for n in g.node if n.op_type != "If"]
    initializers = [t for g in graphs for t in g.initializer]
    shapes: dict[str, tuple[list[int], int]] = {}
    for v in (v for g in graphs for v in list(g.input) + list(g.value_info) + list(g.output)):
        t = v.type.tensor_type
        shapes[v.name] = ([d.dim_value if d.HasField("dim_value") else batch for d in t.shape.dim], t.elem_type)
    const = {t.name for t in initializers}
    for t in initializers:
        shapes[t.name] = (list(t.dims), t.data_type)
    int8_init = {t.name for t in initializers if t.data_type in _INT8_TYPES}
    # QDQ: a DequantizeLinear of an int8 initializer is a quantized weight, folded into the int8 kernel by ORT
    dq_weights = {n.output[0]: n.input[0] for n in nodes
                  if n.op_type == "DequantizeLinear" and n.input[0] in int8_init}
    consumers: dict[str, list[Any]] = {}
    for n in nodes:
        for i in n.input:
            consumers.setdefault(i, []).append(n)

    def numel(name: str) -> int:
        return int(np.prod(shapes[name][0])) if name in shapes else 0

    def nbytes(name: str) -> int:
        if name in dq_weights:  # the float view of an int8 weight: the kernel reads the int8 bytes
            return numel(dq_weights[name])
        return numel(name) * ELEM_SIZE.get(shapes[name][1], 4) if name in shapes else 0

    producer = {o: n for n in nodes for o in n.output}
    folded: set[str] = set(const)
    ops: list[OpCost] = []
    for n in nodes:
        inputs = [i for i in n.input if i]
        if n.op_type in FREE_OPS or (inputs and all(i in folded for i in inputs)):
            folded.update(n.output)  # constant-folded when the session is created
            continue
        src = producer.get(n.input[0]) if n.input else None
        if (n.op_type in FUSED_INTO_CONV and src is not None and src.op_type == "Conv"
                and len(consumers.get(n.input[0], [])) == 1):
            continue
        out = n.output[0]
        weights = sum(nbytes(i) for i in inputs if i in const or i in dq_weights)
        acts = sum(nbytes(i) for i in inputs if not (i in const or i in dq_weights)) + sum(nbytes(o) for o in n.output)
        precision = "fp16" if shapes.get(out, ([], 1))[1] == 10 else "fp32"
        macs, cls, kernel = 0, "elementwise", ""
        if n.op_type in MATMUL_OPS or n.op_type in INT8_MATMUL_OPS:
            a, b = INT8_MATMUL_OPS.get(n.op_type) or MATMUL_OPS[n.op_type]
            dims = shapes.get(n.input[a], ([0], 0))[0] or [0]
            trans_a = any(at.name == "transA" and at.i for at in n.attribute)
            macs = numel(out) * (dims[-2] if trans_a and len(dims) > 1 else dims[-1])
            cls = "matmul" if (n.input[b] in const or n.input[b] in dq_weights) else "attention"
            kernel = "gemm"
            if n.op_type in INT8_MATMUL_OPS or n.input[b] in dq_weights or n.input[b] in int8_init:
                precision = "int8"
        elif n.op_type in CONV_OPS or n.op_type in INT8_CONV_OPS:
            w = (INT8_CONV_OPS.get(n.op_type) or CONV_OPS[n.op_type])[1]
            wdims = shapes.get(dq_weights.get(n.input[w], n.input[w]), ([0, 0], 0))[0]
            macs = numel(out) * int(np.prod(wdims[1:]))
            group = next((at.i for at in n.attribute if at.name == "group"), 1)
            cls, kernel = "conv", ("dwconv" if group > 1 and len(wdims) > 1 and wdims[1] == 1 else "conv")
            if n.op_type in INT8_CONV_OPS or n.input[w] in dq_weights or n.input[w] in int8_init:
                precision = "int8"
        elif n.op_type in ATTENTION_OPS:
            dims = shapes.get(n.input[0], ([1, 1, 1], 0))[0]  # (batch, seq, hidden): Q.K^T and P.V
            macs, cls, kernel = 2 * int(np.prod(dims)) * (dims[1] if len(dims) > 1 else 1), "attention", "gemm"
        elif n.op_type in QUANTIZE_OPS:
            cls = "quantize"
            if n.op_type == "DequantizeLinear" and (n.input[0] in int8_init or _feeds_int8(out, consumers, dq_weights)):
                continue  # weights: folded; activations: fused into the int8 kernel that follows
        elif n.op_type in VIEW_OPS:
            cls, weights, acts = "shape", 0, 0
        elif n.op_type == "Gather" and n.input[0] in const:
            weights = nbytes(out)  # an embedding lookup reads only the rows it returns
        elif numel(out) <= 16 and shapes.get(out, ([], 1))[1] in (6, 7):
            cls = "shape"  # integer arithmetic on shapes (Gather/Concat/Cast of Shape outputs)
        ops.append(OpCost(n.name or out, n.op_type, cls, precision, int(macs), int(weights), int(acts), kernel))
    return ops


def _graphs(graph) -> list:
    """The graph and, for each If node, its ``else_branch`` (recursively): optimum's merged decoders switch on
    ``use_cache_branch``, and the branch without a cache is the first step, the whole prompt's work."""
    out = [graph]
    for n in graph.node:
        if n.op_type == "If":
            out += _graphs(next(a.g for a in n.attribute if a.name == "else_branch"))
    return out


def _feeds_int8(value: str, consumers: dict[str, list[Any]], dq_weights: dict[str, str]) -> bool:
    """``value`` (a DequantizeLinear's output) feeds a MatMul/Conv on a quantized weight: a QDQ pair that ONNX
    Runtime fuses into one int8 kernel."""
    return any((n.op_type in MATMUL_OPS or n.op_type in CONV_OPS) and any(i in dq_weights for i in n.input)
               for n in consumers.get(value, []))


def summarize(ops: list[OpCost]) -> dict[str, dict[str, float]]:
    """Per class (and precision for compute classes): {"ops", "gmacs", "mbytes"}."""
    out: dict[str, dict[str, float]] = {}
    for op in ops:
        key = op.op_class if op.op_class in ("elementwise", "shape", "quantize") else f"{op.op_class}/{op.precision}"
        row = out.setdefault(key, {"ops": 0, "gmacs": 0.0, "mbytes": 0.0})
        row["ops"] += 1
        row["gmacs"] += op.macs / 1e9
        row["mbytes"] += op.bytes / 1e6
    return {k: {"ops": v["ops"], "gmacs": round(v["gmacs"], 6), "mbytes": round(v["mbytes"], 4)}
            for k, v in sorted(out.items())}


def dominant_precision(ops: list[OpCost]) -> str:
    """The precision most MACs run in (fp32 when there are none)."""
    by: dict[str, int] = {}
    for op in ops:
        by[op.precision] = by.get(op.precision, 0) + op.macs
    return max(by, key=by.get) if by and max(by.values()) > 0 else "fp32"


# --- the roofline ------------------------------------------------------------------------------------------------


@dataclass
class _Machine:
    """What one prediction uses: peak GOP/s by precision (1 MAC = 2 OP), kernel efficiency, bandwidths (GB/s, as
    achieved), last-level cache, overheads (us)."""

    peak: dict[str, float]
    dram_gbs: float
    cache_gbs: float
    llc_bytes: int
    op_overhead_us: float
    run_overhead_us: float
    kernels: dict[str, dict[str, list[list[float]]]] = field(default_factory=dict)
    """measured points on the host: kind -> precision -> [[macs, achieved GOP/s]]"""
    host_peak: dict[str, float] = field(default_factory=dict)
    cap: float = 1.0
    """largest efficiency: 1 for targets; none for the host, whose turbo clock can beat its stated peak"""

    def gops(self, kernel: str, precision: str, macs: int) -> float:
        """Achieved GOP/s of a ``kernel`` op: the host's measured efficiency (linear in log MACs between the
        measured sizes, flat outside) times this machine's peak; the stated default efficiency without one."""
        p = "int8" if precision == "int8" else "fp32"
        points = self.kernels.get(kernel or "gemm", {}).get(p, [])
        if points and self.host_peak.get(p, 0) > 0:
            eff = float(np.interp(math.log(max(macs, 1)), [math.log(x[0]) for x in points],
                                  [x[1] / self.host_peak[p] for x in points]))
            return self.peak[p] * min(eff, self.cap)
        return self.peak[p] * DEFAULT_EFFICIENCY[p]


def _predict(ops: list[OpCost], m: _Machine) -> tuple[float, dict[str, float]]:
    """Seconds for one call, and how much of it each bound takes: {"compute", "memory", "overhead"} (s)."""
    weights_fit = sum(op.weight_bytes for op in ops) <= m.llc_bytes / 2
    bw_w = (m.cache_gbs if weights_fit else m.dram_gbs) * 1e9
    parts = {"compute": 0.0, "memory": 0.0, "overhead": m.run_overhead_us / 1e6}
    for op in ops:
        compute = 2 * op.macs / (m.gops(op.kernel, op.precision, op.macs) * 1e9) if op.macs else 0.0
        bw_a = (m.cache_gbs if op.act_bytes <= m.llc_bytes / 2 else m.dram_gbs) * 1e9
        memory = op.weight_bytes / bw_w + op.act_bytes / bw_a
        parts["compute" if compute >= memory else "memory"] += max(compute, memory)
        parts["overhead"] += m.op_overhead_us / 1e6
    return sum(parts.values()), parts


def _peaks(target) -> dict[str, float]:
    return {"fp32": float(target.peak.gflops_fp32), "int8": float(target.peak.gops_int8)}


def _host_machine(figures: dict[str, Any], host) -> _Machine:
    """The host as measured (its own peaks; where the clock is unknown, the best measured throughput stands in)."""
    peak = _peaks(host)
    for p in peak:
        if peak[p] <= 0:
            peak[p] = max(x[1] for x in figures["kernels"]["gemm"][p])
    return _Machine(peak=peak, dram_gbs=figures["dram_gbs"], cache_gbs=figures["cache_gbs"],
                    llc_bytes=figures["llc_bytes"] or DEFAULT_LLC_MIB.get(host.arch, 2) * 2**20,
                    op_overhead_us=figures["op_overhead_us"], run_overhead_us=figures["run_overhead_us"],
                    kernels=figures["kernels"], host_peak=peak, cap=math.inf)


def calibrate(onnx_path: str | Path, measured_p50_ms: float, host, batch: int = 1, seq_len: int = 64,
              calibration: dict[str, Any] | None = None) -> dict[str, Any]:
    """Efficiency factors measured on the host, for :func:`estimate_latency`.

    The host's kernel throughput (GEMM by size, dense and depthwise conv; FP32 and INT8), overheads and bandwidths
    are measured with ONNX Runtime at ``host.threads`` (:func:`host_figures`, cached); ``measured_p50_ms`` of
    ``onnx_path`` (measured on the host at that thread count and ``batch`` x ``seq_len``) against the roofline's
    host prediction gives the residual scale of the model's precision. Pass an earlier ``calibration`` to add a
    model to it (a precision's scale is then the geometric mean over its models).

    Raises:
        UserError: a missing or non-ONNX file, or a p50 that is not a positive number.
    """
    if not (isinstance(measured_p50_ms, (int, float)) and math.isfinite(measured_p50_ms) and measured_p50_ms > 0):
        raise UserError(f"calibrate: the measured p50 must be a positive number of ms (got {measured_p50_ms})")
    ops = count_ops(onnx_path, batch, seq_len)
    figures = host_figures(host.threads)
    predicted, _ = _predict(ops, _host_machine(figures, host))
    cal = json.loads(json.dumps(calibration)) if calibration else {}
    models = [e for e in cal.get("models", []) if e["model"] != str(onnx_path)]
    models.append({"model": str(onnx_path), "precision": dominant_precision(ops), "batch": batch,
                   "seq_len": seq_len, "measured_p50_ms": round(measured_p50_ms, 4),
                   "roofline_ms": round(predicted * 1e3, 4), "scale": round(measured_p50_ms / (predicted * 1e3), 4)})
    scale = {p: round(float(np.exp(np.mean([math.log(e["scale"]) for e in models if e["precision"] == p]))), 4)
             for p in sorted({e["precision"] for e in models})}
    return {"schema_version": SCHEMA_VERSION, "figures": figures, "scale": scale, "models": models,
            "host": {"description": host.description, "arch": host.arch, "threads": host.threads,
                     "frequency_ghz": host.frequency_ghz, **_peaks(host)}}


def estimate_latency(onnx_path: str | Path, target, calibration: dict[str, Any] | None = None, batch: int = 1,
                     seq_len: int = 64) -> dict[str, Any]:
    """Latency of ``onnx_path`` on ``target`` from the roofline (DESIGN latency fields, ``source = "estimated"``).

    Args:
        target: a Target: its peak figures, bandwidth, clock, threads and preferred runtime.
        calibration: from :func:`calibrate`; None: the stated default efficiencies (an uncalibrated estimate).

    Returns:
        {"p50_ms", "p90_ms", "p99_ms", "mean_ms" (one point estimate: all equal), "throughput", "threads",
        "runtime", "source": "estimated", "batch", "seq_len", "target", "basis": {"formula", "calibration",
        "precision", "scale", "figures", "bounds_ms", "counts"}}

    Raises:
        UserError: a missing or non-ONNX file, or a profile without peak figures and no calibration.
    """
    ops = count_ops(onnx_path, batch, seq_len)
    precision = dominant_precision(ops)
    peak = _peaks(target)
    llc = DEFAULT_LLC_MIB.get(target.arch, 2) * 2**20
    dram = target.peak.bandwidth_gbs * DEFAULT_BW_EFFICIENCY
    if calibration:
        figures, host = calibration["figures"], calibration["host"]
        clock = host["frequency_ghz"] / target.frequency_ghz if host.get("frequency_ghz") and target.frequency_ghz \
            else 1.0
        if target.name == "host":
            machine = _host_machine(figures, target)
        else:
            host_peak = {"fp32": host["fp32"], "int8": host["int8"]}
            machine = _Machine(peak=peak, dram_gbs=dram, cache_gbs=dram * figures["cache_gbs"] / figures["dram_gbs"],
                               llc_bytes=llc, op_overhead_us=figures["op_overhead_us"] * clock,
                               run_overhead_us=figures["run_overhead_us"] * clock, kernels=figures["kernels"],
                               host_peak=host_peak)
        scales = calibration.get("scale", {})
        scale = scales.get(precision) or (float(np.exp(np.mean(np.log(list(scales.values()))))) if scales else 1.0)
        names = ", ".join(Path(e["model"]).parent.name + "/" + Path(e["model"]).name for e in calibration["models"])
        how = (f"calibrated on the host ({host['description']}, {host['threads']} threads): ONNX Runtime kernel "
               f"efficiency vs peak measured for GEMMs at {len(GEMM_SIZES)} sizes, a dense and a depthwise conv "
               f"(fp32, int8); overheads {figures['op_overhead_us']:.2f} us/op + {figures['run_overhead_us']:.1f} "
               f"us/call, x{clock:.2f} for the clock; residual scale {scale:.3f} (measured / roofline on the host "
               f"for {names})")
    else:
        if peak["fp32"] <= 0 or target.peak.bandwidth_gbs <= 0:
            raise UserError(f"target '{target.name}': its peak figures are unknown (0), so there is nothing to "
                            "estimate from; measure it instead, or calibrate on the host first")
        clock = DEFAULT_GHZ / target.frequency_ghz if target.frequency_ghz else 1.0
        machine = _Machine(peak=peak, dram_gbs=dram, cache_gbs=dram * DEFAULT_CACHE_RATIO, llc_bytes=llc,
                           op_overhead_us=DEFAULT_OP_OVERHEAD_US * clock,
                           run_overhead_us=DEFAULT_RUN_OVERHEAD_US * clock)
        scale = 1.0
        how = (f"uncalibrated: default efficiency {DEFAULT_EFFICIENCY['fp32']:.0%} of the fp32 peak, "
               f"{DEFAULT_EFFICIENCY['int8']:.0%} of the int8 peak; cache at {DEFAULT_CACHE_RATIO:g}x DRAM; "
               f"{DEFAULT_OP_OVERHEAD_US:g} us/op and {DEFAULT_RUN_OVERHEAD_US:g} us/call at {DEFAULT_GHZ} GHz, "
               "scaled by clock")
    seconds, parts = _predict(ops, machine)
    ms = seconds * 1e3 * scale
    return {
        "p50_ms": ms, "p90_ms": ms, "p99_ms": ms, "mean_ms": ms, "throughput": batch * 1000.0 / ms,
        "threads": target.threads, "runtime": target.runtime, "source": "estimated", "batch": batch,
        "seq_len": seq_len, "target": target.name,
        "basis": {
            "formula": "sum over ops of max(2*MACs / (peak x kernel efficiency), weight bytes / weight bandwidth + "
                       "activation bytes / activation bandwidth) + per-op overhead, + a call overhead, x the "
                       "residual scale; bandwidth is the cache's when the bytes fit in half the last-level cache, "
                       "else DRAM's; one point estimate: p50 = p90 = p99 = mean",
            "calibration": how, "precision": precision, "scale": round(scale, 4),
            "figures": {"gflops_fp32": peak["fp32"], "gops_int8": peak["int8"], "source": target.peak.source,
                        "dram_gbs": round(machine.dram_gbs, 2), "cache_gbs": round(machine.cache_gbs, 2),
                        "llc_mib": round(machine.llc_bytes / 2**20, 2),
                        "bandwidth": ("measured on the host" if target.name == "host" and calibration else
                                      f"{DEFAULT_BW_EFFICIENCY:.0%} of the profile's {target.peak.bandwidth_gbs} GB/s; "
                                      f"last-level cache {machine.llc_bytes / 2**20:g} MiB assumed for {target.arch}")},
            "bounds_ms": {k: round(v * 1e3, 6) for k, v in parts.items()},
            "counts": summarize(ops),
        },
    }


__all__ = ["OpCost", "count_ops", "summarize", "dominant_precision", "host_figures", "calibrate",
           "estimate_latency"]
