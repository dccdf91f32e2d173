"""Pruning (``method = "prune"``): unstructured (weights) or structured (heads, FFN neurons, CNN channels).

- ``kind = "unstructured"``: global magnitude pruning (``torch.nn.utils.prune.global_unstructured``) raised
  during the fine-tune on Zhu & Gupta's (2017) cubic schedule ``s_t = s_f (1 - (1 - t / t_end)^3)``, the masks
  updated every ``prune_every`` optimizer steps by an optimizer step hook, then made permanent with
  ``prune.remove``. The zeros shrink the gzip-compressed file; dense runtimes (ONNX Runtime, ExecuTorch) still
  multiply them, so the model is no faster.
- ``kind = "structured"``: removes whole attention heads and FFN neurons (transformers) or channels (CNNs), the
  way the model's architecture adapter (``toolkit.arch``) says: which units exist, how they are removed and what
  the config must say afterwards so ``from_pretrained`` and the exporters rebuild the same shapes. Units are
  ranked by weight magnitude (L1/L2) or first-order Taylor importance ``|sum(w * grad)|`` accumulated over a few
  batches; a recovery fine-tune follows. The dense model really shrinks: parameters and MACs are counted from the
  shapes.
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.compress._shared.finetune import FinetuneKeys, finetune, pytorch_parent, train_settings, weights_bytes
from toolkit.compress.context import Context
from toolkit.errors import UserError, did_you_mean
from toolkit.schema import setting
from toolkit.steps import handler, method
from toolkit.variants import Variant

KINDS = ("unstructured", "structured")
IMPORTANCE = ("l1", "l2", "taylor")
PARTS = ("heads", "ffn")
HEADS = ("classifier", "lm_head", "score")


@method("prune")
@dataclass
class PruneConfig(FinetuneKeys):
    """[[compress]] method = "prune"."""

    kind: str = setting("unstructured", "unstructured (zeros: a smaller compressed file, no dense speed-up) | structured "
                                   "(heads, FFN neurons, CNN channels removed: a smaller, faster dense model)")
    sparsity: float = setting(0.5, "fraction removed, in [0, 1): of the weights (unstructured) or of the heads / FFN "
                              "neurons / channels of each layer (structured)")
    importance: str = setting("l1", "structured: how units are ranked: l1 | l2 (weight magnitude) | taylor (|w*grad|)")
    parts: list[str] = setting(["heads", "ffn"], "structured transformers: what is removed: heads | ffn")
    taylor_batches: int = setting(8, "importance = taylor: training batches the gradients are accumulated over")
    prune_every: int = setting(0, "unstructured: optimizer steps between mask updates (0 = about 20 updates)")
    prune_end: float = setting(0.75, "unstructured: fraction of the fine-tune by which the final sparsity is reached")
    max_accuracy_drop: float = setting(0.0, "accuracy guard on the validation split (0 = off; accuracy: absolute drop, "
                                       "LMs: relative perplexity rise): unstructured keeps the most sensitive layers "
                                       "dense until within it; structured flags the variant")

    def check(self, where: str) -> None:
        super().check(where)
        if self.kind not in KINDS:
            raise UserError(f"{where}: kind = '{self.kind}' is not one of {', '.join(KINDS)}"
                            f"{did_you_mean(self.kind, list(KINDS))}")
        if not 0 <= self.sparsity < 1:
            raise UserError(f"{where}: sparsity = {self.sparsity!r} must be in [0, 1) (the fraction removed, e.g. 0.5)")
        if self.importance not in IMPORTANCE:
            raise UserError(f"{where}: importance = '{self.importance}' is not one of {', '.join(IMPORTANCE)}"
                            f"{did_you_mean(self.importance, list(IMPORTANCE))}")
        for part in self.parts:
            if part not in PARTS:
                raise UserError(f"{where}: parts: unknown part '{part}'{did_you_mean(part, list(PARTS))}")
        if not self.parts:
            raise UserError(f"{where}: parts = []: name at least one of {', '.join(PARTS)}")
        if self.max_accuracy_drop < 0:
            raise UserError(f"{where}: max_accuracy_drop = {self.max_accuracy_drop!r} must be >= 0 (0 = no guard)")
        if self.taylor_batches < 1 or self.prune_every < 0 or not 0 < self.prune_end <= 1:
            raise UserError(f"{where}: taylor_batches must be >= 1, prune_every >= 0, prune_end in (0, 1]")

    def check_model(self, model: Any, task: Any, where: str, from_base: bool) -> None:
        if model is None:
            raise UserError(f"{where}: pruning needs a PyTorch model, and model.source is an ONNX file; quantize it "
                            f"instead (method = \"quantize\")")
        if self.kind != "structured":
            return  # unstructured pruning needs no knowledge of the architecture
        from toolkit.arch import adapter_for

        notes: list[str] = []
        try:
            adapter_for(model).prune_groups(model, list(self.parts), task.kv_cache, notes)
        except UserError as e:
            raise UserError(f"{where}: {e}") from None


# ---- counting ---------------------------------------------------------------------------------------------------

def count_macs(model: Any, seq_len: int, token_head: bool) -> int | None:
    """Multiply-accumulates of one forward pass of one example, from the layer shapes (the architecture adapter
    counts; see its ``count_macs``), or None for a model it cannot read."""
    from toolkit.arch import adapter_for

    try:
        return adapter_for(model).count_macs(model, seq_len, token_head)
    except UserError:
        return None


def per_layer_sparsity(named: list[tuple[str, Any]]) -> dict[str, float]:
    """Fraction of exact zeros of each named weight tensor."""
    return {n: round(float((w == 0).sum()) / w.numel(), 6) for n, w in named}


def gzip_bytes(path: Path) -> int:
    """Size of ``path`` after gzip -6 (what a download or an app store bundle shrinks to)."""
    return len(gzip.compress(Path(path).read_bytes(), compresslevel=6))


# ---- unstructured -------------------------------------------------------------------------------------------

def prunable_weights(model: Any) -> list[tuple[str, Any]]:
    """(name, module) of the Linear / Conv1D / Conv2d layers whose weights are pruned: all but the output head
    (classifier / lm_head: tied to the embeddings in LMs, and global magnitude pruning would empty a small-init
    classifier first)."""
    import torch

    from toolkit.arch.base import io

    tied = {m.weight.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    out = []
    for name, m in model.named_modules():
        if name.split(".")[0] in HEADS or not (io(m) is not None or isinstance(m, torch.nn.Conv2d)):
            continue
        if m.weight.data_ptr() not in tied:
            out.append((name, m))
    return out


def cubic_sparsity(step: int, final: float, end: int) -> float:
    """Zhu & Gupta's schedule from 0: ``final * (1 - (1 - step / end)^3)``, held at ``final`` after ``end``."""
    progress = min(1.0, max(0.0, step / max(1, end)))
    return final * (1.0 - (1.0 - progress) ** 3)


def unstructured(step: PruneConfig, prepared: Any, ctx: Context, settings: Any, source: Path,
                 baseline: tuple[str, float, bool] | None) -> dict[str, Any]:
    """Gradual global magnitude pruning during the fine-tune; masks made permanent. Returns the step's facts.

    With a ``baseline`` (metric name, the parent's value, higher is better) the accuracy guard may keep the most
    sensitive layers dense (their mask set back to ones, weights as fine-tuned) until the budget is met.
    """
    import torch
    from torch.nn.utils import prune
    from torch.optim.optimizer import register_optimizer_step_post_hook

    from toolkit.train.loop import total_steps

    model = prepared.model
    layers = prunable_weights(model)
    params = [(m, "weight") for _, m in layers]
    size = sum(m.weight.numel() for _, m in layers)
    prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=0)  # weight_orig + weight_mask
    total = total_steps(settings.train, len(prepared.train_set))
    end = max(1, round(step.prune_end * total))
    every = step.prune_every or max(1, end // 20)
    clock = {"step": 0}
    trace: list[list[float]] = []  # [optimizer step, measured sparsity] after each mask update

    def apply(t: int) -> None:
        want = round(cubic_sparsity(t, step.sparsity, end) * size)
        have = sum(int((m.weight_mask == 0).sum()) for m, _ in params)
        if want > have:
            # |weight_orig * mask| now (the module's .weight is from the last forward, before this update)
            scores = {(m, "weight"): (m.weight_orig * m.weight_mask).detach().abs() for m, _ in params}
            prune.global_unstructured(params, pruning_method=prune.L1Unstructured, amount=want - have,
                                      importance_scores=scores)
            trace.append([t, sum(int((m.weight_mask == 0).sum()) for m, _ in params) / size])

    def tick(*_: Any) -> None:
        clock["step"] += 1
        if clock["step"] % every == 0 or clock["step"] == end:
            apply(clock["step"])

    hook = register_optimizer_step_post_hook(tick)  # every optimizer's step, until removed
    try:
        result = finetune(ctx, step, prepared, model, recipe=settings, phase="prune", sources=(source,),
                          on_resume=lambda s: clock.update(step=s))
    finally:
        hook.remove()
    apply(max(end, clock["step"]))  # a fine-tune shorter than the schedule still ends at the asked sparsity
    guarded: dict[str, Any] = {}
    if baseline is not None:
        masks = {n: m.weight_mask.clone() for n, m in layers}
        blocks: dict[str, list[str]] = {}
        for n, _ in layers:
            blocks.setdefault(block_of(n), []).append(n)

        def evaluate(dense: set[str]) -> float:
            for n, m in layers:
                m.weight_mask.copy_(torch.ones_like(masks[n]) if block_of(n) in dense else masks[n])
            return validation_metric(ctx, prepared, model, settings)[1]

        from toolkit.compress._shared.guard import guard

        verdict = guard(evaluate, baseline[1], list(blocks), step.max_accuracy_drop, baseline[2], ctx.emit)
        evaluate(set(verdict.kept_in_float))  # leave the chosen masks in place
        guarded = {"guard": verdict.to_info(baseline[0]), "within_budget": verdict.within_budget,
                   "layers_dense": [n for b in verdict.kept_in_float for n in blocks[b]]}
    for m, name in params:
        prune.remove(m, name)
    named = [(n, m.weight) for n, m in layers]
    per_layer = per_layer_sparsity(named)
    zeros = sum(int((w == 0).sum()) for _, w in named)
    return {"sparsity_per_layer": per_layer, "sparsity_global": zeros / size, "pruned_weights": size,
            "schedule": {"kind": "cubic (Zhu & Gupta 2017)", "start": 0, "end_step": end, "every": every,
                         "final": step.sparsity, "trace": trace},
            "finetune": {"steps": result.state.step, "validation": result.validation}, **guarded}


def block_of(name: str) -> str:
    """The guard's unit: a numbered transformer layer / CNN block ('bert.encoder.layer.3'), else the module."""
    hit = re.match(r"^(.*?\.(?:layer|layers|h|blocks)\.\d+)\.", name)
    return hit.group(1) if hit else name


def validation_metric(ctx: Context, prepared: Any, model: Any, settings: Any) -> tuple[str, float, bool]:
    """(name, value, higher is better) of the model on the validation split: accuracy, else perplexity."""
    from toolkit.compress._shared.finetune import device_for

    m = ctx.task.evaluate(model, prepared, prepared.val_set, settings.train.batch_size, device_for(settings))
    model.to("cpu")
    return ("accuracy", m["accuracy"], True) if "accuracy" in m else ("perplexity", m["perplexity"], False)


# ---- structured -----------------------------------------------------------------------------------------------

def _units(t: Any, dim: int, start: int, block: int, count: int) -> Any:
    """(count, block * rest): one row per unit."""
    return t.narrow(dim, start, count * block).movedim(dim, 0).reshape(count, -1)


def rank_units(groups: list[Any], step: PruneConfig, model: Any, prepared: Any, batch_size: int,
               device: Any) -> list[Any]:
    """Importance of every unit of every group (higher = keep)."""
    import torch

    if step.importance != "taylor":
        with torch.no_grad():
            power = 1 if step.importance == "l1" else 2
            return [sum(_units(t.detach().abs() ** power, *rest, g.count).sum(1)
                        for t, *rest in g.parts[: g.magnitude_parts]) ** (1 / power) for g in groups]
    # First-order Taylor (Molchanov et al. 2019): removing unit u changes the loss by about |sum(w * dL/dw)|.
    from toolkit.tasks.common import batches

    scores = [torch.zeros(g.count) for g in groups]
    was = model.training
    model.to(device).eval()
    for n, batch in enumerate(batches(prepared.train_set, batch_size, prepared.collate, device)):
        if n >= step.taylor_batches:
            break
        model.zero_grad(set_to_none=True)
        model(**batch).loss.backward()
        with torch.no_grad():
            for g, s in zip(groups, scores):
                total = sum(_units(t * t.grad, *rest, g.count).sum(1) for t, *rest in g.parts if t.grad is not None)
                s += total.abs().cpu()
    model.zero_grad(set_to_none=True)
    model.to("cpu").train(was)
    return scores


def keep_units(score: Any, sparsity: float) -> list[int]:
    """Indices of the units kept (the highest-scoring, at least one), in their order."""
    remove = min(len(score) - 1, round(sparsity * len(score)))
    return sorted(int(i) for i in score.argsort(descending=True)[: len(score) - remove])


def structured(step: PruneConfig, prepared: Any, ctx: Context, settings: Any, where: str,
               source: Path) -> tuple[Any, dict]:
    """Rank and remove units, then fine-tune to recover. Returns (the smaller model, facts)."""
    import dataclasses

    from toolkit.arch import adapter_for
    from toolkit.compress._shared.finetune import device_for

    model = prepared.model
    adapter = adapter_for(model)
    notes: list[str] = []
    groups = adapter.prune_groups(model, list(step.parts), ctx.task.kv_cache, notes)
    for note in notes:
        ctx.emit.log(f"{step.name}: {note}", "warning")
    scores = rank_units(groups, step, model, prepared, settings.train.batch_size, device_for(settings))
    before: dict[str, list[int]] = {}
    for g in groups:  # heads removed in groups (grouped-query attention) are counted as heads
        before.setdefault(g.key[0], []).append(g.count * g.extra.get("unit_q", 1))
    model, kept = adapter.remove_units(model, groups, [keep_units(s, step.sparsity) for s in scores])
    if adapter.kind == "transformer":
        kept = {f"{k}_per_layer": v for k, v in kept.items()}
        kept.update({f"{k}_per_layer_before": v for k, v in before.items()})
    job = dataclasses.replace(prepared, model=model)
    result = finetune(ctx, step, job, model, recipe=settings, phase="recovery", sources=(source,))
    return model, {"importance": step.importance, **kept, "notes": notes,
                   "finetune": {"steps": result.state.step, "validation": result.validation}}


# ---- the handler ------------------------------------------------------------------------------------------------

@handler(PruneConfig)
def prune_step(step: PruneConfig, parent: Variant, ctx: Context) -> Variant:
    """Prune the parent's PyTorch model; write variants/<name>/model/ with the task's save."""
    from toolkit.models import count_params
    from toolkit.rundir import atomic_dir

    where = ctx.step_where(step)
    model_dir = pytorch_parent(parent, where, "pruning")
    prepared = ctx.prepare(model_dir)
    model = prepared.model
    seq_len = ctx.recipe.eval.latency.seq_len
    token_head = not ctx.task.classifies  # an LM head runs on every position, a classifier on one
    settings = train_settings(ctx.recipe, epochs=step.epochs, max_steps=step.max_steps, lr=step.lr,
                              batch_size=step.batch_size)
    before = {"params_before": count_params(model), "macs_before": count_macs(model, seq_len, token_head)}
    baseline = validation_metric(ctx, prepared, model, settings) if step.max_accuracy_drop and prepared.val_set else None
    if step.kind == "unstructured":
        facts = unstructured(step, prepared, ctx, settings, model_dir, baseline)
    else:
        model, facts = structured(step, prepared, ctx, settings, where, model_dir)
        if baseline is not None:
            from toolkit.compress._shared.guard import degradation, within

            name, value, higher = validation_metric(ctx, prepared, model, settings)
            facts["within_budget"] = within(value, baseline[1], step.max_accuracy_drop, higher)
            facts["guard"] = {"metric": name, "baseline": baseline[1], "kept": value,
                              "degradation": degradation(value, baseline[1], higher)}
    within_budget = facts.pop("within_budget", None)
    out = ctx.variant_dir(step.name) / "model"
    with atomic_dir(out) as tmp:
        prepared.save(model, tmp)
    info: dict[str, Any] = {
        "kind": step.kind, "sparsity": step.sparsity, **before, "params_after": count_params(model),
        "macs_after": count_macs(model, seq_len, token_head),
        "macs_convention": f"multiply-accumulates per example from layer shapes, seq_len={seq_len} (FLOPs = 2 x MACs)",
        "size_bytes": weights_bytes(out), **facts,
    }
    if step.kind == "unstructured":
        weights = [p for p in out.iterdir() if p.suffix == ".safetensors"]
        parent_weights = [p for p in model_dir.iterdir() if p.suffix == ".safetensors"]
        info["gzip_bytes_before"] = sum(gzip_bytes(p) for p in parent_weights)
        info["gzip_bytes_after"] = sum(gzip_bytes(p) for p in weights)
        info["note"] = (f"unstructured sparsity: the gzip-compressed weights shrink "
                        f"{info['gzip_bytes_before']:,} -> {info['gzip_bytes_after']:,} bytes, but dense runtimes "
                        f"(ONNX Runtime, ExecuTorch) still compute every zero: no speed-up (use kind = \"structured\")")
        ctx.emit.log(f"{step.name}: {info['sparsity_global']:.1%} of {info['pruned_weights']:,} weights are zero; "
                     + info["note"])
    else:
        ctx.emit.log(f"{step.name}: parameters {info['params_before']:,} -> {info['params_after']:,}, MACs "
                     f"{info['macs_before'] or 0:,} -> {info['macs_after'] or 0:,}")
    if within_budget is False:
        info["note"] = (info.get("note", "") + " " if step.kind == "unstructured" else "") + (
            f"over the accuracy budget: validation {info['guard']['metric']} {info['guard']['baseline']:.4f} -> "
            f"{info['guard']['kept']:.4f} (max_accuracy_drop = {step.max_accuracy_drop:g}); kept and flagged")
        ctx.emit.log(f"{step.name}: {info['note']}", "warning")
    return Variant(name=step.name, parent=parent.name, method="prune", path=ctx.variant_dir(step.name),
                   model_dir=out, info=info, within_budget=within_budget)
