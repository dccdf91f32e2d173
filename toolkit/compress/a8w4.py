"""8-bit dynamic activations, 4-bit weights for ExecuTorch (``method = "quantize"``, ``scheme = "8da4w"``).

torchao's ``Int8DynamicActivationIntxWeightConfig`` (int4 weights in groups of ``block_size`` with one scale each,
activations quantized to int8 per token at run time) on every linear layer whose input width the group divides, then
transformers' ``TorchExportableModuleForDecoderOnlyLM`` exports the decoder with a static KV cache inside the
program and ExecuTorch's XNNPACK partitioner lowers it: the dynamically quantized 4-bit linears run in XNNPACK's
kernels, the cache stays in the program between calls, so an app generates by calling ``forward`` once per token
(:mod:`toolkit.pte_decoder`). This is what ``optimum-executorch`` does for Hugging Face decoders (its ``8da4w``).

The embedding stays in float32 (the XNNPACK delegate has no embedding lookup; one row is read per token, so its
size costs memory, not speed); a tied LM head is quantized like any linear, so the program holds the embedding
in float and the head in 4 bits (the info says so). GPT-2's ``Conv1D`` layers are turned into ``nn.Linear`` first.

The accuracy guard measures the relative perplexity rise of the quantized model (torchao's reference numerics, in
eager PyTorch) on the validation split and keeps the most sensitive layer groups in float; the lowered program's
own validation perplexity is then measured through the ExecuTorch runtime and recorded beside it.
"""
from __future__ import annotations

import time
from typing import Any

from toolkit.compress.context import Context
from toolkit.compress.quantize import QuantizeConfig
from toolkit.errors import UserError
from toolkit.steps import handler
from toolkit.variants import Variant, size_bytes

EXECUTORCH_EXTRA = "pip install 'edge-toolkit[executorch]'"


def quantize_8da4w(model: Any, block_size: int, keep: set[str] = frozenset()) -> dict[str, Any]:
    """Quantize ``model``'s linear layers in place (int8 dynamic activations, int4 weights per group of
    ``block_size``); modules whose layer group is in ``keep`` stay in float. Returns what was quantized."""
    import torch

    from toolkit.arch.base import as_linear
    from toolkit.compress._shared.graphs import group_of

    with _quiet():
        from torchao.quantization import quantize_
        from torchao.quantization.granularity import PerGroup
        from torchao.quantization.quant_api import Int8DynamicActivationIntxWeightConfig

    as_linear(model)
    chosen, skipped = [], []

    def wanted(module: Any, fqn: str) -> bool:
        if not isinstance(module, torch.nn.Linear):
            return False
        if group_of(fqn.split(".")) in keep or fqn in keep:
            return False
        if module.in_features % block_size:
            skipped.append(fqn)
            return False
        chosen.append(fqn)
        return True

    config = Int8DynamicActivationIntxWeightConfig(weight_dtype=torch.int4, weight_granularity=PerGroup(block_size))
    with _quiet():
        quantize_(model, config, filter_fn=wanted)
    return {"quantized": chosen, "indivisible": skipped}


def _quiet() -> Any:
    """torchao's import and first use print notes about CUDA-only extensions (harmless on CPU)."""
    import contextlib
    import warnings

    stack = contextlib.ExitStack()
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    return stack


@handler(QuantizeConfig, scheme="8da4w")
def a8w4(step: QuantizeConfig, parent: Variant, ctx: Context) -> Variant:
    """8da4w of the parent's PyTorch decoder, lowered to ``variants/<step.name>/model.pte`` with its KV cache."""
    import copy

    from toolkit.compress._shared import data as shared
    from toolkit.compress._shared.graphs import copy_bundle
    from toolkit.compress._shared.guard import guard, record_guard
    from toolkit.compress.pt2e import _module_groups

    emit, task = ctx.emit, ctx.task
    if not parent.has_pytorch:
        raise UserError(f"[[compress]] {step.name}: scheme = '8da4w' quantizes a PyTorch decoder, and variant "
                        f"'{parent.name}' has none (it is ONNX); use scheme = 'int4' or from = a PyTorch variant")
    try:
        import executorch.exir  # noqa: F401
        with _quiet():
            import torchao  # noqa: F401
    except ImportError as e:
        raise UserError(f"[[compress]] {step.name}: scheme = '8da4w' needs ExecuTorch and torchao ({e}): "
                        f"{EXECUTORCH_EXTRA}") from None
    out_dir = ctx.variant_dir(step.name)
    out_dir.mkdir(parents=True, exist_ok=True)
    model = task.load(parent.model_dir).eval()
    params = sum(p.numel() for p in model.parameters())
    groups = _module_groups(model)
    data = None
    try:
        data = shared.split_data(ctx, parent)
    except UserError as e:
        emit.log(f"{step.name}: the accuracy guard is off: {e}", "warning")
    metric = data.primary_metric if data else None
    built: dict[frozenset, Any] = {}

    def build(kept: frozenset) -> Any:
        if kept not in built:
            built.clear()  # one quantized copy at a time: a decoder's copies add up
            q = copy.deepcopy(model)
            q.quantized_8da4w = quantize_8da4w(q, step.block_size, set(kept))
            built[kept] = q
        return built[kept]

    result = None
    if data is not None and data.validation:
        baseline = shared.evaluate_torch(model, data)[metric]
        result = guard(lambda kept: shared.evaluate_torch(build(frozenset(kept)), data)[metric], baseline,
                       list(groups), step.max_accuracy_drop, data.higher_is_better, emit)
    elif data is not None:
        emit.log(f"{step.name}: the validation split is empty: the accuracy guard is off", "warning")
    kept = result.kept_in_float if result else []
    quantized = build(frozenset(kept))
    done = quantized.quantized_8da4w
    if not done["quantized"]:
        raise UserError(f"[[compress]] {step.name}: no linear layer's input width is a multiple of block_size = "
                        f"{step.block_size}; use a block_size that divides them (e.g. 16 or 32)")
    from toolkit.export.executorch import export_pte_decoder

    t0 = time.time()
    path = export_pte_decoder(quantized, out_dir / "model.pte", step.name)
    emit.log(f"{step.name}: lowered to ExecuTorch (XNNPACK, KV cache inside) in {time.time() - t0:.0f} s")
    info: dict[str, Any] = {
        "scheme": "8da4w", "runtime": "executorch", "file": "model.pte", "kv_cache": True,
        "quantizer": (f"torchao Int8DynamicActivationIntxWeightConfig (int4 weights, groups of {step.block_size}, "
                      f"symmetric; int8 activations per token at run time), lowered with XNNPACK"),
        "block_size": step.block_size, "quantized_linears": len(done["quantized"]),
        "linears_in_float": done["indivisible"] + [n for g in kept for n in groups.get(g, [])],
        "indivisible_by_block": done["indivisible"],
        "embedding": "float32 (the XNNPACK delegate has no embedding lookup)",
        "lm_head": ("4-bit (the tie to the embedding is undone: the embedding stays float)"
                    if any(n.endswith("lm_head") for n in done["quantized"]) else "float"),
        "layers_in_float": list(kept), "params_before": params, "params_after": params,
        "size_bytes": size_bytes(path), "size_bytes_float": size_bytes(parent.model_dir / "model.safetensors"),
    }
    record_guard(info, result, metric, lambda: (
        f"8da4w lost more than the budget of {step.max_accuracy_drop:g}: validation {metric} {result.metric:.4f} vs "
        f"{result.baseline:.4f}; try a smaller block_size or raise max_accuracy_drop"))
    if result is not None and data is not None:
        from toolkit.pte_decoder import PteDecoder

        program = PteDecoder(path)
        pairs = [(program.logits(b), b) for b in shared.batches(data.validation, data.collate)]
        info["validation"]["variant_program"] = data.task.metric_from_logits(pairs)[metric]
        info["validation"]["evaluated_with"] = "pytorch (torchao reference numerics); variant_program: executorch"
    emit.log(f"{step.name}: {len(done['quantized'])} linear layers in 4 bits (block {step.block_size}), "
             f"{len(info['linears_in_float'])} in float -> model.pte ({info['size_bytes'] / 1e6:.2f} MB, float "
             f"weights {info['size_bytes_float'] / 1e6:.2f} MB)")
    copy_bundle(parent, ctx.variants(), out_dir)
    return Variant(name=step.name, parent=parent.name, method="quantize", path=out_dir, model_dir=None, onnx=None,
                   info=info, within_budget=result.within_budget if result else None)
