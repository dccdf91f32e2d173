"""FP16 (``method = "fp16"``): the parent's ONNX graph with float16 weights and arithmetic, for GPU and ARM
targets that run half precision (Jetson's CUDA/TensorRT, phones with ARMv8.2 fp16).

Converted by ONNX Runtime's own ``onnxruntime.transformers.float16.convert_float_to_float16`` (the converter of
onnxconverter-common, shipped with onnxruntime), with float32 inputs and outputs kept (``keep_io_types``) so a
caller feeds the same arrays as to the float model. ONNX Runtime's CPU provider inserts casts around ops it has no
float16 kernel for, so the file also runs (slowly) on the host, which is how the guard measures it.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from typing import Any

from toolkit.compress.context import Context
from toolkit.errors import UserError
from toolkit.schema import setting
from toolkit.steps import StepConfig, handler, method
from toolkit.variants import Variant

FP16_OPS = {"Conv", "ConvTranspose", "MatMul", "Gemm", "Attention", "EmbedLayerNormalization", "LSTM",
            "LayerNormalization", "SkipLayerNormalization"}
"""op types whose layers the guard may keep in float32"""


@method("fp16")
@dataclass
class FP16Config(StepConfig):
    """[[compress]] method = "fp16": float16 ONNX for GPU / ARM targets."""

    keep_io_types: bool = setting(True, "keep float32 inputs and outputs (casts inside the graph)")
    op_block_list: list[str] = setting([], "op types kept in float32 (empty: onnxruntime's default list)")
    optimize: bool = setting(True, "run ONNX Runtime's transformer optimizer first (BERT/GPT-2 fusions), as ORT advises for fp16")
    max_accuracy_drop: float = setting(0.01, "accuracy guard: largest drop of the validation metric vs the parent "
                                  "(fraction; language models: relative perplexity rise)")

    def check(self, where: str) -> None:
        if not 0 <= self.max_accuracy_drop <= 1:
            raise UserError(f"{where}: max_accuracy_drop = {self.max_accuracy_drop}: must be a fraction in [0, 1]")


@handler(FP16Config)
def fp16(step: FP16Config, parent: Variant, ctx: Context) -> Variant:
    """Convert the parent's ONNX graph to float16 into variants/<step.name>/model.onnx."""
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    from toolkit.compress._shared import graphs as common
    from toolkit.compress._shared.data import evaluate_onnx, split_data
    from toolkit.compress._shared.guard import guard
    from toolkit.variants import size_bytes

    out_dir = ctx.variant_dir(step.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = ctx.variants()
    if len(ctx.task.graphs) > 1:
        raise UserError(f"[[compress]] {step.name}: fp16 of {ctx.recipe.task} models (encoder + decoder graphs) is "
                        f"not supported yet")
    with common.work_dir(out_dir) as work:
        float_path = common.parent_onnx(parent, ctx, work / "float")
        try:
            data = split_data(ctx, parent)
        except UserError as e:
            ctx.emit.log(f"{step.name}: the accuracy guard is off: {e}", "warning")
            data = None
        src, optimized = common.ort_fusions(step, parent, variants, float_path, work, data, ctx.emit)
        graph = onnx.load(str(src))
        compute = {n.name for n in graph.graph.node if n.name and n.op_type in FP16_OPS}
        groups = common.node_groups(graph, compute)
        made: dict[frozenset, Any] = {}

        def make(blocked: frozenset):
            if blocked not in made:
                out = work / f"fp16-{len(made)}.onnx"
                kwargs = {"op_block_list": list(step.op_block_list)} if step.op_block_list else {}
                converted = convert_float_to_float16(onnx.load(str(src)), keep_io_types=step.keep_io_types,
                                                     node_block_list=sorted(blocked) or None, **kwargs)
                onnx.save(converted, str(out))
                made[blocked] = out
            return made[blocked]

        result = None
        metric = data.primary_metric if data is not None else None
        if data is not None and data.validation:
            baseline = evaluate_onnx(src, data)[metric]
            result = guard(lambda kept: evaluate_onnx(make(frozenset(n for g in kept for n in groups[g])),
                                                      data)[metric],
                           baseline, list(groups), step.max_accuracy_drop, data.higher_is_better, ctx.emit)
        kept = result.kept_in_float if result else []
        model_path = out_dir / "model.onnx"
        shutil.copyfile(make(frozenset(n for g in kept for n in groups[g])), model_path)
        converted = onnx.load(str(model_path))
        fp16_inits = sum(1 for i in converted.graph.initializer if i.data_type == onnx.TensorProto.FLOAT16)
        parent_size = size_bytes(float_path)
        info: dict[str, Any] = {
            "precision": "float16", "keep_io_types": step.keep_io_types, "optimized": optimized,
            "converter": "onnxruntime.transformers.float16.convert_float_to_float16",
            "params_before": common.onnx_params(src), "params_after": common.onnx_params(model_path),
            "float16_initializers": fp16_inits, "initializers": len(converted.graph.initializer),
            "size_bytes": size_bytes(model_path), "size_bytes_float": parent_size,
            "size_ratio": round(size_bytes(model_path) / max(parent_size, 1), 4),
            "op_types_before": common.op_counts(graph), "op_types_after": common.op_counts(converted),
            "layers_in_float": kept,
        }
        if result is not None:
            info["guard"] = result.to_info(metric)
            info["validation"] = {"metric": metric, "parent": result.baseline, "variant": result.metric}
            if not result.within_budget:
                info["note"] = (f"FP16 lost more than the budget of {step.max_accuracy_drop:g}: validation {metric} "
                                f"{result.metric:.4f} vs {result.baseline:.4f} for the parent; the variant is kept "
                                f"and flagged.")
        ctx.emit.log(f"{step.name}: float16 ONNX, {fp16_inits} of {len(converted.graph.initializer)} initializers "
                     f"in float16, {info['size_ratio']:.0%} of the float32 file"
                     + (f"; layers kept in float32: {', '.join(kept)}" if kept else ""))
        common.copy_bundle(parent, variants, out_dir)
        return Variant(name=step.name, parent=parent.name, method="fp16", path=out_dir, model_dir=None,
                       onnx=model_path, info=info, within_budget=result.within_budget if result else None)
