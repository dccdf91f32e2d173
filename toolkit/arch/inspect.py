"""Finding a transformer's structure by looking at its modules: layer stacks, attention, FFN, config keys.

Every finding is checked against the weights' sizes (a query projection's outputs are heads x head size, an FFN's
projections meet at its width), so a layout that only looks familiar is not mistaken for a known one.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from toolkit.arch import shapes
from toolkit.arch.base import Stack, io


def get_path(root: Any, path: str) -> Any:
    """``root.a.b.c`` for ``path`` 'a.b.c' ('' is root); None when an attribute is missing."""
    obj = root
    for part in [p for p in path.split(".") if p]:
        obj = getattr(obj, part, None) if not part.isdigit() else (obj[int(part)] if _indexable(obj, part) else None)
        if obj is None:
            return None
    return obj


def _indexable(obj: Any, part: str) -> bool:
    try:
        return int(part) < len(obj)
    except TypeError:
        return False


def owner_and_attr(root: Any, path: str) -> tuple[Any, str]:
    """The module holding the last attribute of ``path``, and that attribute's name (to replace a submodule)."""
    parent, _, attr = path.rpartition(".")
    return get_path(root, parent), attr


def config_value(config: Any, keys: tuple[str, ...]) -> tuple[str, Any] | tuple[None, None]:
    """The first of ``keys`` the config has with a value (attribute maps followed), as (key, value)."""
    for key in keys:
        value = getattr(config, key, None)
        if value is not None and not isinstance(value, bool):
            return key, value
    return None, None


# ---- attention -------------------------------------------------------------------------------------------

@dataclass
class Attention:
    """One attention module of a layer, with the paths (relative to the layer) of its projections."""

    path: str
    """the attention module, relative to the layer ('' when the layer is it)"""
    q: str | None
    k: str | None
    v: str | None
    qkv: str | None
    """a fused projection making [q; k; v] (GPT-2's c_attn, Phi-3's qkv_proj)"""
    o: str
    heads: int
    kv_heads: int
    head_dim: int
    cross: bool
    """reads the encoder's output (a decoder's cross-attention)"""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def width(self) -> int:
        return self.heads * self.head_dim


def _join(a: str, b: str) -> str:
    return f"{a}.{b}" if a else b


def find_attentions(layer: Any, config: Any = None) -> list[Attention]:
    """Every attention module of a layer (self-attention first, then cross-attention), with its projections."""
    found: list[Attention] = []
    for path, module in layer.named_modules():
        if any(path.startswith(a.path + ".") for a in found if a.path):
            continue
        attn = _attention_at(layer, path, module, config)
        if attn is not None:
            found.append(attn)
    return sorted(found, key=lambda a: a.cross)


def _attention_at(layer: Any, path: str, module: Any, config: Any) -> Attention | None:
    names = dict(module.named_children())
    q = k = v = qkv = None
    for trio in shapes.ATTENTION_QKV:
        if all(n in names and io(names[n]) for n in trio):
            q, k, v = trio
            break
    if q is None:
        qkv = next((n for n in shapes.ATTENTION_FUSED if n in names and io(names[n])), None)
        if qkv is None:
            return None
    o = next((n for n in shapes.ATTENTION_OUT if n in names and io(names[n]) and n not in (q, k, v, qkv)), None)
    if o is not None:
        o_path = _join(path, o)
    else:  # BERT: attention.self holds q/k/v, attention.output.dense projects back
        parent = path.rpartition(".")[0]
        o_path = _join(parent, "output.dense")
        if io(get_path(layer, o_path)) is None:
            return None
    head_dim = next((int(getattr(module, a)) for a in shapes.HEAD_DIM_ATTRS
                     if isinstance(getattr(module, a, None), int) and getattr(module, a) > 0), 0)
    if not head_dim and config is not None:
        _, heads = config_value(config, shapes.HEAD_KEYS)
        _, hd = config_value(config, shapes.HEAD_DIM_KEYS)
        _, width = config_value(config, shapes.WIDTH_KEYS)
        head_dim = int(hd) if hd else (int(width) // int(heads) if heads and width else 0)
    if not head_dim:
        return None
    o_in = io(get_path(layer, o_path))[0]
    if qkv is not None:
        heads = o_in // head_dim
        total = io(names[qkv])[1] // head_dim
        kv_heads = (total - heads) // 2
        if kv_heads < 1 or heads + 2 * kv_heads != total:
            return None
    else:
        q_out, k_out, v_out = (io(names[n])[1] for n in (q, k, v))
        if q_out % head_dim or k_out % head_dim or k_out != v_out or q_out != o_in:
            return None
        heads, kv_heads = q_out // head_dim, k_out // head_dim
    if heads % kv_heads:
        return None
    cross = any(c in path.split(".") for c in shapes.CROSS_ATTENTION)
    return Attention(path=path, q=q and _join(path, q), k=k and _join(path, k), v=v and _join(path, v),
                     qkv=qkv and _join(path, qkv), o=o_path, heads=heads, kv_heads=kv_heads, head_dim=head_dim,
                     cross=cross)


# ---- FFN --------------------------------------------------------------------------------------------------

@dataclass
class FFN:
    """A layer's feed-forward block: projections into its hidden width and the one back."""

    ups: list[str]
    down: str
    width: int
    fused_gate: bool = False
    """one projection makes [gate; up] (each neuron is a row in both halves)"""


def find_ffns(layer: Any) -> list[FFN]:
    """The layer's FFNs (MobileBERT stacks several in a layer), matched against the known layouts at any depth
    and checked by size."""
    prefixes = [""] + [p + "." for p, _ in layer.named_modules() if p]
    found: list[FFN] = []
    for prefix in prefixes:
        ffn = _ffn_at(layer, prefix)
        if ffn is not None and not any(f.down == ffn.down for f in found):
            found.append(ffn)
    return found


def find_ffn(layer: Any) -> FFN | None:
    """The layer's first FFN."""
    found = find_ffns(layer)
    return found[0] if found else None


def _ffn_at(layer: Any, prefix: str) -> FFN | None:
    for ups, down in shapes.FFN:
        up_paths, down_path = [prefix + u for u in ups], prefix + down
        if io(get_path(layer, down_path)) is None or any(io(get_path(layer, p)) is None for p in up_paths):
            continue
        width = io(get_path(layer, down_path))[0]
        if all(io(get_path(layer, p))[1] == width for p in up_paths):
            return FFN(ups=up_paths, down=down_path, width=width)
    for up, down in shapes.FFN_FUSED_GATE:
        up_path, down_path = prefix + up, prefix + down
        if io(get_path(layer, up_path)) and io(get_path(layer, down_path)):
            width = io(get_path(layer, down_path))[0]
            if io(get_path(layer, up_path))[1] == 2 * width:
                return FFN(ups=[up_path], down=down_path, width=width, fused_gate=True)
    return None


# ---- stacks ------------------------------------------------------------------------------------------------

def find_stacks(model: Any) -> list[Stack]:
    """The model's layer lists (ModuleLists whose layers hold an attention module), encoder first."""
    import torch

    config = getattr(model, "config", None)
    found: list[tuple[str, Any]] = []
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.ModuleList) or len(module) == 0:
            continue
        if any(name.startswith(f + ".") for f, _ in found):
            continue  # a list inside a layer (T5's layer.0 / layer.1, MobileBERT's extra FFNs)
        if len({type(m) for m in module}) != 1 or not find_attentions(module[0], config):
            continue
        found.append((name, module))
    stacks = []
    for name, module in found:
        parts = name.split(".")
        role = ("encoder" if any(p.startswith("encoder") for p in parts) else
                "decoder" if any(p.startswith("decoder") for p in parts) else "layers")
        stacks.append(Stack(name=name, layers=module, count_key=_count_key(config, len(module), role,
                                                                             len(found)), role=role))
    return stacks


def _count_key(config: Any, length: int, role: str, n_stacks: int) -> str:
    """The config key holding a stack's length: one naming its role first (encoder_layers), then a generic one."""
    keys = [k for k in shapes.LAYER_KEYS if getattr(config, k, None) == length]
    own = [k for k in keys if role in k]
    if role == "decoder":
        return (own or [""])[0] if n_stacks > 1 else (own or keys or [""])[0]
    others = [k for k in keys if "decoder" not in k]
    return (own or others or [""])[0]


def role_keys(config: Any, keys: tuple[str, ...], role: str, value: Any) -> list[str]:
    """Config keys among ``keys`` that hold ``value`` for a stack of ``role`` (a key naming the other role is
    not this stack's)."""
    other = {"encoder": "decoder", "decoder": "encoder"}.get(role)
    return [k for k in keys if getattr(config, k, None) == value and not (other and other in k)
            and k in _own_keys(config)]


def _own_keys(config: Any) -> set[str]:
    """Keys the config really has (its own attributes, or aliases of them)."""
    return set(vars(config)) | set(getattr(config, "attribute_map", {}) or {})
