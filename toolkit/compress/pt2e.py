"""INT8 for ExecuTorch (``method = "quantize"``, ``scheme = "pt2e"``): torch.export -> torchao's prepare_pt2e with
the XNNPACK quantizer -> calibrate on real samples -> convert_pt2e -> lowered to a ``.pte`` program.
"""
from __future__ import annotations

import copy
import time
from typing import Any

from toolkit.compress.context import Context
from toolkit.compress.quantize import QuantizeConfig, over_budget_note
from toolkit.errors import UserError
from toolkit.steps import handler
from toolkit.variants import Variant

EXECUTORCH_EXTRA = "pip install 'edge-toolkit[executorch]'"


@handler(QuantizeConfig, scheme="pt2e")
def pt2e(step: QuantizeConfig, parent: Variant, ctx: Context) -> Variant:
    """torch.export -> prepare_pt2e (XNNPACK quantizer) -> calibrate on real samples -> convert_pt2e -> .pte.

    Transformers get dynamic activation quantization (XNNPACK's dynamically quantized linear), CNNs static
    per-channel INT8 calibrated on ``calibration_samples`` training samples. The guard evaluates the converted
    module (reference INT8 numerics) and keeps layers in float through the quantizer's filter.
    """
    import torch

    from toolkit.arch import adapter_for
    from toolkit.compress._shared import data as common
    from toolkit.compress._shared.guard import guard
    from toolkit.export.logits import Logits
    from toolkit.variants import size_bytes

    task = ctx.task
    if not parent.has_pytorch:
        raise UserError(f"[[compress]] {step.name}: scheme = 'pt2e' quantizes a PyTorch model, and variant "
                        f"'{parent.name}' has none (it is ONNX); use an int8-* scheme or from = a PyTorch variant")
    if not task.classifies:
        raise UserError(f"[[compress]] {step.name}: scheme = 'pt2e' supports classifiers and CNNs (ExecuTorch's "
                        f"XNNPACK path); for {task.name} use scheme = 'int8-dynamic'")
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
    wrapper = Logits(model, names).eval()
    graph = _capture(wrapper, example, model)
    # transformers: XNNPACK's dynamically quantized linear; CNNs: static activation ranges from calibration
    dynamic = adapter_for(model).kind == "transformer"
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
    # the program's example: one row, token inputs at the latency length (dynamic axes are tried first)
    one = {k: torch.nn.functional.pad(v, (0, max(0, seq - v.shape[1])), value=0)[:, :seq]
           if v.dim() == 2 and not v.is_floating_point() else v for k, v in one.items()}
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
        "size_bytes": size_bytes(out_dir / "model.pte"),
        "size_bytes_float": size_bytes(parent.model_dir / "model.safetensors"),
        "calibration": {"samples": len(calib), "split": "train"},
        "quantized_ops": quantized, "float_ops": linear - quantized, "layers_in_float": list(kept),
    }
    if result is not None:
        info["guard"] = result.to_info(metric)
        info["validation"] = {"metric": metric, "parent": result.baseline, "variant": result.metric,
                              "evaluated_with": "pytorch (converted PT2E module)"}
        if not result.within_budget:
            info["note"] = over_budget_note(step, metric, result)
    ctx.emit.log(f"{step.name}: PT2E INT8: {quantized} of {linear} linear/conv ops quantized -> model.pte "
                 f"({info['size_bytes'] / 1e6:.2f} MB)")
    from toolkit.compress._shared.graphs import copy_bundle

    copy_bundle(parent, ctx.variants(), out_dir)
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

    from toolkit.compress._shared.graphs import group_of

    groups: dict[str, list[str]] = {}
    for name, module in model.named_modules():
        if isinstance(module, (torch.nn.Linear, torch.nn.Conv1d, torch.nn.Conv2d)) and name:
            groups.setdefault(group_of(name.split(".")) or name, []).append(name)
    return groups


def _in_groups(node: Any, groups: frozenset) -> bool:
    """Whether a graph node comes from a module of one of ``groups`` (torch.export's nn_module_stack)."""
    from toolkit.compress._shared.graphs import group_of

    for path, _ in (node.meta.get("nn_module_stack") or {}).values():
        if group_of(path.removeprefix("model.").split(".")) in groups:
            return True
    return False
