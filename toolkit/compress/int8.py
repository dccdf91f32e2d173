"""INT8 through ONNX Runtime (``method = "quantize"``, ``scheme = "int8-dynamic" | "int8-static"``).

These schemes work on the parent's ONNX graph (its ``model.onnx``, or an export of its model folder): ONNX Runtime's
transformer optimizer fuses attention/GELU/LayerNorm first (the families the architecture adapter names), then
``quantize_dynamic`` (weights INT8 ahead of time, activations quantized per batch: transformers) or
``quantize_static`` (activation ranges calibrated on real training samples: CNNs) writes
``variants/<name>/model.onnx``. Types and form come from the step's target profile: U8S8 + reduce_range on AVX2
without VNNI (QOperator), S8S8 QDQ on ARM. The accuracy guard then keeps the layers that INT8 hurts most in float
until the variant is within ``max_accuracy_drop`` of its parent on the validation split.
"""
from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from toolkit.compress._shared.graphs import quiet_ort_logging
from toolkit.compress.context import Context
from toolkit.compress.quantize import QuantizeConfig, int8_settings, over_budget_note
from toolkit.errors import UserError, did_you_mean
from toolkit.steps import handler
from toolkit.variants import Variant


@handler(QuantizeConfig, scheme="int8-static")
@handler(QuantizeConfig, scheme="int8-dynamic")
def ort_quantize(step: QuantizeConfig, parent: Variant, ctx: Context) -> Variant:
    """Quantize the parent's ONNX graph with ONNX Runtime into variants/<step.name>/model.onnx."""
    import onnx

    from toolkit.compress._shared import data as shared_data
    from toolkit.compress._shared import graphs as common
    from toolkit.compress._shared.guard import guard
    from toolkit.variants import size_bytes

    emit = ctx.emit
    out_dir = ctx.variant_dir(step.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = ctx.variants()
    fmt = int8_settings(step)
    static = step.scheme == "int8-static"
    if not static:  # dynamic INT8 quantizes activations to uint8 at run time whatever the target (QOperator only)
        fmt["label"] = "U8S8 dynamic" + (" reduce_range" if fmt["reduce_range"] else "")
    if len(ctx.task.graphs) > 1:
        raise UserError(f"[[compress]] {step.name}: ONNX Runtime INT8 of {ctx.recipe.task} models (encoder + decoder "
                        f"graphs) is not supported yet; quantize a classifier, CNN or language model, or use "
                        f"scheme = 'pt2e'")
    with common.work_dir(out_dir) as work:
        float_path = common.parent_onnx(parent, ctx, work / "float")
        data = _validation_data(ctx, parent, static, step)
        src, optimized = common.ort_fusions(step, parent, variants, float_path, work, data, emit)
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
            baseline = shared_data.evaluate_onnx(src, data)[metric_name]

            def evaluate(kept: set[str]) -> float:
                excluded = frozenset(n for g in kept for n in groups[g])
                return shared_data.evaluate_onnx(quantizer.make(excluded), data)[metric_name]

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
        parent_size = size_bytes(float_path)
        info: dict[str, Any] = {
            "scheme": step.scheme, "target": fmt["target"], "int8_format": fmt["label"],
            "activation_type": "uint8 (dynamic: ONNX Runtime quantizes activations to uint8 per batch)"
            if not static else fmt["activation"], "weight_type": fmt["weight"],
            "format": fmt["format"] if static else "QOperator (dynamic)", "per_channel": fmt["per_channel"],
            "reduce_range": fmt["reduce_range"], "optimized": optimized,
            "params_before": common.onnx_params(src), "params_after": common.onnx_params(model_path),
            "size_bytes": size_bytes(model_path), "size_bytes_float": parent_size,
            "size_ratio": round(size_bytes(model_path) / max(parent_size, 1), 4),
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
                info["note"] = over_budget_note(step, metric_name, result)
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


def _validation_data(ctx: Context, parent: Variant, static: bool, step: QuantizeConfig) -> Any:
    """The encoded splits, or None (with a warning) when a dynamic step has no way to encode the data."""
    from toolkit.compress._shared.data import split_data

    try:
        data = split_data(ctx, parent)
    except UserError as e:
        if static:
            raise UserError(f"[[compress]] {step.name}: int8-static needs calibration samples: {e}") from None
        ctx.emit.log(f"{step.name}: the accuracy guard is off: {e}", "warning")
        return None
    if not data.validation:
        ctx.emit.log(f"{step.name}: the validation split is empty: the accuracy guard is off", "warning")
        return None if not static else data
    return data


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
    from toolkit import onnxrt
    from toolkit.compress._shared.data import batches

    items = data.sample("train", step.calibration_samples, ctx.recipe.seed) if data is not None else []
    if not items:
        raise UserError(f"[[compress]] {step.name}: the calibration set is empty (the training split has no examples); "
                        f"int8-static needs real samples: check data.train")
    session = onnxrt.open_session(src)
    feeds = [onnxrt.feed(session, b, src) for b in batches(items, data.collate, 8)]
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
        with quiet_ort_logging():
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


