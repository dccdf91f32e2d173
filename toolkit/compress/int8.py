"""INT8 through ONNX Runtime (``method = "quantize"``, ``scheme = "int8-dynamic" | "int8-static"``).

These schemes work on the parent's ONNX graph (its ``model.onnx``, or an export of its model folder): ONNX Runtime's
transformer optimizer fuses attention/GELU/LayerNorm first (the families the architecture adapter names), then
``quantize_dynamic`` (weights INT8 ahead of time, activations quantized per batch: transformers) or
``quantize_static`` (activation ranges calibrated on real training samples: CNNs) writes
``variants/<name>/model.onnx``. Types and form come from the step's target profile: U8S8 + reduce_range on AVX2
without VNNI (QOperator), S8S8 QDQ on ARM. The accuracy guard then keeps the layers that INT8 hurts most in float
until the variant is within ``max_accuracy_drop`` of its parent on the validation split.

Encoder-decoders (``task.graphs == ("encoder", "decoder")``) are two graphs: optimum's ``encoder_model.onnx`` and
``decoder_model_merged.onnx``, whose layers sit in the two branches of one If node (without / with the KV cache).
Dynamic INT8 quantizes both, the branches included (``EnableSubgraph``, as optimum's ORTQuantizer does), and
writes them under the same names, so generation keeps its cache; the guard measures teacher-forced perplexity
through both graphs and its layer groups are named by graph (``encoder:layers.0``, ``decoder:model/decoder/...``).
Static INT8 of them is refused: ONNX Runtime's calibrator does not reach inside If branches.
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
    """Quantize the parent's ONNX graph(s) with ONNX Runtime into variants/<step.name>/ (model.onnx, or an
    encoder-decoder's encoder_model.onnx + decoder_model_merged.onnx)."""
    import onnx

    from toolkit.compress._shared import data as shared_data
    from toolkit.compress._shared import graphs as common
    from toolkit.compress._shared.guard import guard, record_guard

    emit = ctx.emit
    out_dir = ctx.variant_dir(step.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = ctx.variants()
    fmt = int8_settings(step)
    static = step.scheme == "int8-static"
    if not static:  # dynamic INT8 quantizes activations to uint8 at run time whatever the target (QOperator only)
        fmt["label"] = "U8S8 dynamic" + (" reduce_range" if fmt["reduce_range"] else "")
    roles = tuple(ctx.task.graphs)
    if static and len(roles) > 1:
        # Calibrating the merged decoder would need ranges inside its If branches, which ONNX Runtime's calibrator
        # does not collect (optimum's ORTQuantizer refuses static INT8 of graphs with subgraphs for that reason).
        raise UserError(f"[[compress]] {step.name}: int8-static of {ctx.recipe.task} models is not supported: ONNX "
                        f"Runtime cannot calibrate the merged decoder's If branches; use scheme = 'int8-dynamic'")
    with common.work_dir(out_dir) as work:
        data = _validation_data(ctx, parent, static, step)
        if len(roles) == 1:
            float_path = common.parent_onnx(parent, ctx, work / "float")
            src, optimized = common.ort_fusions(step, parent, variants, float_path, work, data, emit)
            floats, srcs = {"model": float_path}, {"model": src}
        else:  # the optimizer's fusions do not reach inside the merged decoder's If branches: quantize unfused
            floats = srcs = common.parent_graphs(parent, ctx, work / "float")
            optimized = False
        graphs = {r: onnx.load(str(p), load_external_data=False) for r, p in srcs.items()}
        names = [n.name for g in graphs.values() for n in common.nodes(g)]
        for node in step.nodes_to_exclude:
            if node not in names:
                raise UserError(f"[[compress]] {step.name}: nodes_to_exclude: no node '{node}' in "
                                f"{' or '.join(p.name for p in srcs.values())}"
                                f"{did_you_mean(node, [n for n in names if n])}")
        op_types = _check_op_types(step, static, fmt)
        reader = _calibration(step, ctx, data, srcs["model"]) if static else None
        quantizers = {r: _Quantizer(p, work / r, step, fmt, op_types, reader) for r, p in srcs.items()}
        qdq = static and fmt["format"] == "QDQ"
        quantized = {r: common.quantized_nodes(graphs[r], onnx.load(str(q.make(frozenset())), load_external_data=False),
                                               qdq) for r, q in quantizers.items()}
        if not any(quantized.values()):
            before = common.op_counts(next(iter(graphs.values())))
            floats_ops = {k: v for k, v in before.items() if k not in common.SHAPE_OPS} or before
            raise UserError(f"[[compress]] {step.name}: ONNX Runtime's {step.scheme} INT8 found nothing to quantize in "
                            f"the graph of '{parent.name}': these ops stay in float: {common.fmt_counts(floats_ops)}"
                            + ("; scheme = 'int8-static' quantizes more op types" if not static else ""))
        # guard candidates: layer groups; an encoder-decoder's names say which graph ("decoder:model/decoder/layers.0")
        groups = {(g if len(roles) == 1 else f"{r}:{g}"): (r, members)
                  for r in roles for g, members in common.node_groups(graphs[r], quantized[r]).items()}

        def make(kept: Any) -> dict[str, Path]:
            return {r: q.make(frozenset(n for g in kept if groups[g][0] == r for n in groups[g][1]))
                    for r, q in quantizers.items()}

        metric_name = data.primary_metric if data else None
        result = None
        if data is not None and data.validation:
            baseline = shared_data.evaluate_onnx(srcs, data)[metric_name]
            result = guard(lambda kept: shared_data.evaluate_onnx(make(kept), data)[metric_name], baseline,
                           list(groups), step.max_accuracy_drop, data.higher_is_better, emit)
        kept = result.kept_in_float if result else []
        paths = {}
        for r, made in make(kept).items():
            paths[r] = out_dir / common.GRAPH_FILES[r]
            shutil.copyfile(made, paths[r])
        stats = {r: _graph_stats(graphs[r], srcs[r], floats[r], paths[r], qdq) for r in roles}
        info: dict[str, Any] = {
            "scheme": step.scheme, "target": fmt["target"], "int8_format": fmt["label"],
            "activation_type": "uint8 (dynamic: ONNX Runtime quantizes activations to uint8 per batch)"
            if not static else fmt["activation"], "weight_type": fmt["weight"],
            "format": fmt["format"] if static else "QOperator (dynamic)", "per_channel": fmt["per_channel"],
            "reduce_range": fmt["reduce_range"], "optimized": optimized,
            **_totals(stats), "layers_in_float": kept, "nodes_excluded": list(step.nodes_to_exclude),
            "layer_groups": len(groups),
        }
        if len(roles) == 1:
            info.update({k: v for k, v in stats["model"].items() if k != "file"})
        else:
            info["graphs"] = stats
        if reader is not None:
            info["calibration"] = {"method": step.calibration_method, "samples": reader.count, "split": "train"}
        record_guard(info, result, metric_name, lambda: over_budget_note(step, metric_name, result))
        float_ops = info["float_op_types"]
        emit.log(f"{step.name}: {info['quantized_nodes']} nodes INT8 ({fmt['label']}"
                 + (f", {' + '.join(p.name for p in paths.values())}" if len(roles) > 1 else "") + "); in float: "
                 f"{common.fmt_counts(float_ops) or 'none'}" + (f"; layers kept in float: {', '.join(kept)}" if kept else ""))
        if float_ops:
            emit.log(f"{step.name}: these op types stay in float (ONNX Runtime's {step.scheme} INT8 does not cover "
                     f"them): {', '.join(float_ops)}")
        common.copy_bundle(parent, variants, out_dir)
        return Variant(name=step.name, parent=parent.name, method="quantize", path=out_dir, model_dir=None,
                       onnx=paths[roles[0]], info=info, within_budget=result.within_budget if result else None)


def _graph_stats(graph: Any, src: Path, float_path: Path, path: Path, qdq: bool) -> dict[str, Any]:
    """What INT8 did to one graph: sizes, weights, op types, the nodes it reached and those left in float."""
    import onnx

    from toolkit.compress._shared import graphs as common
    from toolkit.variants import size_bytes

    final = common.quantized_nodes(graph, onnx.load(str(path), load_external_data=False), qdq)
    return {"file": path.name, "params_before": common.onnx_params(src), "params_after": common.onnx_params(path),
            "size_bytes": size_bytes(path), "size_bytes_float": size_bytes(float_path),
            "size_ratio": round(size_bytes(path) / max(size_bytes(float_path), 1), 4),
            "op_types_before": common.op_counts(graph), "op_types_after": common.op_counts(path),
            "quantized_nodes": len(final), "quantized_op_types": common.count_types(graph, final),
            "float_op_types": common.float_op_types(graph, final)}


def _totals(stats: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Sizes and counts summed over the graphs (one graph: its own), so every variant's info has the same keys."""
    out = {k: sum(s[k] for s in stats.values())
           for k in ("params_before", "params_after", "size_bytes", "size_bytes_float", "quantized_nodes")}
    out["size_ratio"] = round(out["size_bytes"] / max(out["size_bytes_float"], 1), 4)
    for k in ("quantized_op_types", "float_op_types"):
        out[k] = _merged(s[k] for s in stats.values())
    return out


def _merged(counts: Any) -> dict[str, int]:
    total: dict[str, int] = {}
    for c in counts:
        for k, v in c.items():
            total[k] = total.get(k, 0) + v
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))


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
        from toolkit.compress._shared.graphs import has_subgraphs

        # absolute: the quantizers run in a scratch working folder (toolkit.onnxrt.scratch_cwd)
        self.src, self.work = Path(src).absolute(), Path(work).absolute()
        self.step, self.fmt, self.op_types, self.reader = step, fmt, op_types, reader
        self.made: dict[frozenset, Path] = {}
        self.work.mkdir(parents=True, exist_ok=True)
        # optimum's merged decoder is one If node: its layers are in the branches, which ONNX Runtime quantizes only
        # when asked (what optimum's ORTQuantizer asks for graphs with subgraphs); the weights stay shared
        self.subgraphs = has_subgraphs(src)
        self.keep_float = _unsafe_pools(src) if reader is not None else []

    def make(self, excluded: frozenset) -> Path:
        if excluded in self.made:
            return self.made[excluded]
        import onnx
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

        out = self.work / f"int8-{len(self.made)}.onnx"
        nodes = sorted(set(self.step.nodes_to_exclude) | excluded | set(self.keep_float))
        extra = {"DefaultTensorType": onnx.TensorProto.FLOAT, "EnableSubgraph": self.subgraphs}
        weight = QuantType.QInt8 if self.fmt["weight"] == "int8" else QuantType.QUInt8
        from toolkit.onnxrt import scratch_cwd

        with quiet_ort_logging(), scratch_cwd():
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
        _drop_inferred_shapes(out)
        self.made[excluded] = out
        return out


def _unsafe_pools(src: Path) -> list[str]:
    """AveragePool nodes with ``ceil_mode``, and every node after them, which static INT8 must leave in float:
    ONNX Runtime's QLinearAveragePool divides a window that hangs over the edge by the whole kernel's area, where
    the float op (and PyTorch) divide by the part inside. EfficientNet's pooler is one (a 1280-wide kernel over a
    7x7 map): quantized, its output is all zero point and the logits all zero (measured on a trained EfficientNet:
    label agreement 0.2, cosine 0.0). Keeping the pool alone in float is not enough: ONNX Runtime's graph optimizer
    fuses DequantizeLinear -> AveragePool -> QuantizeLinear back into QLinearAveragePool when it loads the graph,
    so the nodes downstream (a classifier head, in the CNNs that have such a pool) stay float too."""
    import onnx

    model = onnx.load(str(src), load_external_data=False)
    nodes = list(model.graph.node)
    pools = [n for n in nodes if n.op_type == "AveragePool" and any(a.name == "ceil_mode" and a.i for a in n.attribute)]
    tainted = {o for n in pools for o in n.output}
    found = [n.name for n in pools]
    for n in nodes:  # ONNX nodes are in topological order
        if n.name not in found and tainted.intersection(n.input):
            found.append(n.name)
            tainted.update(n.output)
    return found


def _drop_inferred_shapes(path: Path) -> None:
    """Remove the value_info that the quantizer's shape inference leaves in the graph and its If/Loop branches
    (about a thousand entries in a 2-layer merged decoder or a small MobileNetV2, none in the exporter's graph):
    ONNX Runtime infers them again when it loads the graph, so they only add size (measured: a 2-layer T5 decoder
    of width 32 went from 1.02x of its float file to about 0.8x without them; a 37k-parameter MobileNetV2 from
    1.10x to 0.87x, with identical outputs)."""
    import onnx

    from toolkit.compress._shared.graphs import subgraphs

    model = onnx.load(str(path), load_external_data=False)
    pending = [model.graph]
    while pending:
        graph = pending.pop()
        del graph.value_info[:]
        pending.extend(subgraphs(graph))
    onnx.save(model, str(path))


