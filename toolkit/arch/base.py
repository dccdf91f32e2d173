"""What every architecture adapter answers (the Protocol) and the pieces its answers are made of.

A stage never asks ``model_type``: it asks the model's adapter (``toolkit.arch.adapter_for(model)``) where the
layers are, which units (attention heads, FFN neurons, CNN channels) can be removed and how, how to build a
student, which layers LoRA adapts, which ONNX Runtime fusions apply, how many multiply-accumulates a forward
pass costs. Two adapters exist: the transformer adapter, which finds layers, attention and FFN by inspecting the
modules (``shapes.py`` lists the module names of the known layouts), and the CNN adapter.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from toolkit.errors import UserError


@dataclass
class Stack:
    """One list of repeated layers (an encoder's, a decoder's)."""

    name: str
    """qualified module name of the ModuleList, e.g. 'bert.encoder.layer'"""
    layers: Any
    """the torch.nn.ModuleList"""
    count_key: str
    """the config key holding its length (num_hidden_layers, n_layer, encoder_layers ...)"""
    role: str
    """'encoder' | 'decoder' | 'layers'"""


@dataclass
class Group:
    """Units of one layer that are ranked against each other and removed together (heads, FFN neurons,
    channels); the adapter that made the group knows how to remove them."""

    key: tuple
    """('heads' | 'ffn', stack index, layer index) or ('channels', width index)"""
    count: int
    """units in the group"""
    parts: list[tuple[Any, int, int, int]]
    """(tensor, dim, start, block): unit u spans [start + u * block, start + (u + 1) * block) along dim"""
    magnitude_parts: int
    """how many leading parts rank units by magnitude (the producing weights); Taylor uses every part"""
    extra: dict[str, Any] = field(default_factory=dict)
    """what the adapter needs to remove the units (the attention's modules, the FFN's projections)"""


class Adapter(Protocol):
    """What a stage may ask about a model's architecture."""

    kind: str
    """'transformer' | 'cnn'"""

    def family(self, model: Any) -> str:
        """The family's name as its config says it (model_type), for messages."""

    def stacks(self, model: Any) -> list[Stack]:
        """The layer lists, encoder first."""

    def prune_groups(self, model: Any, parts: list[str], kv_cache: bool, notes: list[str]) -> list[Group]:
        """The removable units of every layer (``parts``: heads | ffn; CNNs: channels). Parts the family cannot
        remove are left out with a line in ``notes``; none at all is a UserError."""

    def remove_units(self, model: Any, groups: list[Group], keep: list[list[int]]) -> tuple[Any, dict[str, Any]]:
        """Remove all but ``keep[i]`` of each group's units; returns (the smaller model, facts). The model's
        config says the new sizes afterwards (checked by building a model from it)."""

    def drop_layers(self, model: Any, keep: list[int], where: str) -> Any:
        """A copy keeping the layers ``keep`` of every stack, with their weights."""

    def fresh_student(self, model: Any, layers: int, width: int, heads: int, where: str, seed: int) -> Any:
        """A newly initialised model of the same family with other sizes."""

    def width(self, model: Any) -> int:
        """The hidden size (0 for CNNs)."""

    def layer_count(self, model: Any) -> int:
        """Layers of the first stack."""

    def linear_layers(self, model: Any) -> list[tuple[str, Any, int]]:
        """(name, module, output axis of its weight) of every linear-like layer (Linear, GPT-2's Conv1D, Conv2d)."""

    def lora_targets(self, model: Any) -> list[str]:
        """Module name suffixes LoRA adapts by default."""

    def ort_fusion(self, config: dict[str, Any]) -> dict[str, Any] | None:
        """Arguments of ``onnxruntime.transformers.optimizer.optimize_model`` (model_type, num_heads,
        hidden_size) for families it knows, else None."""

    def count_macs(self, model: Any, seq_len: int, token_head: bool) -> int:
        """Multiply-accumulates of one forward pass of one example, from the layer shapes."""


# ---- weight layout: Linear (out, in) vs transformers' Conv1D (in, out) -------------------------------------

def is_conv1d(module: Any) -> bool:
    """transformers' Conv1D (GPT-2): a linear layer whose weight is stored (in, out)."""
    try:
        from transformers.pytorch_utils import Conv1D
    except ImportError:  # transformers always has it; keep the check importable without it
        return False
    return isinstance(module, Conv1D)


def io(module: Any) -> tuple[int, int] | None:
    """(in, out) features of a Linear or a Conv1D, else None."""
    import torch

    if isinstance(module, torch.nn.Linear):
        return module.in_features, module.out_features
    if is_conv1d(module):
        return int(module.weight.shape[0]), int(module.weight.shape[1])
    return None


def as_linear(model: Any) -> int:
    """Replace every transformers ``Conv1D`` in ``model`` by the ``nn.Linear`` it is (weight transposed to
    (out, in)), in place, so tools that look for ``nn.Linear`` (torchao's quantizers) reach GPT-2's layers too.
    Returns how many were replaced."""
    import torch

    found = [(name, m) for name, m in model.named_modules() if is_conv1d(m)]
    for name, conv in found:
        n_in, n_out = int(conv.weight.shape[0]), int(conv.weight.shape[1])
        linear = torch.nn.Linear(n_in, n_out, bias=conv.bias is not None, dtype=conv.weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(conv.weight.t())
            if conv.bias is not None:
                linear.bias.copy_(conv.bias)
        parent_name, _, attr = name.rpartition(".")
        setattr(model.get_submodule(parent_name) if parent_name else model, attr, linear)
    return len(found)


def out_axis(module: Any) -> int:
    """The weight axis that indexes output features (0 for Linear and Conv2d, 1 for Conv1D)."""
    return 1 if is_conv1d(module) else 0


def prune_out(module: Any, index: Any) -> Any:
    """A copy of a linear-like layer keeping the output features ``index``."""
    from transformers.pytorch_utils import prune_conv1d_layer, prune_linear_layer

    return prune_conv1d_layer(module, index, dim=1) if is_conv1d(module) else prune_linear_layer(module, index, 0)


def prune_in(module: Any, index: Any) -> Any:
    """A copy of a linear-like layer keeping the input features ``index``."""
    from transformers.pytorch_utils import prune_conv1d_layer, prune_linear_layer

    return prune_conv1d_layer(module, index, dim=0) if is_conv1d(module) else prune_linear_layer(module, index, 1)


def unit_parts_out(module: Any, start: int, block: int) -> list[tuple[Any, int, int, int]]:
    """Group parts for units along a layer's outputs (its weight rows and bias)."""
    parts = [(module.weight, out_axis(module), start, block)]
    if getattr(module, "bias", None) is not None:
        parts.append((module.bias, 0, start, block))
    return parts


def unit_parts_in(module: Any, start: int, block: int) -> list[tuple[Any, int, int, int]]:
    """Group parts for units along a layer's inputs (its weight columns)."""
    return [(module.weight, 1 - out_axis(module), start, block)]


def unsupported(model: Any, what: str, why: str, instead: str) -> UserError:
    """The one-line refusal: the family, what it lacks, what would work instead."""
    family = getattr(getattr(model, "config", None), "model_type", None) or type(model).__name__
    return UserError(f"{what} does not apply to '{family}' models ({type(model).__name__}): {why}; {instead}")
