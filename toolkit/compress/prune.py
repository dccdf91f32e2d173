"""Pruning (``method = "prune"``): unstructured (weights) or structured (heads, FFN neurons, CNN channels).

- ``kind = "unstructured"``: global magnitude pruning (``torch.nn.utils.prune.global_unstructured``) raised
  during the fine-tune on Zhu & Gupta's (2017) cubic schedule ``s_t = s_f (1 - (1 - t / t_end)^3)``, the masks
  updated every ``prune_every`` optimizer steps by an optimizer step hook, then made permanent with
  ``prune.remove``. The zeros shrink the gzip-compressed file; dense runtimes (ONNX Runtime, ExecuTorch) still
  multiply them, so the model is no faster.
- ``kind = "structured"``: removes whole attention heads (Hugging Face ``prune_heads``, recorded in
  ``config.pruned_heads`` so ``from_pretrained`` rebuilds it) and FFN neurons (the same number in every layer,
  so ``intermediate_size`` describes the result), or CNN channels (the EdgeCNN rebuilt narrower with the kept
  channels copied through conv, BatchNorm, depthwise and pointwise layers alike). Units are ranked by weight
  magnitude (L1/L2) or first-order Taylor importance ``|sum(w * grad)|`` accumulated over a few batches; a
  recovery fine-tune follows. The dense model really shrinks: parameters and MACs are counted from the shapes.
"""
from __future__ import annotations

import gzip
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.compress.finetune import FinetuneKeys, finetune, pytorch_parent, train_settings, weights_bytes
from toolkit.compress.registry import Context, Variant, handler, method
from toolkit.config import _f
from toolkit.errors import UserError, did_you_mean

KINDS = ("unstructured", "structured")
IMPORTANCE = ("l1", "l2", "taylor")
PARTS = ("heads", "ffn")
HEADS = ("classifier", "lm_head", "score")
STRUCTURED_TYPES = ("bert", "roberta", "xlm-roberta", "electra", "gpt2", "bart", "edge-cnn")


@method("prune")
@dataclass
class PruneConfig(FinetuneKeys):
    """[[compress]] method = "prune"."""

    kind: str = _f("unstructured", "unstructured (zeros: a smaller compressed file, no dense speed-up) | structured "
                                   "(heads, FFN neurons, CNN channels removed: a smaller, faster dense model)")
    sparsity: float = _f(0.5, "fraction removed, in [0, 1): of the weights (unstructured) or of the heads / FFN "
                              "neurons / channels of each layer (structured)")
    importance: str = _f("l1", "structured: how units are ranked: l1 | l2 (weight magnitude) | taylor (|w*grad|)")
    parts: list[str] = _f(["heads", "ffn"], "structured transformers: what is removed: heads | ffn")
    taylor_batches: int = _f(8, "importance = taylor: training batches the gradients are accumulated over")
    prune_every: int = _f(0, "unstructured: optimizer steps between mask updates (0 = about 20 updates)")
    prune_end: float = _f(0.75, "unstructured: fraction of the fine-tune by which the final sparsity is reached")
    max_accuracy_drop: float = _f(0.0, "accuracy guard on the validation split (0 = off; accuracy: absolute drop, "
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


# ---- counting ---------------------------------------------------------------------------------------------------

def _in_out(module: Any) -> tuple[int, int] | None:
    """(in, out) features of a Linear or of transformers' Conv1D (GPT-2), else None."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if type(module).__name__ == "Conv1D":  # weight (in, out)
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


def count_macs(model: Any, seq_len: int = 64) -> int:
    """Multiply-accumulates of one forward pass of one example, from the layer shapes.

    CNN: every conv (groups included) over its output positions, plus the classifier. Transformers (sequence
    ``seq_len``; seq2seq: source and target both ``seq_len``): every Linear inside the layers at every position,
    ``2 * T * T * a`` per attention (scores and weighted sum, ``a`` = heads x head size), and the head: a
    classifier on one position, an LM head on every position. Lookups, norms and activations are not counted.
    """
    import torch

    if model.config.model_type == "edge-cnn":
        c = model.config
        h, w = c.image_size
        total = 0
        for conv in (m for m in model.modules() if isinstance(m, torch.nn.Conv2d)):
            k, s, p = conv.kernel_size[0], conv.stride[0], conv.padding[0]
            h, w = (h + 2 * p - k) // s + 1, (w + 2 * p - k) // s + 1
            total += h * w * conv.out_channels * (conv.in_channels // conv.groups) * k * k
        return total + model.classifier.in_features * model.classifier.out_features
    layer_prefixes = _layer_prefixes(model)
    token_head = model.config.model_type in ("gpt2", "bart") or not hasattr(model, "classifier")
    total = 0
    for name, module in model.named_modules():
        shape = _in_out(module)
        if shape is not None:
            inside = any(name.startswith(p) for p in layer_prefixes)
            positions = seq_len if inside or token_head else 1
            total += positions * shape[0] * shape[1]
        width = _attention_width(module)
        if width:
            total += 2 * seq_len * seq_len * width
    return total


def _layer_prefixes(model: Any) -> list[str]:
    from toolkit.compress.finetune import family_of, layer_lists

    fam = family_of(model.config, "count_macs")
    return [name + "." for name, _ in layer_lists(model, fam)]


def _attention_width(module: Any) -> int:
    """Heads x head size of an attention module (BERT self-attention, GPT-2, BART), else 0."""
    for attr in ("query", "q_proj"):
        sub = getattr(module, attr, None)
        if sub is not None and _in_out(sub) and hasattr(module, "k_proj" if attr == "q_proj" else "key"):
            return _in_out(sub)[1]
    c_attn = getattr(module, "c_attn", None)
    if c_attn is not None and _in_out(c_attn) and not getattr(module, "is_cross_attention", False):
        return _in_out(c_attn)[1] // 3
    return 0


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

    tied = {m.weight.data_ptr() for m in model.modules() if isinstance(m, torch.nn.Embedding)}
    out = []
    for name, m in model.named_modules():
        if name.split(".")[0] in HEADS or not (_in_out(m) is not None or isinstance(m, torch.nn.Conv2d)):
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

        from toolkit.compress.guard import guard

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
    from toolkit.compress.finetune import device_for

    m = ctx.task.evaluate(model, prepared, prepared.val_set, settings.train.batch_size, device_for(settings))
    model.to("cpu")
    return ("accuracy", m["accuracy"], True) if "accuracy" in m else ("perplexity", m["perplexity"], False)


# ---- structured -----------------------------------------------------------------------------------------------

@dataclass
class Group:
    """The units of one layer ranked against each other (heads, FFN neurons or channels)."""

    key: tuple
    """("heads" | "ffn", list index, layer index) for transformers; ("channels", width index) for the CNN"""
    count: int
    parts: list[tuple[Any, int, int, int]]
    """(tensor, dim, start, block): unit u spans [start + u * block, start + (u + 1) * block) along dim"""
    magnitude_parts: int
    """how many leading parts rank units by magnitude (the CNN: the producing filter only, as Li et al. 2017)"""


def _units(t: Any, dim: int, start: int, block: int, count: int) -> Any:
    """(count, block * rest): one row per unit."""
    return t.narrow(dim, start, count * block).movedim(dim, 0).reshape(count, -1)


def transformer_groups(model: Any, parts: list[str], notes: list[str]) -> list[Group]:
    from toolkit.compress.finetune import family_of, layer_lists

    mt = model.config.model_type
    groups = []
    for li, (_, layers) in enumerate(layer_lists(model, family_of(model.config, "prune"))):
        for l, layer in enumerate(layers):
            if "heads" in parts and mt == "gpt2":
                a = layer.attn
                w, b, split = a.c_attn.weight, a.c_attn.bias, a.split_size
                p = [(t, d, o, a.head_dim) for o in (0, split, 2 * split) for t, d in ((w, 1), (b, 0))]
                groups.append(Group(("heads", li, l), a.num_heads, p + [(a.c_proj.weight, 0, 0, a.head_dim)], 7))
            elif "heads" in parts and mt != "bart":
                s, o = layer.attention.self, layer.attention.output.dense
                d = s.attention_head_size
                p = [(t, 0, 0, d) for lin in (s.query, s.key, s.value) for t in (lin.weight, lin.bias)]
                groups.append(Group(("heads", li, l), s.num_attention_heads, p + [(o.weight, 1, 0, d)], 7))
            if "ffn" in parts:
                if mt == "gpt2":
                    up, down = layer.mlp.c_fc, layer.mlp.c_proj
                    p = [(up.weight, 1, 0, 1), (up.bias, 0, 0, 1), (down.weight, 0, 0, 1)]
                else:
                    up, down = (layer.fc1, layer.fc2) if mt == "bart" else (layer.intermediate.dense, layer.output.dense)
                    p = [(up.weight, 0, 0, 1), (up.bias, 0, 0, 1), (down.weight, 1, 0, 1)]
                groups.append(Group(("ffn", li, l), int(p[1][0].shape[0]), p, 3))
    if "heads" in parts and mt == "bart":
        notes.append("bart: attention heads are kept (transformers has no prune_heads for BART); FFN neurons pruned")
    return groups


def cnn_groups(model: Any) -> list[Group]:
    """One group per width: the conv that makes the channels (+ BN), the layers that read them."""
    blocks = list(model.blocks)
    groups = []
    for i, width in enumerate(model.config.widths):
        conv, bn = (model.stem[0], model.stem[1]) if i == 0 else (blocks[i - 1].pointwise[0], blocks[i - 1].pointwise[1])
        p = [(conv.weight, 0, 0, 1), (bn.weight, 0, 0, 1), (bn.bias, 0, 0, 1)]
        if i < len(blocks):
            dw, dbn, pw = blocks[i].depthwise[0], blocks[i].depthwise[1], blocks[i].pointwise[0]
            p += [(dw.weight, 0, 0, 1), (dbn.weight, 0, 0, 1), (dbn.bias, 0, 0, 1), (pw.weight, 1, 0, 1)]
        else:
            p.append((model.classifier.weight, 1, 0, 1))
        groups.append(Group(("channels", i), width, p, 1))
    return groups


def rank_units(groups: list[Group], step: PruneConfig, model: Any, prepared: Any, batch_size: int,
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


def _keep(score: Any, remove: int) -> list[int]:
    """Indices of the units kept, in their order."""
    return sorted(int(i) for i in score.argsort(descending=True)[: len(score) - remove])


def remove_transformer_units(model: Any, groups: list[Group], scores: list[Any], sparsity: float) -> dict[str, Any]:
    from transformers.pytorch_utils import prune_conv1d_layer, prune_linear_layer

    from toolkit.compress.finetune import FAMILIES, layer_lists

    fam = FAMILIES[model.config.model_type]
    lists = layer_lists(model, fam)
    gpt2 = model.config.model_type == "gpt2"
    heads: dict[int, list[int]] = {}
    counts: dict[str, list[int]] = {"heads": [], "ffn": []}
    for g, score in zip(groups, scores):
        kind, li, l = g.key
        remove = min(g.count - 1, round(sparsity * g.count))
        keep = _keep(score, remove)
        counts[kind].append(len(keep))
        layer = lists[li][1][l]
        if kind == "heads":
            n_orig = int(getattr(model.config, fam.heads[0]))
            already = {int(h) for h in (model.config.pruned_heads or {}).get(l, [])}
            remaining = [h for h in range(n_orig) if h not in already]  # current position -> original head id
            heads[l] = [remaining[p] for p in range(g.count) if p not in keep]
            continue
        import torch

        index = torch.tensor(keep, dtype=torch.long)
        if gpt2:
            layer.mlp.c_fc = prune_conv1d_layer(layer.mlp.c_fc, index, dim=1)
            layer.mlp.c_proj = prune_conv1d_layer(layer.mlp.c_proj, index, dim=0)
        elif model.config.model_type == "bart":
            layer.fc1, layer.fc2 = prune_linear_layer(layer.fc1, index, 0), prune_linear_layer(layer.fc2, index, 1)
        else:
            layer.intermediate.dense = prune_linear_layer(layer.intermediate.dense, index, dim=0)
            layer.output.dense = prune_linear_layer(layer.output.dense, index, dim=1)
        setattr(model.config, fam.ffn[li], len(keep))  # the same count in every layer of a list
    if any(heads.values()):
        model.prune_heads({l: h for l, h in heads.items() if h})  # records config.pruned_heads
    return {k: v for k, v in counts.items() if v}


def rebuild_cnn(model: Any, scores: list[Any], sparsity: float) -> tuple[Any, dict[str, Any]]:
    """A narrower EdgeCNN holding the kept channels of every conv, BatchNorm and the classifier."""
    import copy

    import torch

    from toolkit.models.cnn import EdgeCNNForImageClassification

    keeps = [_keep(s, min(len(s) - 1, round(sparsity * len(s)))) for s in scores]
    cfg = copy.deepcopy(model.config)
    cfg.widths = [len(k) for k in keeps]
    small = EdgeCNNForImageClassification(cfg)
    idx = [torch.tensor(k, dtype=torch.long) for k in keeps]
    state = {}
    for key, t in model.state_dict().items():
        if key.endswith("num_batches_tracked") or key == "classifier.bias":
            state[key] = t
            continue
        parts = key.split(".")
        if parts[0] == "stem":
            state[key] = t[idx[0]]
        elif parts[0] == "classifier":
            state[key] = t[:, idx[-1]]
        else:  # blocks.<b>.depthwise|pointwise.<0 conv | 1 bn>.<tensor>
            b, which = int(parts[1]), parts[2]
            if which == "depthwise":
                state[key] = t[idx[b]]  # reads (and keeps) the channels of width b
            elif parts[3] == "0":
                state[key] = t[idx[b + 1]][:, idx[b]]  # pointwise conv: out = width b + 1, in = width b
            else:
                state[key] = t[idx[b + 1]]
    small.load_state_dict(state, strict=True)
    return small, {"channels": cfg.widths, "channels_before": list(model.config.widths)}


def structured(step: PruneConfig, prepared: Any, ctx: Context, settings: Any, where: str,
               source: Path) -> tuple[Any, dict]:
    """Rank and remove units, then fine-tune to recover. Returns (the smaller model, facts)."""
    import dataclasses

    from toolkit.compress.finetune import device_for

    model = prepared.model
    notes: list[str] = []
    cnn = model.config.model_type == "edge-cnn"
    groups = cnn_groups(model) if cnn else transformer_groups(model, step.parts, notes)
    if not groups:
        raise UserError(f"{where}: parts = {step.parts}: nothing to prune in a {model.config.model_type} model")
    scores = rank_units(groups, step, model, prepared, settings.train.batch_size, device_for(settings))
    if cnn:
        model, kept = rebuild_cnn(model, scores, step.sparsity)
    else:
        before = {}
        for g in groups:
            before.setdefault(g.key[0], []).append(g.count)
        kept = {f"{k}_per_layer": v for k, v in remove_transformer_units(model, groups, scores, step.sparsity).items()}
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

    where = f"{ctx.recipe.source_path or 'recipe'}: [[compress]] '{step.name}' (prune)"
    model_dir = pytorch_parent(parent, where, "pruning")
    prepared = ctx.prepare(model_dir)
    model = prepared.model
    seq_len = ctx.recipe.eval.latency.seq_len
    settings = train_settings(ctx.recipe, epochs=step.epochs, max_steps=step.max_steps, lr=step.lr,
                              batch_size=step.batch_size)
    before = {"params_before": count_params(model), "macs_before": count_macs(model, seq_len)}
    baseline = validation_metric(ctx, prepared, model, settings) if step.max_accuracy_drop and prepared.val_set else None
    if step.kind == "unstructured":
        facts = unstructured(step, prepared, ctx, settings, model_dir, baseline)
    else:
        if model.config.model_type not in STRUCTURED_TYPES:
            raise UserError(f"{where}: structured pruning knows {', '.join(STRUCTURED_TYPES)}, not "
                            f"'{model.config.model_type}'; use kind = \"unstructured\"")
        model, facts = structured(step, prepared, ctx, settings, where, model_dir)
        if baseline is not None:
            from toolkit.compress.guard import degradation, within

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
        "macs_after": count_macs(model, seq_len),
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
                     f"{info['macs_before']:,} -> {info['macs_after']:,}")
    if within_budget is False:
        info["note"] = (info.get("note", "") + " " if step.kind == "unstructured" else "") + (
            f"over the accuracy budget: validation {info['guard']['metric']} {info['guard']['baseline']:.4f} -> "
            f"{info['guard']['kept']:.4f} (max_accuracy_drop = {step.max_accuracy_drop:g}); kept and flagged")
        ctx.emit.log(f"{step.name}: {info['note']}", "warning")
    return Variant(name=step.name, parent=parent.name, method="prune", path=ctx.variant_dir(step.name),
                   model_dir=out, info=info, within_budget=within_budget)
