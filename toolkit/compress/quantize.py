"""INT8 quantization (``method = "quantize"``): ONNX Runtime dynamic/static INT8, torchao PT2E for ExecuTorch,
and quantization-aware training (delegated to qat.py).

ONNX Runtime schemes work on the parent's ONNX graph (its ``model.onnx``, or an export of its model folder):
ORT's transformer optimizer fuses attention/GELU/LayerNorm first (BERT- and GPT-2-style models), then
``quantize_dynamic`` (weights INT8 ahead of time, activations quantized per batch: transformers) or
``quantize_static`` (activation ranges calibrated on real training samples: CNNs) writes
``variants/<name>/model.onnx``. Types and form come from the step's target profile: U8S8 + reduce_range on AVX2
without VNNI (QOperator), S8S8 QDQ on ARM. The accuracy guard (guard.py) then keeps the layers that INT8 hurts
most in float until the variant is within ``max_accuracy_drop`` of its parent on the validation split.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from toolkit.compress.registry import Context, StepConfig, Variant, handler, method
from toolkit.config import _f
from toolkit.errors import UserError, did_you_mean

SCHEMES = ("int8-dynamic", "int8-static", "qat", "pt2e")
CALIBRATION_METHODS = ("MinMax", "Entropy", "Percentile")
ORT_MODEL_TYPES = {"bert": "bert", "roberta": "bert", "distilbert": "bert", "xlm-roberta": "bert",
                   "camembert": "bert", "electra": "bert", "gpt2": "gpt2"}
"""config.json model_type -> onnxruntime.transformers.optimizer model_type (others are not fused)"""



@method("quantize")
@dataclass
class QuantizeConfig(StepConfig):
    """[[compress]] method = "quantize": INT8 (ONNX Runtime, torchao PT2E, QAT)."""

    scheme: str = _f("int8-dynamic", "int8-dynamic (ONNX Runtime; transformers) | int8-static (ONNX Runtime with "
                     "calibration; CNNs) | qat (fake-quantized fine-tune, exported as ONNX QDQ) | pt2e (torchao PT2E "
                     "+ XNNPACK quantizer, lowered to ExecuTorch .pte)")
    target: str = _f("host", "device profile whose INT8 format is produced (U8S8 + reduce_range on AVX2 without VNNI, "
                     "S8S8 QDQ on ARM)")
    calibration_samples: int = _f(128, "int8-static / pt2e: real training samples used to calibrate activation ranges")
    calibration_method: str = _f("MinMax", "int8-static: MinMax | Entropy | Percentile")
    per_channel: bool | str = _f("target", "one weight scale per output channel: true | false | \"target\" (the profile's)")
    reduce_range: bool | str = _f("target", "7-bit weights (AVX2 without VNNI): true | false | \"target\" (the profile's)")
    op_types: list[str] = _f([], "op types to quantize, e.g. [\"MatMul\", \"Attention\"] (empty: all that ONNX Runtime can)")
    nodes_to_exclude: list[str] = _f([], "ONNX node names to keep in float")
    max_accuracy_drop: float = _f(0.01, "accuracy guard: largest drop of the validation metric vs the parent (fraction: "
                                  "0.01 = 1 point; language models: relative perplexity rise); sensitive layers stay "
                                  "in float to meet it")
    optimize: bool = _f(True, "run ONNX Runtime's transformer optimizer (attention/GELU/LayerNorm fusions) first")
    qat_steps: int = _f(200, "qat: fine-tuning steps with fake quantization")
    qat_lr: float = _f(1e-5, "qat: learning rate of the fine-tune")

    def check(self, where: str) -> None:
        if self.scheme not in SCHEMES:
            raise UserError(f"{where}: scheme = '{self.scheme}' is not a scheme{did_you_mean(self.scheme, list(SCHEMES))}")
        if self.calibration_method not in CALIBRATION_METHODS:
            raise UserError(f"{where}: calibration_method = '{self.calibration_method}' is not one of "
                            f"{', '.join(CALIBRATION_METHODS)}{did_you_mean(self.calibration_method, list(CALIBRATION_METHODS))}")
        if self.calibration_samples < 1:
            raise UserError(f"{where}: calibration_samples = {self.calibration_samples}: an empty calibration set "
                            f"cannot set activation ranges; use at least 1 (e.g. 128)")
        for key in ("per_channel", "reduce_range"):
            value = getattr(self, key)
            if isinstance(value, str) and value != "target":
                raise UserError(f"{where}: {key} = \"{value}\": expected true, false or \"target\"")
        if not 0 <= self.max_accuracy_drop <= 1:
            raise UserError(f"{where}: max_accuracy_drop = {self.max_accuracy_drop}: must be a fraction in [0, 1] "
                            f"(0.01 = one accuracy point)")
        if self.qat_steps < 1:
            raise UserError(f"{where}: qat_steps = {self.qat_steps}: must be at least 1")
        if not self.qat_lr > 0:
            raise UserError(f"{where}: qat_lr = {self.qat_lr}: must be a positive number, e.g. 1e-5")
        from toolkit.targets import load_target

        try:
            load_target(self.target)
        except UserError as e:
            raise UserError(f"{where}: target: {e}") from None


def int8_settings(step: QuantizeConfig) -> dict[str, Any]:
    """The INT8 format for the step: the target profile's, with the step's per_channel/reduce_range overrides."""
    from toolkit.targets import load_target

    target = load_target(step.target)
    fmt = target.int8
    per_channel = fmt.per_channel if step.per_channel == "target" else bool(step.per_channel)
    reduce_range = fmt.reduce_range if step.reduce_range == "target" else bool(step.reduce_range)
    kind = ("U8" if fmt.activation == "uint8" else "S8") + "S8"
    return {"target": target.name, "activation": fmt.activation, "weight": fmt.weight, "format": fmt.format,
            "per_channel": per_channel, "reduce_range": reduce_range,
            "label": " ".join([kind, fmt.format] + (["reduce_range"] if reduce_range else []))}


@handler(QuantizeConfig)
def quantize(step: QuantizeConfig, parent: Variant, ctx: Context) -> Variant:
    """Quantize ``parent`` per ``step.scheme`` into variants/<step.name>/."""
    if step.scheme == "qat":
        try:
            from toolkit.compress.qat import run_qat
        except ImportError as e:
            raise UserError(f"[[compress]] {step.name}: scheme = 'qat' is not available in this build ({e})") from None
        return run_qat(step, parent, ctx)
    if step.scheme == "pt2e":
        return _pt2e(step, parent, ctx)
    return _ort_quantize(step, parent, ctx)


# ---- ONNX Runtime -----------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_ort_logging() -> Iterator[None]:
    # The quantizer logs "consider pre-processing" and per-node notes on the root logger; our events say what matters.
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        root.setLevel(level)


def _ort_quantize(step: QuantizeConfig, parent: Variant, ctx: Context) -> Variant:
    import onnx

    from toolkit.compress import common
    from toolkit.compress.guard import guard

    emit = ctx.emit
    out_dir = ctx.variant_dir(step.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    work = out_dir / ".work"
    common.remove_tree(work)
    work.mkdir()
    variants = common.variants_of(ctx)
    fmt = int8_settings(step)
    static = step.scheme == "int8-static"
    if not static:  # dynamic INT8 quantizes activations to uint8 at run time whatever the target (QOperator only)
        fmt["label"] = "U8S8 dynamic" + (" reduce_range" if fmt["reduce_range"] else "")
    try:
        if ctx.recipe.task == "seq2seq":
            raise UserError(f"[[compress]] {step.name}: ONNX Runtime INT8 of seq2seq models (encoder + decoder graphs) "
                            f"is not supported yet; quantize a classifier, CNN or language model, or use scheme = 'pt2e'")
        float_path = common.parent_onnx(parent, ctx, work / "float")
        data = _validation_data(ctx, parent, static, step)
        src, optimized = _maybe_optimize(step, parent, variants, float_path, work, data, emit)
        graph = onnx.load(str(src), load_external_data=False)
        names = [n.name for n in graph.graph.node]
        for node in step.nodes_to_exclude:
            if node not in names:
                raise UserError(f"[[compress]] {step.name}: nodes_to_exclude: no node '{node}' in {src.name}"
                                f"{did_you_mean(node, [n for n in names if n])}")
        op_types = _check_op_types(step, static, fmt)
        reader = _calibration(step, ctx, data, src) if static else None
        quantizer = _Quantizer(src, work, step, fmt, op_types, reader)
        full = quantizer.make(frozenset())
        qdq = static and fmt["format"] == "QDQ"
        quantized = common.quantized_nodes(graph, onnx.load(str(full), load_external_data=False), qdq)
        before = common.op_counts(graph)
        if not quantized:
            floats = {k: v for k, v in before.items() if k not in common.SHAPE_OPS} or before
            raise UserError(f"[[compress]] {step.name}: ONNX Runtime's {step.scheme} INT8 found nothing to quantize in "
                            f"the graph of '{parent.name}': these ops stay in float: {common.fmt_counts(floats)}"
                            + ("; scheme = 'int8-static' quantizes more op types" if not static else ""))
        groups = common.node_groups(graph, quantized)
        metric_name = data.primary_metric if data else None
        if data is not None and data.validation:
            baseline = common.evaluate_onnx(src, data)[metric_name]

            def evaluate(kept: set[str]) -> float:
                excluded = frozenset(n for g in kept for n in groups[g])
                return common.evaluate_onnx(quantizer.make(excluded), data)[metric_name]

            result = guard(evaluate, baseline, list(groups), step.max_accuracy_drop, data.higher_is_better, emit)
        else:
            result = None
        kept = result.kept_in_float if result else []
        final = quantizer.make(frozenset(n for g in kept for n in groups[g]))
        model_path = out_dir / "model.onnx"
        shutil.copyfile(final, model_path)
        after = common.op_counts(model_path)
        final_quantized = common.quantized_nodes(graph, onnx.load(str(model_path), load_external_data=False), qdq)
        float_ops = common.float_op_types(graph, final_quantized)
        parent_size = common.size_bytes(float_path)
        info: dict[str, Any] = {
            "scheme": step.scheme, "target": fmt["target"], "int8_format": fmt["label"],
            "activation_type": "uint8 (dynamic: ONNX Runtime quantizes activations to uint8 per batch)"
            if not static else fmt["activation"], "weight_type": fmt["weight"],
            "format": fmt["format"] if static else "QOperator (dynamic)", "per_channel": fmt["per_channel"],
            "reduce_range": fmt["reduce_range"], "optimized": optimized,
            "params_before": common.onnx_params(src), "params_after": common.onnx_params(model_path),
            "size_bytes": common.size_bytes(model_path), "size_bytes_float": parent_size,
            "size_ratio": round(common.size_bytes(model_path) / max(parent_size, 1), 4),
            "op_types_before": before, "op_types_after": after, "quantized_nodes": len(final_quantized),
            "quantized_op_types": common.count_types(graph, final_quantized), "float_op_types": float_ops,
            "layers_in_float": kept, "nodes_excluded": list(step.nodes_to_exclude),
            "layer_groups": len(groups),
        }
        if reader is not None:
            info["calibration"] = {"method": step.calibration_method, "samples": reader.count, "split": "train"}
        if result is not None:
            info["guard"] = result.to_info(metric_name)
            info["validation"] = {"metric": metric_name, "parent": result.baseline, "variant": result.metric}
            if not result.within_budget:
                info["note"] = _over_budget_note(step, metric_name, result)
        else:
            info["guard"] = {"skipped": "no validation data for this model (see the log)"}
        emit.log(f"{step.name}: {len(final_quantized)} nodes INT8 ({fmt['label']}); in float: "
                 f"{common.fmt_counts(float_ops) or 'none'}" + (f"; layers kept in float: {', '.join(kept)}" if kept else ""))
        if float_ops:
            emit.log(f"{step.name}: these op types stay in float (ONNX Runtime's {step.scheme} INT8 does not cover "
                     f"them): {', '.join(float_ops)}")
        common.copy_bundle(parent, variants, out_dir)
        return Variant(name=step.name, parent=parent.name, method="quantize", path=out_dir, model_dir=None,
                       onnx=model_path, info=info, within_budget=result.within_budget if result else None)
    finally:
        common.remove_tree(work)


def _validation_data(ctx: Context, parent: Variant, static: bool, step: QuantizeConfig):
    """The encoded splits, or None (with a warning) when a dynamic step has no way to encode the data."""
    from toolkit.compress import common

    try:
        data = common.split_data(ctx, parent)
    except UserError as e:
        if static:
            raise UserError(f"[[compress]] {step.name}: int8-static needs calibration samples: {e}") from None
        ctx.emit.log(f"{step.name}: the accuracy guard is off: {e}", "warning")
        return None
    if not data.validation:
        ctx.emit.log(f"{step.name}: the validation split is empty: the accuracy guard is off", "warning")
        return None if not static else data
    return data


def _maybe_optimize(step: QuantizeConfig, parent: Variant, variants: dict, float_path: Path, work: Path,
                    data: Any, emit: Any) -> tuple[Path, Any]:
    """ORT's transformer optimizer on BERT/GPT-2-style graphs; checked against the float graph on real inputs."""
    import json

    from toolkit.compress import common

    if not step.optimize:
        return float_path, False
    mtype = common.model_type_of(parent, variants)
    ort_type = ORT_MODEL_TYPES.get(mtype or "")
    if ort_type is None:
        return float_path, False
    if getattr(step, "scheme", "") == "int8-static":
        # ORT's static quantizer has no QLinear/QDQ form of the fused Attention/SkipLayerNormalization ops (it fails
        # on them), so static INT8 of a transformer works on the unfused graph; ORT fuses what it can at load time.
        emit.log(f"{step.name}: int8-static quantizes the unfused {mtype} graph (ONNX Runtime's static quantizer "
                 f"cannot quantize its fused attention ops)")
        return float_path, {"skipped": "static INT8 of fused transformer ops is not supported by ONNX Runtime"}
    from onnxruntime.transformers.optimizer import optimize_model

    from toolkit.export.common import first_line

    cfg = json.loads((common.bundle_source(parent, variants) / "config.json").read_text(encoding="utf-8"))
    heads = cfg.get("num_attention_heads", cfg.get("n_head", 0))
    hidden = cfg.get("hidden_size", cfg.get("n_embd", 0))
    out = work / "optimized.onnx"
    try:
        with _quiet_ort_logging():
            model = optimize_model(str(float_path), model_type=ort_type, num_heads=heads, hidden_size=hidden)
            model.save_model_to_file(str(out))
        fusions = {k: v for k, v in model.get_fused_operator_statistics().items() if v}
    except Exception as e:  # the optimizer raises many types on graphs it does not know; INT8 works without it
        emit.log(f"{step.name}: ONNX Runtime's transformer optimizer failed ({first_line(e)[:200]}); quantizing the "
                 f"unfused graph", "warning")
        return float_path, False
    if data is not None and data.validation:
        # A fusion that misreads the graph (wrong head count) changes the outputs: keep the graph only if it agrees.
        batch = data.collate(list(data.validation[:8]))
        a = common.onnx_logits(common.onnx_session(float_path), batch)
        b = common.onnx_logits(common.onnx_session(out), batch)
        if a.shape != b.shape or abs(a - b).max() > 1e-3 * max(1.0, abs(a).max()):
            emit.log(f"{step.name}: the fused graph's outputs differ from the float graph's; quantizing the unfused "
                     f"graph", "warning")
            return float_path, False
    return out, {"model_type": ort_type, "fusions": fusions}


def _check_op_types(step: QuantizeConfig, static: bool, fmt: dict[str, Any]) -> list[str] | None:
    from onnxruntime.quantization import registry

    table = (registry.QDQRegistry if fmt["format"] == "QDQ" else registry.QLinearOpsRegistry) if static \
        else registry.IntegerOpsRegistry
    known = sorted(set(table) | ({"Gemm"} if not static else set()))
    for op in step.op_types:
        if op not in known:
            raise UserError(f"[[compress]] {step.name}: op_types: ONNX Runtime's {step.scheme} INT8 cannot quantize "
                            f"'{op}'{did_you_mean(op, known)}")
    return list(step.op_types) or None


class _CalibrationReader:
    """ONNX Runtime's CalibrationDataReader over batches of real samples (rewindable for the guard's reruns)."""

    def __init__(self, feeds: list[dict[str, Any]], count: int):
        self.feeds, self.count, self._i = feeds, count, 0

    def get_next(self) -> dict[str, Any] | None:
        if self._i >= len(self.feeds):
            return None
        self._i += 1
        return self.feeds[self._i - 1]

    def rewind(self) -> None:
        self._i = 0


def _calibration(step: QuantizeConfig, ctx: Context, data: Any, src: Path) -> _CalibrationReader:
    from toolkit.compress import common

    items = data.sample("train", step.calibration_samples, ctx.recipe.seed) if data is not None else []
    if not items:
        raise UserError(f"[[compress]] {step.name}: the calibration set is empty (the training split has no examples); "
                        f"int8-static needs real samples: check data.train")
    session = common.onnx_session(src)
    feeds = [common.onnx_feed(session, b) for b in common.batches(items, data.collate, 8)]
    return _CalibrationReader(feeds, len(items))


class _Quantizer:
    """Makes INT8 graphs of one float graph with given nodes kept in float; each setting is made once."""

    def __init__(self, src: Path, work: Path, step: QuantizeConfig, fmt: dict[str, Any], op_types: list[str] | None,
                 reader: _CalibrationReader | None):
        self.src, self.work, self.step, self.fmt, self.op_types, self.reader = src, work, step, fmt, op_types, reader
        self.made: dict[frozenset, Path] = {}

    def make(self, excluded: frozenset) -> Path:
        if excluded in self.made:
            return self.made[excluded]
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

        out = self.work / f"int8-{len(self.made)}.onnx"
        nodes = sorted(set(self.step.nodes_to_exclude) | excluded)
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT}
        weight = QuantType.QInt8 if self.fmt["weight"] == "int8" else QuantType.QUInt8
        with _quiet_ort_logging():
            if self.reader is None:
                quantize_dynamic(self.src, out, op_types_to_quantize=self.op_types, per_channel=self.fmt["per_channel"],
                                 reduce_range=self.fmt["reduce_range"], weight_type=weight, nodes_to_exclude=nodes,
                                 extra_options=extra)
            else:
                self.reader.rewind()
                quantize_static(
                    self.src, out, self.reader,
                    quant_format=QuantFormat.QDQ if self.fmt["format"] == "QDQ" else QuantFormat.QOperator,
                    op_types_to_quantize=self.op_types, per_channel=self.fmt["per_channel"],
                    reduce_range=self.fmt["reduce_range"],
                    activation_type=QuantType.QUInt8 if self.fmt["activation"] == "uint8" else QuantType.QInt8,
                    weight_type=weight, nodes_to_exclude=nodes,
                    calibrate_method=getattr(CalibrationMethod, self.step.calibration_method), extra_options=extra,
                    # ranges do not depend on which nodes stay float: calibrate once, reuse for the guard's tries
                    calibration_cache_path=self.work / "calibration.json")
        self.made[excluded] = out
        return out


def _over_budget_note(step: QuantizeConfig, metric: str, result: Any) -> str:
    best = result.best_partial
    tried = (f"; keeping {len(best['kept_in_float'])} layer groups in float reached {best['metric']:.4f} at best"
             if best and best.get("kept_in_float") else "")
    return (f"INT8 ({step.scheme}) lost more than the budget of {step.max_accuracy_drop:g}: validation {metric} "
            f"{result.metric:.4f} vs {result.baseline:.4f} for the parent{tried}. The INT8 variant is kept and "
            f"flagged; raise max_accuracy_drop, try scheme = 'qat', or keep the parent.")


# ---- torchao PT2E for ExecuTorch ---------------------------------------------------------------------------------

EXECUTORCH_EXTRA = "pip install 'edge-toolkit[executorch]'"


def _pt2e(step: QuantizeConfig, parent: Variant, ctx: Context) -> Variant:
    """torch.export -> prepare_pt2e (XNNPACK quantizer) -> calibrate on real samples -> convert_pt2e -> .pte.

    Transformers get dynamic activation quantization (XNNPACK's dynamically quantized linear), CNNs static
    per-channel INT8 calibrated on ``calibration_samples`` training samples. The guard evaluates the converted
    module (reference INT8 numerics) and keeps layers in float through the quantizer's filter.
    """
    import torch

    from toolkit.compress import common
    from toolkit.compress.guard import guard
    from toolkit.export.common import Logits

    task = ctx.recipe.task
    if parent.model_dir is None:
        raise UserError(f"[[compress]] {step.name}: scheme = 'pt2e' quantizes a PyTorch model, and variant "
                        f"'{parent.name}' has none (it is ONNX); use an int8-* scheme or from = a PyTorch variant")
    if task not in ("text-classification", "image-classification"):
        raise UserError(f"[[compress]] {step.name}: scheme = 'pt2e' supports classifiers and CNNs (ExecuTorch's "
                        f"XNNPACK path); for {task} use scheme = 'int8-dynamic'")
    try:
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
            XNNPACKQuantizer, get_symmetric_quantization_config)
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    except ImportError as e:
        raise UserError(f"[[compress]] {step.name}: scheme = 'pt2e' needs ExecuTorch and torchao ({e}): "
                        f"{EXECUTORCH_EXTRA}") from None
    out_dir = ctx.variant_dir(step.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    data = common.split_data(ctx, parent)
    calib = data.sample("train", step.calibration_samples, ctx.recipe.seed)
    if not calib:
        raise UserError(f"[[compress]] {step.name}: the calibration set is empty (the training split has no examples)")
    model = ctx.task.load(parent.model_dir).eval()
    example = {k: v for k, v in data.collate(calib[:4]).items() if k != "labels"}
    names = list(example)
    wrapper = Logits(model, names, task).eval()
    graph = _capture(wrapper, example, model)
    dynamic = task == "text-classification"
    groups = _module_groups(model)

    def build(kept: frozenset) -> torch.nn.Module:
        quantizer = XNNPACKQuantizer().set_global(
            get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic))
        if kept:
            quantizer.set_filter_function(lambda node: not _in_groups(node, kept))
        prepared = prepare_pt2e(copy.deepcopy(graph), quantizer)
        with torch.no_grad():
            for batch in common.batches(calib, data.collate, 8):
                prepared(*[batch[n] for n in names])
        return convert_pt2e(prepared)

    built: dict[frozenset, torch.nn.Module] = {}

    def get(kept: frozenset) -> torch.nn.Module:
        if kept not in built:
            built[kept] = build(kept)
        return built[kept]

    metric = data.primary_metric
    result = None
    if data.validation:
        baseline = common.evaluate_torch(wrapper, data)[metric]
        result = guard(lambda kept: common.evaluate_torch(get(frozenset(kept)), data)[metric], baseline,
                       list(groups), step.max_accuracy_drop, data.higher_is_better, ctx.emit)
    else:
        ctx.emit.log(f"{step.name}: the validation split is empty: the accuracy guard is off", "warning")
    kept = result.kept_in_float if result else []
    converted = get(frozenset(kept))
    from toolkit.export.executorch import export_pte

    seq = min(ctx.recipe.data.max_length, ctx.recipe.eval.latency.seq_len)
    one = {k: v[:1] for k, v in data.collate(calib[:1]).items() if k != "labels"}
    if dynamic:  # the program's example: one row at the latency length (dynamic axes are tried first)
        one = {k: torch.nn.functional.pad(v, (0, max(0, seq - v.shape[1])), value=0)[:, :seq] for k, v in one.items()}
    # export_pte bounds the dynamic sequence axis by the model's position table, read from .config: give the
    # captured graph the model's config so that bound matches the one it was captured with.
    converted.config = getattr(model, "config", None)
    t0 = time.time()
    exported = export_pte(converted, out_dir, task, example_inputs=one)
    ctx.emit.log(f"{step.name}: lowered to ExecuTorch (XNNPACK) in {time.time() - t0:.0f} s, shapes: "
                 f"{exported.extra.get('shapes')}")
    linear = sum(1 for n in converted.graph.nodes if n.op == "call_function" and
                 any(k in str(n.target) for k in ("aten.linear", "aten.conv")))
    quantized = sum(1 for n in converted.graph.nodes if n.op == "call_function" and
                    any(k in str(n.target) for k in ("aten.linear", "aten.conv")) and
                    any("dequantize" in str(getattr(a, "target", "")) for a in n.args[1:2]))
    params = sum(p.numel() for p in model.parameters())
    info: dict[str, Any] = {
        "scheme": "pt2e", "quantizer": "XNNPACKQuantizer (symmetric, per-channel weights, "
        + ("dynamic activations)" if dynamic else "static activations)"), "int8_format": "S8S8 (XNNPACK)",
        "target": step.target, "runtime": "executorch", "file": "model.pte", "exporter": exported.exporter,
        "shapes": exported.extra.get("shapes"), "params_before": params, "params_after": params,
        "size_bytes": common.size_bytes(out_dir / "model.pte"),
        "size_bytes_float": common.size_bytes(parent.model_dir / "model.safetensors"),
        "calibration": {"samples": len(calib), "split": "train"},
        "quantized_ops": quantized, "float_ops": linear - quantized, "layers_in_float": list(kept),
    }
    if result is not None:
        info["guard"] = result.to_info(metric)
        info["validation"] = {"metric": metric, "parent": result.baseline, "variant": result.metric,
                              "evaluated_with": "pytorch (converted PT2E module)"}
        if not result.within_budget:
            info["note"] = _over_budget_note(step, metric, result)
    ctx.emit.log(f"{step.name}: PT2E INT8: {quantized} of {linear} linear/conv ops quantized -> model.pte "
                 f"({info['size_bytes'] / 1e6:.2f} MB)")
    common.copy_bundle(parent, common.variants_of(ctx), out_dir)
    return Variant(name=step.name, parent=parent.name, method="quantize", path=out_dir, model_dir=None, onnx=None,
                   info=info, within_budget=result.within_budget if result else None)


def _capture(wrapper: Any, example: dict[str, Any], model: Any) -> Any:
    """torch.export of the wrapper (dynamic batch and sequence axes where the model allows) as a GraphModule."""
    import torch
    from torch.export import Dim

    args = tuple(example.values())
    shapes = []
    batch = Dim("batch_size", min=1, max=64)
    limit = getattr(getattr(model, "config", None), "max_position_embeddings", 512)
    seq = Dim("sequence_length", min=1, max=limit)
    for v in args:
        shapes.append({0: batch, 1: seq} if v.dim() == 2 and not v.is_floating_point() else {0: batch})
    with torch.no_grad():
        try:
            return torch.export.export(wrapper, args, dynamic_shapes=(tuple(shapes),)).module()
        except Exception:  # some models specialise a dimension: fall back to the example's shapes
            return torch.export.export(wrapper, args).module()


def _module_groups(model: Any) -> dict[str, list[str]]:
    """Layer groups of a torch model's Linear/Conv modules (same names as the ONNX groups: 'bert/encoder/layer.0')."""
    import torch

    from toolkit.compress import common

    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)) and name:
            groups.setdefault(common.group_of(name.split(".")) or name, []).append(name)
    return groups


def _in_groups(node: Any, groups: frozenset) -> bool:
    """Whether a graph node comes from a module of one of ``groups`` (torch.export's nn_module_stack)."""
    from toolkit.compress import common

    for path, _ in (node.meta.get("nn_module_stack") or {}).values():
        if common.group_of(path.removeprefix("model.").split(".")) in groups:
            return True
    return False
