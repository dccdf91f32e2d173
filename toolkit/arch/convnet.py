"""The adapter of Hugging Face CNNs and conv/transformer hybrids (ResNet, MobileNetV2, ConvNeXt, EfficientNet,
MobileViT, and any family shaped like them): channels are the units, found by torch-pruning's dependency graph.

Structured pruning traces one forward pass with torch-pruning (``DependencyGraph``), which couples every layer that
reads or writes the same channels: both sides of a residual add (ResNet, MobileNetV2's inverted residuals), a
depthwise conv with the BatchNorm/LayerNorm/linear layers after it and ConvNeXt's layer scale, EfficientNet's
squeeze-excitation gate with the features it multiplies, a concatenation's offsets (MobileViT's fusion). Each of
its groups becomes one :class:`Group` (its tensors as parts, so ``prune.rank_units`` scores the channels: L1/L2 on
the producing weights, Taylor on all of them) and ``remove_units`` removes the channels not kept in every coupled
layer at once. The classifier's outputs (the classes) and the query/key/value outputs of attention (their head
layout) are never removed. The family's config cannot describe the result, so the saved folder carries a record
of the resized modules (``toolkit.models.reshaped``) from which ``from_pretrained`` rebuilds it.

The adapter is asked before the transformer adapter (``precedence``): a hybrid such as MobileViT has transformer
layers inside, and the transformer adapter would otherwise claim it and prune heads/FFN in a way its config cannot
describe.
"""
from __future__ import annotations

import copy
import re
import warnings
from typing import Any

from toolkit.arch.base import Group, Stack, unsupported
from toolkit.errors import UserError
from toolkit.registry import ADAPTERS

WIDTH_LIST_KEYS = ("hidden_sizes",)
"""config keys listing each stage's width (ResNet, ConvNeXt, MobileViT, RegNet ...): what ``widths`` sets"""
WIDTH_SCALE_KEYS = ("depth_multiplier", "width_coefficient", "width_multiplier")
"""config keys scaling every width at once (MobileNet, EfficientNet): halved for the default student"""
SCALED_WIDTH_KEYS = ("embedding_size", "neck_hidden_sizes", "hidden_dim")
"""other config keys holding channel counts: scaled with the widths (EfficientNet's hidden_dim must follow its
width_coefficient, ResNet's stem follows its stages)"""
DIVISOR_KEYS = ("depth_divisor", "depth_divisible_by", "divisible_by")
"""config keys a family rounds its channel counts to multiples of"""
DEPTH_KEYS = ("depths",)
"""config keys listing how many blocks each stage repeats: layer-dropping students set them"""
DEFAULT_SIZE = 224


def _config_size(config: Any) -> tuple[int, int]:
    size = getattr(config, "image_size", None) or DEFAULT_SIZE
    return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))


def example_input(model: Any) -> Any:
    """A (1, C, H, W) zero image at the config's image_size (224 when it names none), on the model's device (the
    meta device when a recipe's steps are checked before any work)."""
    import torch

    channels = getattr(model.config, "num_channels", None) or 3
    h, w = _config_size(model.config)
    device = next((p.device for p in model.parameters()), torch.device("cpu"))
    return torch.zeros(1, channels, h, w, device=device)


def _convs(model: Any) -> list[Any]:
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]


def output_layer(model: Any, x: Any) -> Any:
    """The leaf module whose output is the logits (the classifier), found by running the model once."""
    import torch

    produced: dict[int, Any] = {}
    hooks = [m.register_forward_hook(lambda mod, _i, out: produced.__setitem__(id(out), mod))
             for m in model.modules() if not list(m.children())]
    try:
        with torch.no_grad():
            logits = model(pixel_values=x).logits
    finally:
        for h in hooks:
            h.remove()
    layer = produced.get(id(logits))
    if layer is None:
        raise unsupported(model, "structured channel pruning", "no single layer produces its logits",
                          "use kind = \"unstructured\" pruning or quantization")
    return layer


def attention_projections(model: Any) -> list[Any]:
    """The query/key/value projections of every attention module (a hybrid's transformer blocks): their outputs
    are laid out in heads, which channel pruning must leave alone."""
    from toolkit.arch.inspect import find_attentions, find_stacks, get_path

    out = []
    for stack in find_stacks(model):
        for layer in stack.layers:
            for a in find_attentions(layer, model.config):
                out += [get_path(layer, p) for p in (a.q, a.k, a.v, a.qkv) if p]
    return out


def dependency_graph(model: Any) -> tuple[Any, list[Any]]:
    """(torch-pruning's dependency graph of ``model``, the layers whose outputs must stay)."""
    import torch_pruning as tp

    x = example_input(model)
    was = model.training
    model.eval()  # one image through BatchNorm in training mode is an error where a stage pools to 1x1
    try:
        keep_out = [output_layer(model, x), *attention_projections(model)]
        with warnings.catch_warnings():  # layer-scale parameters: torch-pruning says it prunes their last dim (right)
            warnings.simplefilter("ignore")
            graph = tp.DependencyGraph().build_dependency(model, example_inputs={"pixel_values": x},
                                                          output_transform=lambda out: out.logits, verbose=False)
    finally:
        model.train(was)
    return graph, keep_out


def _affine(idxs: list[int], roots: list[int], count: int) -> tuple[int, int] | None:
    """(start, block) when channel ``r`` of the root maps to [start + r * block, start + (r + 1) * block) here."""
    if not idxs or len(idxs) % count or any(r is None for r in roots):
        return None
    block = len(idxs) // count
    pairs = sorted(zip(roots, idxs))
    start = pairs[0][1]
    for n, (r, i) in enumerate(pairs):
        if r != n // block or i != start + n:
            return None
    return start, block


def _grouped(module: Any) -> bool:
    """A grouped convolution that is not depthwise (ResNeXt, RegNet): its channels come in groups."""
    import torch

    return isinstance(module, torch.nn.Conv2d) and 1 < module.groups != module.in_channels


def _tensors(graph: Any, dep: Any) -> tuple[list[tuple[Any, int]], bool]:
    """(tensor, dim) of what one dependency prunes, and whether it makes the channels (a producer's outputs)."""
    import torch

    module, fn = dep.target.module, dep.handler
    out = graph.is_out_channel_pruning_fn(fn)
    if isinstance(module, torch.nn.Parameter):
        return [(module, dep.target.pruning_dim % module.dim())], False
    if isinstance(module, (torch.nn.Conv2d, torch.nn.Linear)):
        depthwise = isinstance(module, torch.nn.Conv2d) and module.groups > 1
        if out or depthwise:
            bias = [(module.bias, 0)] if module.bias is not None else []
            return [(module.weight, 0)] + bias, out and not depthwise
        return [(module.weight, 1)], False
    if isinstance(module, (torch.nn.modules.batchnorm._BatchNorm, torch.nn.LayerNorm, torch.nn.GroupNorm)):
        return [(t, 0) for t in (module.weight, module.bias) if t is not None and t.dim() == 1], False
    return [], False


def to_group(graph: Any, tp_group: Any, index: int) -> Group:
    """One torch-pruning group as a :class:`Group`: producers' weights first (they rank by magnitude)."""
    root = tp_group[0]
    count = len(root.idxs)
    producers: list[tuple[Any, int, int, int]] = []
    others: list[tuple[Any, int, int, int]] = []
    for item in tp_group:
        span = _affine(list(item.idxs), list(item.root_idxs), count)
        if span is None:
            continue  # channels spread unevenly here (a reshape): removed all the same, not scored
        tensors, makes = _tensors(graph, item.dep)
        for t, dim in tensors:
            (producers if makes else others).append((t, dim, *span))
    parts = producers + others
    return Group(("channels", index), count, parts, len(producers) or len(parts),
                 extra={"graph": graph, "root": root.dep.target.module, "fn": root.dep.handler})


# ---- stages (for layer-dropping students) ----------------------------------------------------------------------

def stage_containers(model: Any) -> list[tuple[str, Any]]:
    """The containers holding each stage's repeated blocks, matched to the config's ``depths`` by name and length
    (``...stages.0.layers``, ``...stages.1.layers`` ...); [] when the family has no such list."""
    import torch

    depths = next((getattr(model.config, k) for k in DEPTH_KEYS if isinstance(getattr(model.config, k, None), list)),
                  None)
    if not depths:
        return []
    modules = dict(model.named_modules())
    for name, module in modules.items():
        if not isinstance(module, (torch.nn.Sequential, torch.nn.ModuleList)) or len(module) != depths[0]:
            continue
        parts = name.split(".")
        for j in [j for j, p in enumerate(parts) if p == "0"]:
            names = [".".join(parts[:j] + [str(i)] + parts[j + 1:]) for i in range(len(depths))]
            found = [modules.get(n) for n in names]
            if all(isinstance(c, (torch.nn.Sequential, torch.nn.ModuleList)) and len(c) == d
                   for c, d in zip(found, depths)):
                return list(zip(names, found))
    return []


def _divisor(config: Any) -> int:
    return next((int(getattr(config, k)) for k in DIVISOR_KEYS if isinstance(getattr(config, k, None), int)), 1)


def make_divisible(value: float, divisor: int) -> int:
    """The nearest multiple of ``divisor``, at least ``divisor`` and not below 90 % of ``value`` (the TF
    MobileNet / EfficientNet rounding their configs use)."""
    new = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return int(new + divisor if new < 0.9 * value else new)


class ConvNetAdapter:
    kind = "cnn"
    precedence = 1
    """asked before the transformer adapter (precedence 0), which would also match a hybrid's transformer layers"""

    def matches(self, model: Any) -> bool:
        """A Hugging Face image model with convolutions beyond a patch embedding (a ViT has one conv), other than
        this toolkit's own CNN (its adapter, ``cnn.py``, rebuilds it from its config)."""
        from toolkit.arch.cnn import FAMILY as OWN_CNN

        config = getattr(model, "config", None)
        return (config is not None and getattr(config, "model_type", None) != OWN_CNN
                and getattr(model, "main_input_name", None) == "pixel_values" and hasattr(model, "_from_config")
                and len(_convs(model)) >= 2)

    def family(self, model: Any) -> str:
        return getattr(model.config, "model_type", None) or type(model).__name__

    def stacks(self, model: Any) -> list[Stack]:
        return [Stack(name=n, layers=c, count_key="depths", role="layers") for n, c in stage_containers(model)]

    def width(self, model: Any) -> int:
        return 0

    def layer_count(self, model: Any) -> int:
        stacks = self.stacks(model)
        return len(stacks[0].layers) if stacks else 0

    # ---- structured pruning --------------------------------------------------------------------------------

    def prune_groups(self, model: Any, parts: list[str], kv_cache: bool, notes: list[str]) -> list[Group]:
        """Every group of coupled channels torch-pruning finds (``parts`` is for transformers: CNNs prune
        channels)."""
        graph, keep_out = dependency_graph(model)
        import torch

        found = graph.get_all_groups(ignored_layers=keep_out, root_module_types=(torch.nn.Conv2d, torch.nn.Linear))
        kept = []
        for g in found:
            if any(_grouped(item.dep.target.module) for item in g):
                if not any("grouped" in n for n in notes):
                    notes.append(f"{self.family(model)}: channels that grouped convolutions read or make are kept "
                                 f"(removing them unevenly would change the groups)")
                continue
            kept.append(g)
        groups = [to_group(graph, g, i) for i, g in enumerate(kept)]
        groups = [g for g in groups if g.count > 1 and g.parts]  # the root's own weights always rank a group
        if not groups:
            raise unsupported(model, "structured channel pruning", "no channel group can lose a channel",
                              "use kind = \"unstructured\" pruning or quantization")
        return groups

    def remove_units(self, model: Any, groups: list[Group], keep: list[list[int]]) -> tuple[Any, dict[str, Any]]:
        """Remove the channels not kept from every layer coupled to them; the model shrinks in place."""
        import torch

        for g, kept in zip(groups, keep):
            drop = sorted(set(range(g.count)) - set(kept))
            if drop:
                g.extra["graph"].get_pruning_group(g.extra["root"], g.extra["fn"], drop).prune()
        was = model.training
        try:
            with torch.no_grad():
                model.eval()(pixel_values=example_input(model))
        except Exception as e:  # a coupling torch-pruning missed: a bug to report, not the user's mistake
            raise RuntimeError(f"{self.family(model)}: the pruned model does not run ({e})") from e
        finally:
            model.train(was)
        return model, {"channels": [len(k) for k in keep], "channels_before": [g.count for g in groups]}

    # ---- students --------------------------------------------------------------------------------------------

    def drop_layers(self, model: Any, keep: list[int], where: str) -> Any:
        """A copy keeping blocks ``keep`` of every stage (the first block of each stage, which changes the width
        or resolution, must be kept), the config's ``depths`` set to match."""
        stages = stage_containers(model)
        if not stages:
            raise unsupported(model, "layer dropping", "its config has no per-stage block counts (depths)",
                              "leave layers out for a fresh, narrower student (or set widths)")
        if 0 not in keep:
            raise UserError(f"{where}: layers = {keep}: keep block 0 of each stage (it changes the width or "
                            f"resolution); e.g. layers = [0, 2]")
        cfg = copy.deepcopy(model.config)
        key = next(k for k in DEPTH_KEYS if isinstance(getattr(cfg, k, None), list))
        kept = [[i for i in keep if i < len(c)] for _, c in stages]
        setattr(cfg, key, [len(k) for k in kept])
        student = type(model)._from_config(cfg)
        renames = {f"{n}.{j}.": f"{n}.{i}." for (n, _), ks in zip(stages, kept) for i, j in enumerate(ks)}
        pattern = re.compile(r"^(" + "|".join(re.escape(n) for n, _ in stages) + r")\.(\d+)\.")
        state = {}
        for k, t in model.state_dict().items():
            hit = pattern.match(k)
            if hit is None:
                state[k] = t
            elif hit.group(0) in renames:
                state[renames[hit.group(0)] + k[hit.end():]] = t
        student.load_state_dict(state, strict=True)
        return student

    def fresh_student(self, model: Any, layers: int, width: int, heads: int, where: str, seed: int) -> Any:
        raise UserError(f"{where}: CNN students are set with widths = [...] (layers/hidden_size/heads are for "
                        f"transformers)")

    def default_student_widths(self, model: Any) -> list[int]:
        """Half of each stage width; [] for a family scaled by one multiplier (the student halves it)."""
        key = self._width_list(model)
        if key is None:
            return []
        d = _divisor(model.config)
        return [make_divisible(w / 2, d) for w in getattr(model.config, key)]

    def narrow_student(self, model: Any, widths: list[int], seed: int) -> Any:
        """A fresh model of the family with its stage widths set to ``widths`` (a family scaled by one multiplier:
        ``widths = []`` halves the multiplier); other channel counts scale by the same factor."""
        from toolkit.tasks.common import seeded

        cfg = copy.deepcopy(model.config)
        key = self._width_list(model)
        d = _divisor(cfg)
        if key is not None:
            old = list(getattr(cfg, key))
            if len(widths) != len(old):
                raise UserError(f"widths = {widths}: '{self.family(model)}' models have {len(old)} stages "
                                f"({key} = {old}); give one width per stage")
            setattr(cfg, key, list(widths))
            factor = sum(widths) / sum(old)
        else:
            scale = next((k for k in WIDTH_SCALE_KEYS if isinstance(getattr(cfg, k, None), (int, float))), None)
            if scale is None or widths:
                have = f"{scale} scales every width" if scale else "no width keys"
                raise unsupported(model, f"widths = {widths}", f"its config has no per-stage widths ({have})",
                                  "leave widths out for a student at half the width" if scale else
                                  "distil into a model folder you give as teacher/student instead")
            factor = 0.5
            setattr(cfg, scale, getattr(cfg, scale) * factor)
        for k in SCALED_WIDTH_KEYS:
            v = getattr(cfg, k, None)
            if isinstance(v, int) and not isinstance(v, bool):
                setattr(cfg, k, make_divisible(v * factor, d))
            elif isinstance(v, list) and all(isinstance(x, int) for x in v):
                setattr(cfg, k, [make_divisible(x * factor, d) for x in v])
        try:
            with seeded(seed):
                student = type(model)._from_config(cfg)
            student.eval()(pixel_values=example_input(student))
        except Exception as e:  # the family's own checks (widths not divisible by its heads ...)
            raise UserError(f"a '{self.family(model)}' student with {key or 'half the width'} = "
                            f"{widths or 'x 0.5'} does not build: {str(e).splitlines()[0][:200]}") from None
        return student

    def _width_list(self, model: Any) -> str | None:
        return next((k for k in WIDTH_LIST_KEYS if isinstance(getattr(model.config, k, None), list)), None)

    # ---- what other stages ask -------------------------------------------------------------------------------

    def linear_layers(self, model: Any) -> list[tuple[str, Any, int]]:
        import torch

        return [(n, m, 0) for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]

    def lora_targets(self, model: Any) -> list[str]:
        """None by default: a CNN's parameters are few and its depthwise convolutions cannot take a low-rank
        update, so full fine-tuning is the default answer; a user may still name layers."""
        raise unsupported(model, "LoRA by default", "a CNN's weights are convolutions (depthwise ones "
                          "cannot take a low-rank update) and its parameters are few",
                          "train it fully (leave [train.lora] out) or name its plain convolutions or linear "
                          "layers in train.lora.target_modules")

    def lora_fan_in_fan_out(self, model: Any) -> bool:
        return False

    def ort_fusion(self, config: dict[str, Any]) -> dict[str, Any] | None:
        return None

    def count_macs(self, model: Any, seq_len: int, token_head: bool) -> int:
        """Multiply-accumulates of one forward pass of one image at the config's image_size (224 when it names
        none), counted by torch's FLOP counter (convolutions, matrix products, attention) / 2."""
        import torch
        from torch.utils.flop_counter import FlopCounterMode

        was = model.training
        counter = FlopCounterMode(display=False)
        try:
            with torch.no_grad(), counter:
                model.eval()(pixel_values=example_input(model))
        finally:
            model.train(was)
        return int(counter.get_total_flops()) // 2

    def head_mode(self, model: Any, kv_cache: bool) -> tuple[str | None, str]:
        return None, "a CNN has channels, not attention heads"

    def refuse_hidden_matching(self, model: Any, where: str) -> UserError:
        return unsupported(model, "hidden/attention matching", "it matches transformer layers",
                           "use logit distillation only (hidden_weight = attention_weight = 0)")


ADAPTERS.register("convnet", ConvNetAdapter())
