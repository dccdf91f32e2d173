"""Quantization-aware training (``method = "quantize"``, ``scheme = "qat"``).

The method, exactly (also written to ``Variant.info["method_detail"]``):
1. Fake quantization is attached to the parent's PyTorch model, mirroring what ONNX Runtime's QDQ quantizer
   will do: every Linear / Conv1D / Conv2d weight goes through ``torch.fake_quantize_per_channel_affine``
   (symmetric int8 per output channel, [-127, 127], or [-64, 64] with the target's reduce_range), embedding
   tables through a per-tensor symmetric fake quant (ORT quantizes Gather's table per tensor), and every input
   of those layers through ``torch.fake_quantize_per_tensor_affine`` (asymmetric, uint8 [0, 255] or int8
   [-128, 127] per the target's activation type, zero always representable) with min/max ranges observed over
   a few calibration batches and then tracked by an exponential moving average (factor 0.01) while training.
   Gradients pass straight through (STE) inside the range.
2. A short fine-tune (``qat_steps`` optimizer steps at ``qat_lr``) through the trainer's loop, checkpointed under
   variants/<name>/checkpoints/; its validation runs with the fake quantization on.
3. The fake quantization is removed; the fine-tuned float weights are saved (variants/<name>/qat_float/) and
   exported to ONNX (toolkit.export.onnx).
4. ``onnxruntime.quantization.quantize_static`` writes a QDQ graph: MatMul/Gemm/Conv with weights and Gather
   (embeddings), per-channel weights, and each quantized layer's input range set to the range learned in
   training (``TensorQuantOverrides`` rmin/rmax; the ONNX weight initializer is matched to its PyTorch layer by
   value). Matrix products of two activations (attention scores) stay in float, as they were in training.
   MatMul/Gemm outputs stay float (ORT fuses the pattern into MatMulIntegerToFloat); Conv outputs are quantized
   over the following ReLU6's range, which is the next layer's learned input range. A torch.onnx export folds
   BatchNorm into the conv before it: per-channel symmetric quantization is unchanged by that per-channel
   scaling, so the fake quant of the unfolded weight is the same quantization. Tensors without a learned range
   are calibrated (MinMax) on training examples.
"""
from __future__ import annotations

import functools
import hashlib
import tempfile
from pathlib import Path
from typing import Any

from toolkit.compress._shared.finetune import finetune, pytorch_parent, train_settings, weights_bytes
from toolkit.compress.context import Context
from toolkit.compress.quantize import QuantizeConfig
from toolkit.errors import UserError
from toolkit.steps import handler
from toolkit.variants import Variant

EMA = 0.01
QUANTIZED_OPS = ["MatMul", "Gemm", "Conv", "Gather"]


@functools.cache
def _modules() -> tuple[type, type]:
    """(WeightFakeQuant, ActivationObserver): nn.Modules built on first use (no torch import at parse time)."""
    import torch
    from torch import nn

    class WeightFakeQuant(nn.Module):
        """Parametrization w -> fake-quantized w: symmetric [-qmax, qmax] per channel along ``axis`` (a layer's
        weight), or asymmetric [qmin, qmax] per tensor when ``axis`` is None (an embedding table, which ORT
        quantizes like an activation: over its min/max, zero included)."""

        def __init__(self, axis: int | None, qmin: int, qmax: int) -> None:
            super().__init__()
            self.axis, self.qmin, self.qmax = axis, qmin, qmax

        def forward(self, w: torch.Tensor) -> torch.Tensor:
            if self.axis is None:
                lo, hi = w.detach().min().clamp(max=0.0), w.detach().max().clamp(min=0.0)
                if self.qmin == -self.qmax:  # symmetric: zero point 0
                    hi = torch.maximum(hi, -lo)
                    lo = -hi
                scale = ((hi - lo) / (self.qmax - self.qmin)).clamp(min=1e-12).float().reshape(1)
                zero = torch.round(self.qmin - lo / scale).clamp(self.qmin, self.qmax).to(torch.int32).reshape(1)
                return torch.fake_quantize_per_tensor_affine(w, scale, zero, self.qmin, self.qmax)
            dims = [d for d in range(w.dim()) if d != self.axis]
            scale = (w.detach().abs().amax(dim=dims) / self.qmax).clamp(min=1e-12).float()
            zero = torch.zeros_like(scale, dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(w, scale, zero, self.axis, -self.qmax, self.qmax)

    class ActivationObserver(nn.Module):
        """Forward pre-hook state: min/max of a layer's input (true extremes while calibrating, then an EMA while
        training) and the per-tensor fake quant of that input."""

        def __init__(self, qmin: int, qmax: int) -> None:
            super().__init__()
            self.qmin, self.qmax = qmin, qmax
            self.register_buffer("lo", torch.tensor(float("inf")))
            self.register_buffer("hi", torch.tensor(float("-inf")))
            self.mode = "calibrate"  # calibrate | train | off

        def __call__(self, module: nn.Module, args: tuple) -> tuple:
            """Forward pre-hook: the layer's input."""
            return args if self.mode == "off" else (self.observe(module, args[0]), *args[1:])

        def observe(self, module: nn.Module, x: torch.Tensor) -> torch.Tensor:
            if self.mode == "off":
                return x
            lo, hi = x.detach().min().float(), x.detach().max().float()
            if self.mode == "calibrate":
                self.lo.copy_(torch.minimum(self.lo, lo))
                self.hi.copy_(torch.maximum(self.hi, hi))
                return x
            if module.training:
                self.lo.add_(EMA * (lo - self.lo))
                self.hi.add_(EMA * (hi - self.hi))
            return self.fake_quant(x)

        def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
            lo, hi = torch.clamp(self.lo, max=0.0), torch.clamp(self.hi, min=0.0)  # ORT keeps 0 representable
            scale = ((hi - lo) / (self.qmax - self.qmin)).clamp(min=1e-12).reshape(1)
            zero = torch.clamp(torch.round(self.qmin - lo / scale), self.qmin, self.qmax).to(torch.int32).reshape(1)
            return scale, zero

        def fake_quant(self, x: torch.Tensor) -> torch.Tensor:
            scale, zero = self.qparams()
            return torch.fake_quantize_per_tensor_affine(x, scale, zero, self.qmin, self.qmax)

    return WeightFakeQuant, ActivationObserver


def quantized_layers(model: Any) -> list[tuple[str, Any, int]]:
    """(name, module, output-channel axis of its weight) of every Linear / Conv1D (GPT-2) / Conv2d."""
    from toolkit.arch import adapter_for

    return adapter_for(model).linear_layers(model)


class FakeQuantizer:
    """Attaches and removes the fake quantization of one model (see the module docstring)."""

    def __init__(self, model: Any, fmt: dict[str, Any]) -> None:
        import torch
        from torch.nn.utils import parametrize

        weight_fq, observer = _modules()
        reduce = bool(fmt.get("reduce_range"))
        qmax_w = 64 if reduce else 127
        uint8 = fmt.get("activation", "uint8") == "uint8"
        qmin_a, qmax_a = (0, 255) if uint8 else (-128, 127)
        # ORT stores an embedding table like a weight (reduce_range applies) but of the activation type
        qmin_e, qmax_e = ((0, 127) if uint8 else (-64, 64)) if reduce else (qmin_a, qmax_a)
        self.model, self.layers, self.observers, self.hooks = model, quantized_layers(model), {}, []
        self.outputs: dict[str, Any] = {}
        modules = dict(model.named_modules())
        for name, m, axis in self.layers:
            per_channel = fmt.get("per_channel", True)  # else one symmetric scale per weight, as ORT does then
            parametrize.register_parametrization(m, "weight", weight_fq(axis if per_channel else None, -qmax_w, qmax_w))
            obs = observer(qmin_a, qmax_a)
            m.add_module("qat_input", obs)  # a submodule: its min/max buffers go into the checkpoints
            self.hooks.append(m.register_forward_pre_hook(obs))
            self.observers[name] = obs
            if isinstance(m, torch.nn.Conv2d):
                # ORT also quantizes a Conv's output (BatchNorm folded in): observe the BatchNorm's output
                parent, _, index = name.rpartition(".")
                nxt = modules.get(f"{parent}.{int(index) + 1}" if parent and index.isdigit() else "")
                out_mod = nxt if isinstance(nxt, torch.nn.BatchNorm2d) else m
                out_obs = observer(qmin_a, qmax_a)
                m.add_module("qat_output", out_obs)
                self.hooks.append(out_mod.register_forward_hook(lambda mod, args, y, o=out_obs: o.observe(mod, y)))
                self.outputs[name] = out_obs
        self.embeddings = [m for m in model.modules() if isinstance(m, torch.nn.Embedding)]
        for m in self.embeddings:
            parametrize.register_parametrization(m, "weight", weight_fq(None, qmin_e, qmax_e))

    def mode(self, mode: str) -> None:
        for obs in [*self.observers.values(), *self.outputs.values()]:
            obs.mode = mode

    def ranges(self) -> dict[str, tuple[float, float]]:
        """Learned ranges, as ORT will use them: layer name -> (rmin, rmax) of its input, and
        "<conv name>:output" -> that of a conv's output (after its BatchNorm)."""
        found = {**self.observers, **{f"{n}:output": o for n, o in self.outputs.items()}}
        return {n: (min(float(o.lo), 0.0), max(float(o.hi), 0.0)) for n, o in found.items()
                if float(o.lo) <= float(o.hi)}

    def remove(self) -> None:
        """Back to a plain float model holding the fine-tuned weights."""
        from torch.nn.utils import parametrize

        for h in self.hooks:
            h.remove()
        for _, m, _ in self.layers:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)
            del m.qat_input
            if hasattr(m, "qat_output"):
                del m.qat_output
        for m in self.embeddings:
            parametrize.remove_parametrizations(m, "weight", leave_parametrized=False)


def calibrate(fq: FakeQuantizer, prepared: Any, batch_size: int, n_batches: int, device: Any) -> None:
    """Initial activation ranges: true min/max over the first training batches (no fake quant yet)."""
    import torch

    from toolkit.tasks.common import batches

    fq.mode("calibrate")
    model = fq.model.to(device).eval()
    with torch.no_grad():
        for i, batch in enumerate(batches(prepared.train_set, batch_size, prepared.collate, device)):
            if i >= n_batches:
                break
            model(**batch)
    model.to("cpu")
    fq.mode("train")


# ---- ONNX side -------------------------------------------------------------------------------------------------

def _key(array: Any) -> str:
    import numpy as np

    a = np.ascontiguousarray(array, dtype=np.float32)
    return hashlib.sha1(str(a.shape).encode() + a.tobytes()).hexdigest()


def learned_overrides(onnx_path: Path, model: Any, ranges: dict[str, tuple[float, float]]) -> tuple[dict, list[str], int]:
    """(TensorQuantOverrides from the learned ranges, activation x activation MatMul nodes, layers matched).

    Each MatMul/Gemm/Conv weight initializer is matched to its PyTorch layer by value (Linear weights appear
    transposed in MatMul), so the layer's learned input range becomes the range of the node's input tensor.
    """
    import numpy as np
    import onnx
    from onnx import numpy_helper

    by_key: dict[str, str] = {}
    convs = []
    for name, m, _ in quantized_layers(model):
        w = m.weight.detach().cpu().numpy()
        by_key[_key(w)] = name
        if w.ndim == 2:
            by_key.setdefault(_key(w.T), name)
        else:
            convs.append((name, w.shape))
    graph = onnx.load(str(onnx_path)).graph
    inits = {i.name: i for i in graph.initializer}
    overrides: dict[str, list[dict[str, Any]]] = {}
    float_matmuls, matched = [], 0
    for node in graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv"):
            continue
        weight = next((x for x in node.input[1:2] if x in inits), None)
        if weight is None:
            if node.op_type == "MatMul":
                float_matmuls.append(node.name)  # Q.K^T and probs.V: never fake-quantized in training
            continue
        array = numpy_helper.to_array(inits[weight])
        layer = by_key.get(_key(array))
        if layer is None and node.op_type == "Conv":
            # torch.onnx folds BatchNorm into the conv before it: other values, same shape, same order.
            layer = next((n for n, shape in convs if shape == array.shape), None)
        if layer is None or layer not in ranges:
            continue
        convs = [c for c in convs if c[0] != layer]
        matched += 1
        for tensor, key in ((node.input[0], layer), (node.output[0], f"{layer}:output")):
            if key in ranges:
                lo, hi = ranges[key]
                old = overrides.get(tensor, [{"rmin": lo, "rmax": hi}])[0]
                # ORT wants numpy scalars here (it reads .dtype)
                overrides[tensor] = [{"rmin": np.float32(min(lo, old["rmin"])), "rmax": np.float32(max(hi, old["rmax"]))}]
    return overrides, float_matmuls, matched


def initializer_bytes(path: Path) -> int:
    """Bytes of a graph's stored tensors (weights, scales, zero points): the size without the graph's structure."""
    import onnx

    return sum(len(i.raw_data) or onnx.numpy_helper.to_array(i).nbytes for i in onnx.load(str(path)).graph.initializer)


def onnx_logits(path: Path, prepared: Any, items: Any, batch_size: int = 32) -> tuple[Any, Any]:
    """(logits (N, K), labels (N,)) of an ONNX classifier on ``items``, with ONNX Runtime on the CPU."""
    import numpy as np

    from toolkit import onnxrt
    from toolkit.tasks.common import batches

    session = onnxrt.open_session(path)
    out, labels = [], []
    for batch in batches(items, batch_size, prepared.collate, "cpu"):
        out.append(onnxrt.logits(session, batch, path))
        labels.append(batch["labels"].numpy())
    return np.concatenate(out), np.concatenate(labels)


class _Reader:
    """onnxruntime CalibrationDataReader over training batches."""

    def __init__(self, path: Path, prepared: Any, count: int) -> None:
        from toolkit import onnxrt
        from toolkit.tasks.common import batches

        session = onnxrt.open_session(path)
        items = list(prepared.train_set)[:count]
        if not items:
            raise UserError("qat: no training examples to calibrate the quantized graph on; check data.train")
        self.feeds = [onnxrt.feed(session, b, path) for b in batches(items, 8, prepared.collate, "cpu")]
        self.i = 0

    def get_next(self) -> dict[str, Any] | None:
        self.i += 1
        return self.feeds[self.i - 1] if self.i <= len(self.feeds) else None

    def rewind(self) -> None:
        self.i = 0


def _quantize(src: Path, dst: Path, reader: _Reader, fmt: dict[str, Any], overrides: dict, exclude: list[str]) -> None:
    import logging

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    reader.rewind()
    act = QuantType.QUInt8 if fmt.get("activation", "uint8") == "uint8" else QuantType.QInt8
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # ORT logs a 'consider pre-processing' warning on the root logger every call
    from toolkit.onnxrt import scratch_cwd

    try:
        with scratch_cwd():  # ORT's shape inference leaves files in the working folder
            quantize_static(str(Path(src).absolute()), str(Path(dst).absolute()), reader,
                            quant_format=QuantFormat.QDQ, op_types_to_quantize=QUANTIZED_OPS,
                            per_channel=bool(fmt.get("per_channel", True)), reduce_range=bool(fmt.get("reduce_range")),
                            activation_type=act, weight_type=QuantType.QInt8, nodes_to_exclude=list(exclude),
                            calibrate_method=CalibrationMethod.MinMax,
                            # MatMul/Gemm outputs stay float (ORT runs MatMulIntegerToFloat), as in training
                            extra_options={"TensorQuantOverrides": overrides, "WeightSymmetric": True,
                                           "ActivationSymmetric": False,
                                           "OpTypesToExcludeOutputQuantization": ["MatMul", "Gemm"]})
    finally:
        root.setLevel(level)
    _float_side_inputs(dst)


def _float_side_inputs(path: Path) -> int:
    """Let every consumer other than the int8 layers read the float tensor again.

    ORT's QDQ quantizer replaces a quantized activation for all its consumers, so a residual Add or a LayerNorm
    would read the rounded copy; in training only the quantized layers' inputs were rounded (and rounding the
    residual stream costs accuracy for nothing: those ops run in float anyway). Returns the inputs rewired.
    """
    import onnx

    model = onnx.load(str(path))
    nodes = model.graph.node
    q_input = {n.output[0]: n.input[0] for n in nodes if n.op_type == "QuantizeLinear"}
    float_of = {n.output[0]: q_input[n.input[0]] for n in nodes
                if n.op_type == "DequantizeLinear" and n.input[0] in q_input}
    keep = {*QUANTIZED_OPS, "Clip", "Relu", "QuantizeLinear", "DequantizeLinear"}
    rewired = 0
    for n in nodes:
        if n.op_type in keep:
            continue
        for i, name in enumerate(n.input):
            if name in float_of:
                n.input[i] = float_of[name]
                rewired += 1
    if rewired:
        onnx.save(model, str(path))
    return rewired


def _accuracy(logits: Any, labels: Any) -> float:
    return float((logits.argmax(-1) == labels).mean()) if len(labels) else float("nan")


def _cosine(a: Any, b: Any) -> float:
    import numpy as np

    num = (a * b).sum(-1)
    den = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    return float((num / np.maximum(den, 1e-12)).mean())


@handler(QuantizeConfig, scheme="qat")
def run_qat(step: Any, parent: Variant, ctx: Context) -> Variant:
    """Quantization-aware training of the parent's PyTorch model, exported as an INT8 QDQ ONNX graph.

    Args:
        step: the quantize step (``name``, ``target``, ``qat_steps`` (200), ``qat_lr`` (1e-5),
            ``calibration_samples``, ``max_accuracy_drop``; missing keys take those defaults).
        parent: a variant with a PyTorch model folder.
        ctx: the compression context.

    Returns:
        Variant with ``onnx`` = variants/<name>/model.onnx (ONNX only: ``model_dir`` is None, so the export
        stage keeps this INT8 graph); the fine-tuned float weights stay in variants/<name>/qat_float/.

    Raises:
        UserError: a task other than classification, an ONNX-only parent, no training examples.
    """
    import dataclasses

    from toolkit.compress._shared.finetune import device_for
    from toolkit.export.bundle import copy_bundle_files
    from toolkit.export.onnx import export_onnx
    from toolkit.rundir import atomic_dir
    from toolkit.targets import int8_format

    where = f"{ctx.recipe.source_path or 'recipe'}: [[compress]] '{step.name}' (quantize, scheme = \"qat\")"
    task = ctx.task
    if not task.classifies:
        raise UserError(f"{where}: QAT exports single-graph classifiers (text and image classification); for "
                        f"{task.name} use scheme = \"int8-dynamic\"")
    model_dir = pytorch_parent(parent, where, "quantization-aware training")
    target = getattr(step, "target", "") or "host"
    fmt = int8_format(target)
    qat_steps, qat_lr = int(getattr(step, "qat_steps", 200) or 200), float(getattr(step, "qat_lr", 1e-5) or 1e-5)
    settings = train_settings(ctx.recipe, max_steps=qat_steps, lr=qat_lr)
    settings = dataclasses.replace(settings, train=dataclasses.replace(settings.train, precision="fp32"))
    prepared = ctx.prepare(model_dir)
    model = prepared.model
    probe = list(prepared.val_set or prepared.eval_set)[:256]
    parent_accuracy = ctx.task.evaluate(model, prepared, probe, settings.train.batch_size, device_for(settings))["accuracy"]
    model.to("cpu")
    fq = FakeQuantizer(model, fmt)
    calibrate(fq, prepared, settings.train.batch_size, 8, device_for(settings))
    result = finetune(ctx, step, prepared, model, recipe=settings, phase="qat", sources=(model_dir,))
    ranges = fq.ranges()
    fq.remove()
    vdir = ctx.variant_dir(step.name)
    float_dir = vdir / "qat_float"
    with atomic_dir(float_dir) as tmp:
        prepared.save(model, tmp)
    out = vdir / "model.onnx"
    with tempfile.TemporaryDirectory(prefix="qat-") as tmp_name:
        tmp = Path(tmp_name)
        example = {k: v for k, v in prepared.collate(list(prepared.train_set)[:2]).items() if k != "labels"}
        exported = export_onnx(float_dir, tmp / "float", task, opset=ctx.recipe.export.opset, example_inputs=example)
        float_onnx = exported.files[0]
        overrides, float_matmuls, matched = learned_overrides(float_onnx, model, ranges)
        reader = _Reader(float_onnx, prepared, int(getattr(step, "calibration_samples", 0) or 64))
        ref, labels = onnx_logits(float_onnx, prepared, probe)
        kept: list[str] = []
        _quantize(float_onnx, tmp / "int8.onnx", reader, fmt, overrides, float_matmuls)
        q, _ = onnx_logits(tmp / "int8.onnx", prepared, probe)
        budget = float(getattr(step, "max_accuracy_drop", 0) or 0)
        guard_info: dict[str, Any] = {}
        if budget > 0:
            import onnx

            from toolkit.compress._shared.graphs import node_groups
            from toolkit.compress._shared.guard import guard

            groups = node_groups(onnx.load(str(float_onnx)), {n.name for n in _weight_nodes(float_onnx)})

            def evaluate(keep: set[str]) -> float:
                if not keep:
                    return _accuracy(q, labels)
                exclude = float_matmuls + [n for g in sorted(keep) for n in groups[g]]
                _quantize(float_onnx, tmp / "try.onnx", reader, fmt, overrides, exclude)
                return _accuracy(onnx_logits(tmp / "try.onnx", prepared, probe)[0], labels)

            verdict = guard(evaluate, parent_accuracy, list(groups), budget, True, ctx.emit)
            kept = list(verdict.kept_in_float)
            if kept:
                _quantize(float_onnx, tmp / "int8.onnx", reader, fmt, overrides,
                          float_matmuls + [n for g in kept for n in groups[g]])
                q, _ = onnx_logits(tmp / "int8.onnx", prepared, probe)
            guard_info = {"guard": verdict.to_info("accuracy"), "within_budget": verdict.within_budget}
        float_size, float_init = float_onnx.stat().st_size, initializer_bytes(float_onnx)
        out.parent.mkdir(parents=True, exist_ok=True)
        (tmp / "int8.onnx").replace(out)
    copy_bundle_files(model_dir, vdir)
    fmt_label = ("U8" if fmt.get("activation", "uint8") == "uint8" else "S8") + "S8 QDQ" + (
        " reduce_range" if fmt.get("reduce_range") else "")
    info = {
        "scheme": "qat", "target": target, "int8_format": fmt_label, "qat_steps": qat_steps, "qat_lr": qat_lr,
        "method_detail": __doc__.split("The method, exactly", 1)[1].split("\n", 1)[1].strip(),
        "layers_fake_quantized": len(fq.layers), "ranges_learned": matched, "layers_in_float": kept,
        "float_matmuls": len(float_matmuls), "size_bytes": out.stat().st_size, "float_size_bytes": float_size,
        "initializer_bytes": initializer_bytes(out), "float_initializer_bytes": float_init,
        "float_weights_bytes": weights_bytes(float_dir), "float_model_dir": str(float_dir),
        "accuracy_parent": parent_accuracy, "accuracy_float": _accuracy(ref, labels), "accuracy_int8": _accuracy(q, labels),
        "cosine_to_float": _cosine(q, ref), "checked_on": f"{len(probe)} validation examples, ONNX Runtime CPU",
        "finetune": {"steps": result.state.step, "validation": result.validation},
        **{k: v for k, v in guard_info.items() if k != "within_budget"},
    }
    ctx.emit.log(f"{step.name}: QAT {qat_steps} steps, {fmt_label}; {float_size:,} -> {info['size_bytes']:,} bytes, "
                 f"accuracy {info['accuracy_float']:.4f} (float) -> {info['accuracy_int8']:.4f} (int8)")
    within_budget = guard_info.get("within_budget")
    if within_budget is False:
        info["note"] = (f"QAT int8 accuracy {info['accuracy_int8']:.4f} vs the parent's {parent_accuracy:.4f} on "
                        f"validation: over max_accuracy_drop = {budget:g} even with layers kept in float; kept, flagged")
    return Variant(name=step.name, parent=parent.name, method="quantize", path=vdir, onnx=out, info=info,
                   within_budget=within_budget)


def _weight_nodes(path: Path) -> list[Any]:
    """MatMul/Gemm/Conv nodes with a weight initializer: what the guard may keep in float."""
    import onnx

    graph = onnx.load(str(path)).graph
    inits = {i.name for i in graph.initializer}
    return [n for n in graph.node if n.op_type in ("MatMul", "Gemm", "Conv") and n.input[1:2]
            and n.input[1] in inits]
