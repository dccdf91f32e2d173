"""FP16 (``method = "fp16"``): the parent's ONNX graph with float16 weights and arithmetic, for GPU and ARM
targets that run half precision (Jetson's CUDA/TensorRT, phones with ARMv8.2 fp16).

Converted by ONNX Runtime's own ``onnxruntime.transformers.float16.convert_float_to_float16`` (the converter of
onnxconverter-common, shipped with onnxruntime), with float32 inputs and outputs kept (``keep_io_types``) so a
caller feeds the same arrays as to the float model. ONNX Runtime's CPU provider inserts casts around ops it has no
float16 kernel for, so the file also runs (slowly) on the host, which is how the guard measures it.

Encoder-decoders get both graphs in float16 under the names the other stages look for (``encoder_model.onnx``,
``decoder_model_merged.onnx``): the decoder is converted as optimum's two graphs without and with past, merged
afterwards by optimum's ``merge_decoders`` (the converter cannot convert the merged graph: see :func:`_convert`).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
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
    """Convert the parent's ONNX graph(s) to float16 into variants/<step.name>/ (model.onnx, or an
    encoder-decoder's encoder_model.onnx + decoder_model_merged.onnx)."""
    import onnx

    from toolkit.compress._shared import graphs as common
    from toolkit.compress._shared.data import evaluate_onnx, split_data
    from toolkit.compress._shared.guard import guard, record_guard

    out_dir = ctx.variant_dir(step.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    variants = ctx.variants()
    roles = tuple(ctx.task.graphs)
    with common.work_dir(out_dir) as work:
        try:
            data = split_data(ctx, parent)
        except UserError as e:
            ctx.emit.log(f"{step.name}: the accuracy guard is off: {e}", "warning")
            data = None
        if len(roles) == 1:
            float_path = common.parent_onnx(parent, ctx, work / "float")
            src, optimized = common.ort_fusions(step, parent, variants, float_path, work, data, ctx.emit,
                                                    share_tied=True)
            floats, srcs, parts = {"model": float_path}, {"model": src}, {"model": [src]}
        else:
            floats = srcs = common.parent_graphs(parent, ctx, work / "float", keep_unmerged=True)
            parts = {"encoder": [srcs["encoder"]], "decoder": _unmerged(step, parent, srcs["decoder"])}
            optimized = False
        # the guard's candidates, named by graph when there are two; a decoder's layers are named alike in its
        # graphs without and with past, so one name blocks the layer in both
        graphs = {r: onnx.load(str(p[0])) for r, p in parts.items()}
        groups: dict[str, tuple[str, list[str]]] = {}
        for r, graph in graphs.items():
            compute = {n.name for n in common.nodes(graph) if n.name and n.op_type in FP16_OPS}
            for g, members in common.node_groups(graph, compute).items():
                groups[g if len(roles) == 1 else f"{r}:{g}"] = (r, members)
        made: dict[tuple[str, frozenset], Path] = {}

        def make(kept: Any) -> dict[str, Path]:
            out = {}
            for r in roles:
                blocked = frozenset(n for g in kept if groups[g][0] == r for n in groups[g][1])
                if (r, blocked) not in made:
                    made[r, blocked] = _convert(step, parts[r], blocked, work / f"fp16-{r}-{len(made)}.onnx")
                out[r] = made[r, blocked]
            return out

        result = None
        metric = data.primary_metric if data is not None else None
        if data is not None and data.validation:
            baseline = evaluate_onnx(srcs, data)[metric]
            result = guard(lambda kept: evaluate_onnx(make(kept), data)[metric],
                           baseline, list(groups), step.max_accuracy_drop, data.higher_is_better, ctx.emit)
        kept = result.kept_in_float if result else []
        paths = {}
        for r, path in make(kept).items():
            paths[r] = out_dir / common.GRAPH_FILES[r]
            shutil.copyfile(path, paths[r])
        stats = {r: _stats(srcs[r], floats[r], paths[r]) for r in roles}
        info: dict[str, Any] = {
            "precision": "float16", "keep_io_types": step.keep_io_types, "optimized": optimized,
            "converter": "onnxruntime.transformers.float16.convert_float_to_float16"
            + ("" if len(roles) == 1 else " (decoder without and with past, merged by optimum.onnx.merge_decoders)"),
            **{k: sum(s[k] for s in stats.values()) for k in ("params_before", "params_after", "float16_initializers",
                                                               "initializers", "size_bytes", "size_bytes_float")},
            "layers_in_float": kept,
        }
        info["size_ratio"] = round(info["size_bytes"] / max(info["size_bytes_float"], 1), 4)
        if len(roles) == 1:
            info.update({k: v for k, v in stats["model"].items() if k != "file"})
        else:
            info["graphs"] = stats
        record_guard(info, result, metric, lambda: (
            f"FP16 lost more than the budget of {step.max_accuracy_drop:g}: validation {metric} {result.metric:.4f} "
            f"vs {result.baseline:.4f} for the parent; the variant is kept and flagged."))
        ctx.emit.log(f"{step.name}: float16 ONNX, {info['float16_initializers']} of {info['initializers']} "
                     f"initializers in float16, {info['size_ratio']:.0%} of the float32 file"
                     + ("s" if len(roles) > 1 else "")
                     + (f"; layers kept in float32: {', '.join(kept)}" if kept else ""))
        common.copy_bundle(parent, variants, out_dir)
        return Variant(name=step.name, parent=parent.name, method="fp16", path=out_dir, model_dir=None,
                       onnx=paths[roles[0]], info=info, within_budget=result.within_budget if result else None)


def _unmerged(step: FP16Config, parent: Variant, merged: Path) -> list[Path]:
    """optimum's decoder without and with past, beside the merged decoder.

    Raises:
        UserError: only the merged decoder exists (an ONNX-only parent).
    """
    found = [merged.with_name(n) for n in ("decoder_model.onnx", "decoder_with_past_model.onnx")]
    if not all(p.is_file() for p in found):
        raise UserError(f"[[compress]] {step.name}: fp16 of an encoder-decoder converts optimum's decoder_model.onnx "
                        f"and decoder_with_past_model.onnx and merges them (ONNX Runtime's float16 converter breaks "
                        f"the merged decoder's If branches); '{parent.name}' has neither nor a model folder to export "
                        f"them from: set from = a PyTorch variant")
    return found


def _convert(step: FP16Config, sources: list[Path], blocked: frozenset, out: Path) -> Path:
    """One graph in float16 with ``blocked`` nodes kept in float32; a decoder's two graphs (without, with past)
    are converted one by one and merged into one graph switched by ``use_cache_branch``, as optimum's export
    merges them.

    Converting the merged decoder itself gives graphs ONNX Runtime rejects (onnxruntime 1.32, measured): with
    ``keep_io_types`` the converter renames the outputs inside the If branches ("Subgraph output (logits) is an
    outer scope value"), and the casts it puts around blocked ops (Range, Min, Max) land in the top-level graph
    where the values they read do not exist.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    kwargs = {"op_block_list": list(step.op_block_list)} if step.op_block_list else {}
    converted = [convert_float_to_float16(onnx.load(str(p)), keep_io_types=step.keep_io_types,
                                          node_block_list=sorted(blocked) or None, **kwargs) for p in sources]
    if len(converted) == 1:
        onnx.save(converted[0], str(out))
        return out
    from onnxruntime.transformers.onnx_model import OnnxModel
    from optimum.onnx import merge_decoders

    for model in converted:  # the converter appends its casts at the end; the merge checks the graphs' node order
        OnnxModel(model).topological_sort()
    # strict=False: the decoder with past does not return the cross-attention cache, which stays constant
    merge_decoders(converted[0], converted[1], save_path=str(out), strict=False)
    return out


def _stats(src: Path, float_path: Path, path: Path) -> dict[str, Any]:
    import onnx

    from toolkit.compress._shared import graphs as common
    from toolkit.variants import size_bytes

    converted = onnx.load(str(path))
    return {"file": path.name, "params_before": common.onnx_params(src), "params_after": common.onnx_params(path),
            "float16_initializers": sum(1 for i in converted.graph.initializer
                                        if i.data_type == onnx.TensorProto.FLOAT16),
            "initializers": len(converted.graph.initializer), "size_bytes": size_bytes(path),
            "size_bytes_float": size_bytes(float_path),
            "size_ratio": round(size_bytes(path) / max(size_bytes(float_path), 1), 4),
            "op_types_before": common.op_counts(src), "op_types_after": common.op_counts(converted)}
