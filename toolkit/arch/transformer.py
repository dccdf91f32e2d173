"""The transformer adapter: every family whose layers :mod:`toolkit.arch.inspect` can read (encoders, decoders,
encoder-decoders, vision transformers), without listing families by name.

Removing attention heads is done one of two ways, whichever the family's config can describe afterwards:
- ``hf``: Hugging Face's ``prune_heads`` (any number of heads per layer, recorded in ``config.pruned_heads``) for
  single-stack models without a KV cache (BERT-style encoders): ``from_pretrained`` rebuilds the same shapes;
- ``uniform``: the same number of heads (whole key/value groups under grouped-query attention) removed from every
  attention module, and ``num_attention_heads`` / ``num_key_value_heads`` / ``head_dim`` set to match, for families
  whose config carries the head size (Llama, Qwen2, Mistral, T5 ...). Exporters then build matching KV caches.
Which applies is found by building the family's model from a config with fewer heads (on the meta device) and
comparing shapes; a family where neither works (GPT-2 and BART tie the head size to the width) keeps its heads,
and says so. After any surgery the config is checked the same way: a model built from it has the same shapes.
"""
from __future__ import annotations

import copy
import re
from typing import Any

from toolkit.arch import shapes
from toolkit.arch.base import (Group, Stack, io, is_conv1d, out_axis, prune_in, prune_out, unit_parts_in,
                               unit_parts_out, unsupported)
from toolkit.arch.inspect import (Attention, config_value, find_attentions, find_ffns, find_stacks, get_path,
                                  owner_and_attr, role_keys)
from toolkit.errors import UserError
from toolkit.registry import ADAPTERS


class TransformerAdapter:
    kind = "transformer"

    def matches(self, model: Any) -> bool:
        return bool(find_stacks(model))

    def family(self, model: Any) -> str:
        return getattr(model.config, "model_type", None) or type(model).__name__

    def stacks(self, model: Any) -> list[Stack]:
        found = find_stacks(model)
        if not found:
            raise unsupported(model, "this step", "no list of transformer layers with attention was found in it",
                              "use kind = \"unstructured\" pruning or quantization")
        return found

    def width(self, model: Any) -> int:
        _, value = config_value(model.config, shapes.WIDTH_KEYS)
        return int(value) if value else find_attentions(self.stacks(model)[0].layers[0], model.config)[0].width

    def layer_count(self, model: Any) -> int:
        return len(self.stacks(model)[0].layers)

    def heads(self, model: Any) -> int:
        return find_attentions(self.stacks(model)[0].layers[0], model.config)[0].heads

    # ---- structured pruning --------------------------------------------------------------------------------

    def head_mode(self, model: Any, kv_cache: bool) -> tuple[str | None, str]:
        """('hf' | 'uniform', '') or (None, why heads cannot be removed from this family)."""
        stacks = self.stacks(model)
        base = getattr(model, "base_model", model)
        if not kv_cache and len(stacks) == 1 and _has_prune_heads(base):
            return "hf", ""
        first = find_attentions(stacks[0].layers[0], model.config)[0]
        unit_q, unit_kv = _unit(first)
        if first.heads <= unit_q:
            return None, f"its attention has {first.heads} head(s) in one group: nothing can be removed"
        if _heads_expressible(model, first.heads - unit_q, first.kv_heads - unit_kv, first.head_dim):
            return "uniform", ""
        why = "its config ties the head size to the width (width / heads), so fewer heads cannot be described"
        if kv_cache and _has_prune_heads(base):
            why += " for the KV-cache export"
        return None, why

    def prune_groups(self, model: Any, parts: list[str], kv_cache: bool, notes: list[str]) -> list[Group]:
        groups: list[Group] = []
        stacks = self.stacks(model)
        mode, why = self.head_mode(model, kv_cache) if "heads" in parts else (None, "")
        if "heads" in parts and mode is None:
            notes.append(f"{self.family(model)}: attention heads are kept ({why}); FFN neurons pruned")
        for si, stack in enumerate(stacks):
            for li, layer in enumerate(stack.layers):
                if mode is not None:
                    attns = find_attentions(layer, model.config)
                    for ai, a in enumerate(attns if mode == "uniform" else attns[:1]):
                        groups.append(_head_group(layer, a, (si, li, ai), mode))
                if "ffn" in parts:
                    ffns = find_ffns(layer)
                    if not ffns:
                        raise unsupported(model, "structured FFN pruning",
                                          f"no known feed-forward layout in {stack.name}.{li}",
                                          "set parts = [\"heads\"] or use kind = \"unstructured\"")
                    groups += [_ffn_group(layer, ffn, (si, li, fi)) for fi, ffn in enumerate(ffns)]
        if not groups:
            raise unsupported(model, f"structured pruning of {parts}", why or "nothing to remove",
                              "prune [\"ffn\"] or use kind = \"unstructured\"")
        return groups

    def remove_units(self, model: Any, groups: list[Group], keep: list[list[int]]) -> tuple[Any, dict[str, Any]]:
        import torch

        stacks = self.stacks(model)
        counts: dict[str, list[int]] = {"heads": [], "ffn": []}
        hf_plan: dict[int, list[int]] = {}
        uniform: list[tuple[Group, list[int]]] = []
        ffn_width: dict[int, set[int]] = {}
        for g, kept in zip(groups, keep):
            kind = g.key[0]
            if kind == "heads":
                if g.extra["mode"] == "hf":
                    hf_plan[g.key[2]] = _hf_heads(model, g, kept)
                    counts["heads"].append(len(kept) * g.extra["unit_q"])
                else:
                    uniform.append((g, kept))
                continue
            layer, ffn = g.extra["layer"], g.extra["ffn"]
            index = torch.tensor(kept, dtype=torch.long)
            for up in ffn.ups:
                owner, attr = owner_and_attr(layer, up)
                up_index = torch.cat([index, index + ffn.width]) if ffn.fused_gate else index
                setattr(owner, attr, prune_out(getattr(owner, attr), up_index))
            owner, attr = owner_and_attr(layer, ffn.down)
            setattr(owner, attr, prune_in(getattr(owner, attr), index))
            counts["ffn"].append(len(kept))
            ffn_width.setdefault(g.key[1], set()).add(len(kept))
        for si, widths in ffn_width.items():
            if len(widths) != 1:
                raise RuntimeError(f"FFN widths differ between the layers of {stacks[si].name}: {sorted(widths)}")
            old = next(g.count for g in groups if g.key[:2] == ("ffn", si))
            _set_ffn_keys(model.config, stacks[si].role, old, widths.pop())
        if uniform:
            counts["heads"] = _remove_uniform(model, uniform)
        if any(hf_plan.values()):
            model.prune_heads({li: h for li, h in hf_plan.items() if h})  # records config.pruned_heads
        check_config(model)
        return model, {k: v for k, v in counts.items() if v}

    # ---- students --------------------------------------------------------------------------------------------

    def drop_layers(self, model: Any, keep: list[int], where: str) -> Any:
        stacks = self.stacks(model)
        for s in stacks:
            bad = [i for i in keep if i >= len(s.layers)]
            if bad:
                raise UserError(f"{where}: layers = {keep}: index {bad[0]} is out of range; the teacher's "
                                f"{s.count_key or s.name} is {len(s.layers)} (layers 0-{len(s.layers) - 1})")
            if not s.count_key:
                raise unsupported(model, "layer dropping", f"no config key holds the length of {s.name}",
                                  "give layers = <number> for a fresh student")
        cfg = copy.deepcopy(model.config)
        for s in stacks:
            _per_layer_lists(cfg, len(s.layers), lambda values: [values[i] for i in keep])
            setattr(cfg, s.count_key, len(keep))
        pruned = {int(k): v for k, v in (getattr(cfg, "pruned_heads", None) or {}).items()}
        cfg.pruned_heads = {i: list(pruned[j]) for i, j in enumerate(keep) if j in pruned}
        student = type(model)._from_config(cfg, attn_implementation="eager")
        renames = {f"{s.name}.{j}.": f"{s.name}.{i}." for s in stacks for i, j in enumerate(keep)}
        pattern = re.compile(r"^(" + "|".join(re.escape(s.name) for s in stacks) + r")\.(\d+)\.")
        state = {}
        for key, tensor in model.state_dict().items():
            hit = pattern.match(key)
            if hit is None:
                state[key] = tensor
            elif hit.group(0) in renames:
                state[renames[hit.group(0)] + key[hit.end():]] = tensor
        want = student.state_dict()
        for key in [k for k in want if k not in state]:
            # a table only the first layer of a stack holds (T5's relative position bias): the teacher's own
            hit = pattern.match(key)
            if hit is not None:
                donor = next((k for k in model.state_dict() if k.startswith(f"{hit.group(1)}.")
                              and k.split(".", len(hit.group(1).split(".")) + 1)[-1] == key[hit.end():]), None)
                if donor is not None and model.state_dict()[donor].shape == want[key].shape:
                    state[key] = model.state_dict()[donor]
        missing, unexpected = student.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise unsupported(model, "layer dropping", f"the kept layers do not fill a smaller model "
                              f"({(missing or unexpected)[0]} {'missing' if missing else 'left over'})",
                              "give layers = <number> for a fresh student")
        return student

    def fresh_student(self, model: Any, layers: int, width: int, heads: int, where: str, seed: int) -> Any:
        from toolkit.tasks.common import seeded

        cfg = copy.deepcopy(model.config)
        old_width, old_heads = self.width(model), self.heads(model)
        width = width or old_width
        heads = heads or (old_heads if width % old_heads == 0 else max(1, width // 64))
        if width % heads:
            raise UserError(f"{where}: hidden_size = {width} is not divisible by heads = {heads}; pick a multiple")
        first = find_attentions(self.stacks(model)[0].layers[0], model.config)[0]
        for key in [k for k in shapes.FFN_KEYS if isinstance(getattr(cfg, k, None), int)]:
            setattr(cfg, key, max(1, int(getattr(cfg, key)) * width // old_width))
        width_key, _ = config_value(cfg, shapes.WIDTH_KEYS)
        setattr(cfg, width_key, width)
        for key in [k for k in shapes.HEAD_KEYS if getattr(cfg, k, None) == old_heads]:
            setattr(cfg, key, heads)
        for key in [k for k in shapes.KV_HEAD_KEYS if isinstance(getattr(cfg, k, None), int)]:
            setattr(cfg, key, max(1, heads * first.kv_heads // first.heads))
        for key in [k for k in ("head_dim", "d_kv") if isinstance(getattr(cfg, k, None), int)]:
            setattr(cfg, key, width // heads)
        for s in self.stacks(model):
            if s.count_key:
                n = layers or int(getattr(model.config, s.count_key))
                _per_layer_lists(cfg, len(s.layers), lambda values, n=n: (values * n)[:n])
                setattr(cfg, s.count_key, n)
        for key in [k for k, v in vars(cfg).items() if k.endswith("hidden_size") and v == old_width]:
            setattr(cfg, key, width)  # sizes that follow the width (DeBERTa's pooler_hidden_size)
        cfg.pruned_heads = {}
        with seeded(seed):
            return type(model)._from_config(cfg, attn_implementation="eager")

    # ---- what other stages ask --------------------------------------------------------------------------------

    def linear_layers(self, model: Any) -> list[tuple[str, Any, int]]:
        import torch

        return [(n, m, out_axis(m)) for n, m in model.named_modules()
                if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d)) or is_conv1d(m)]

    def lora_targets(self, model: Any) -> list[str]:
        from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as PEFT_DEFAULTS

        known = PEFT_DEFAULTS.get(getattr(model.config, "model_type", ""))
        if known:
            return list(known)  # peft's own per-family choice
        a = find_attentions(self.stacks(model)[0].layers[0], model.config)[0]
        names = [a.qkv] if a.qkv else [a.q, a.v]
        return [n.rsplit(".", 1)[-1] for n in names]

    def lora_fan_in_fan_out(self, model: Any) -> bool:
        """peft must know the weights are stored (in, out) (GPT-2's Conv1D)."""
        return any(is_conv1d(m) for m in model.modules())

    def ort_fusion(self, config: dict[str, Any]) -> dict[str, Any] | None:
        ort_type = shapes.ORT_FUSIONS.get(config.get("model_type", ""))
        if ort_type is None:
            return None
        heads = next((config[k] for k in shapes.HEAD_KEYS if isinstance(config.get(k), int)), 0)
        hidden = next((config[k] for k in shapes.WIDTH_KEYS if isinstance(config.get(k), int)), 0)
        return {"model_type": ort_type, "num_heads": heads, "hidden_size": hidden}

    def count_macs(self, model: Any, seq_len: int, token_head: bool) -> int:
        """Every linear layer inside the stacks at every position, ``2 * T * T * a`` per attention module (scores
        and weighted sum; ``a`` = heads x head size), and the head: on one position (a classifier) or on every
        position (``token_head``: an LM head). Lookups, norms and activations are not counted."""
        stacks = self.stacks(model)
        prefixes = [s.name + "." for s in stacks]
        total = 0
        for name, module in model.named_modules():
            shape = io(module)
            if shape is not None:
                inside = any(name.startswith(p) for p in prefixes)
                total += (seq_len if inside or token_head else 1) * shape[0] * shape[1]
        for s in stacks:
            for layer in s.layers:
                total += sum(2 * seq_len * seq_len * a.width for a in find_attentions(layer, model.config))
        return total


def _per_layer_lists(config: Any, layers: int, select: Any) -> None:
    """Config lists with one entry per layer (Qwen2's layer_types) follow the layers kept."""
    for key, value in list(vars(config).items()):
        if isinstance(value, list) and len(value) == layers and key not in ("architectures",):
            setattr(config, key, select(value))


# ---- heads ------------------------------------------------------------------------------------------------

def _has_prune_heads(base: Any) -> bool:
    """Whether Hugging Face's ``prune_heads`` works for the family (some define it only to raise)."""
    try:
        base._prune_heads({})
    except (NotImplementedError, AttributeError):
        return False
    return True


def _unit(a: Attention) -> tuple[int, int]:
    """(query heads, key/value heads) removed together: a whole group under grouped-query attention; one query
    head when every head shares one key/value head (multi-query)."""
    if a.kv_heads == 1 and a.heads > 1:
        return 1, 0
    return a.heads // a.kv_heads, 1


def _head_group(layer: Any, a: Attention, key: tuple, mode: str) -> Group:
    unit_q, unit_kv = _unit(a)
    count = a.heads // unit_q
    d = a.head_dim
    parts: list = []
    if a.qkv:
        fused = get_path(layer, a.qkv)
        parts += unit_parts_out(fused, 0, unit_q * d)
        if unit_kv:
            parts += unit_parts_out(fused, a.heads * d, d) + unit_parts_out(fused, (a.heads + a.kv_heads) * d, d)
    else:
        parts += unit_parts_out(get_path(layer, a.q), 0, unit_q * d)
        if unit_kv:
            for proj in (a.k, a.v):
                parts += unit_parts_out(get_path(layer, proj), 0, d)
    parts += unit_parts_in(get_path(layer, a.o), 0, unit_q * d)
    return Group(("heads", *key), count, parts, len(parts),
                 extra={"layer": layer, "attn": a, "mode": mode, "unit_q": unit_q, "unit_kv": unit_kv})


def _hf_heads(model: Any, g: Group, kept: list[int]) -> list[int]:
    """Original ids of the heads to remove from one layer (``prune_heads`` takes ids of the unpruned model)."""
    layer_index = g.key[2]
    n_orig = int(config_value(model.config, shapes.HEAD_KEYS)[1])
    already = {int(h) for h in (model.config.pruned_heads or {}).get(layer_index, [])}
    remaining = [h for h in range(n_orig) if h not in already]  # current position -> original head id
    return [remaining[p] for p in range(g.count) if p not in kept]


def _remove_uniform(model: Any, plan: list[tuple[Group, list[int]]]) -> list[int]:
    import torch

    kept_counts = {len(k) for _, k in plan}
    if len(kept_counts) != 1:
        raise RuntimeError(f"uniform head removal needs the same count everywhere, got {sorted(kept_counts)}")
    first = plan[0][0].extra["attn"]
    heads_out = []
    for g, kept in plan:
        a, layer, uq, ukv = g.extra["attn"], g.extra["layer"], g.extra["unit_q"], g.extra["unit_kv"]
        d = a.head_dim
        q_index = torch.cat([torch.arange(u * uq * d, (u + 1) * uq * d) for u in kept])
        kv_units = kept if ukv else list(range(a.kv_heads))
        kv_index = torch.cat([torch.arange(u * d, (u + 1) * d) for u in kv_units])
        if a.qkv:
            owner, attr = owner_and_attr(layer, a.qkv)
            index = torch.cat([q_index, a.heads * d + kv_index, (a.heads + a.kv_heads) * d + kv_index])
            setattr(owner, attr, prune_out(getattr(owner, attr), index))
        else:
            for proj, index in ((a.q, q_index), (a.k, kv_index), (a.v, kv_index)):
                owner, attr = owner_and_attr(layer, proj)
                setattr(owner, attr, prune_out(getattr(owner, attr), index))
        owner, attr = owner_and_attr(layer, a.o)
        setattr(owner, attr, prune_in(getattr(owner, attr), q_index))
        new_heads, new_kv = len(kept) * uq, len(kv_units)
        _slice_per_head(get_path(layer, a.path), a.heads, [h for u in kept for h in range(u * uq, (u + 1) * uq)])
        _update_module_counts(get_path(layer, a.path), a, new_heads, new_kv)
        heads_out.append(new_heads)
    new_heads, new_kv = heads_out[0], (first.kv_heads if not plan[0][0].extra["unit_kv"] else len(plan[0][1]))
    cfg = model.config
    for key in [k for k in shapes.HEAD_KEYS if getattr(cfg, k, None) == first.heads]:
        setattr(cfg, key, new_heads)
    for key in [k for k in shapes.KV_HEAD_KEYS if getattr(cfg, k, None) == first.kv_heads]:
        setattr(cfg, key, new_kv)
    if not any(isinstance(getattr(cfg, k, None), int) for k in ("head_dim", "d_kv")):
        cfg.head_dim = first.head_dim  # attention classes that read config.head_dim keep the size
    return heads_out


def _slice_per_head(module: Any, heads: int, kept_heads: list[int]) -> None:
    """Per-head tables besides the projections (T5's relative position bias: (buckets, heads))."""
    import torch

    for name, child in module.named_children():
        if isinstance(child, torch.nn.Embedding) and child.weight.shape[-1] == heads:
            new = torch.nn.Embedding(child.num_embeddings, len(kept_heads))
            new.weight.data = child.weight.data[:, kept_heads].clone()
            setattr(module, name, new)


def _update_module_counts(module: Any, a: Attention, heads: int, kv: int) -> None:
    for attr in shapes.HEAD_COUNT_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and not isinstance(value, bool):
            if ("key_value" in attr or "kv" in attr) and value == a.kv_heads:
                setattr(module, attr, kv)
            elif value == a.heads:
                setattr(module, attr, heads)
    for attr in shapes.HEAD_SIZE_ATTRS:
        value = getattr(module, attr, None)
        if isinstance(value, int) and value == a.heads * a.head_dim:
            setattr(module, attr, heads * a.head_dim)
    if isinstance(getattr(module, "num_key_value_groups", None), int):  # query heads per key/value head
        module.num_key_value_groups = heads // kv


def _heads_expressible(model: Any, heads: int, kv: int, head_dim: int) -> bool:
    """Whether the family's config can describe ``heads`` heads of ``head_dim``: a model built from such a
    config (on the meta device: no memory) has attention of that size."""
    import torch

    cfg = copy.deepcopy(model.config)
    old_heads = find_attentions(find_stacks(model)[0].layers[0], model.config)[0]
    for key in [k for k in shapes.HEAD_KEYS if getattr(cfg, k, None) == old_heads.heads]:
        setattr(cfg, key, heads)
    for key in [k for k in shapes.KV_HEAD_KEYS if getattr(cfg, k, None) == old_heads.kv_heads]:
        setattr(cfg, key, kv)
    if not any(isinstance(getattr(cfg, k, None), int) for k in ("head_dim", "d_kv")):
        cfg.head_dim = head_dim
    try:
        with torch.device("meta"):
            built = type(model)._from_config(cfg)
        a = find_attentions(find_stacks(built)[0].layers[0], built.config)[0]
    except Exception:  # a config the family rejects (width not divisible by heads ...) cannot say it
        return False
    return a.heads == heads and a.kv_heads == kv and a.head_dim == head_dim


# ---- FFN --------------------------------------------------------------------------------------------------

def _ffn_group(layer: Any, ffn: Any, key: tuple) -> Group:
    parts: list = []
    for up in ffn.ups:
        module = get_path(layer, up)
        parts += unit_parts_out(module, 0, 1)
        if ffn.fused_gate:
            parts += unit_parts_out(module, ffn.width, 1)
    parts += unit_parts_in(get_path(layer, ffn.down), 0, 1)
    return Group(("ffn", *key), ffn.width, parts, len(parts), extra={"layer": layer, "ffn": ffn})


def _set_ffn_keys(config: Any, role: str, old: int, new: int) -> None:
    keys = role_keys(config, shapes.FFN_KEYS, role, old)
    if not keys:  # GPT-2's n_inner = None means 4 x width: say the new width explicitly
        keys = [k for k in shapes.FFN_KEYS if k in vars(config) and getattr(config, k) is None]
    for key in keys:
        setattr(config, key, new)


def _build_from_config(model: Any) -> Any:
    """A model of ``model``'s class built from its config: on the meta device (no memory), else on the CPU (a
    config with ``pruned_heads`` indexes tensors, which meta tensors cannot)."""
    import torch

    try:
        with torch.device("meta"):
            return type(model)._from_config(copy.deepcopy(model.config))
    except NotImplementedError:
        return type(model)._from_config(copy.deepcopy(model.config))


def check_config(model: Any) -> None:
    """A model built from ``model.config`` has exactly ``model``'s parameter shapes (so from_pretrained and the
    exporters, which build from the config, agree with the weights). Raises RuntimeError naming the first
    difference: a bug in the surgery, not a user error."""

    try:
        built = _build_from_config(model)
    except Exception as e:
        raise RuntimeError(f"after the surgery the config does not build a {type(model).__name__}: {e}") from e
    want = {k: tuple(v.shape) for k, v in built.state_dict().items()}
    for k, v in model.state_dict().items():
        if k in want and tuple(v.shape) != want[k]:
            raise RuntimeError(f"after the surgery, config.json builds {k} as {want[k]} but the model has "
                               f"{tuple(v.shape)}")


ADAPTERS.register("transformer", TransformerAdapter())
