"""The logits wrapper every exporter traces: positional inputs in, one logits tensor out."""
from __future__ import annotations

import inspect
from typing import Any

import torch


class Logits(torch.nn.Module):
    """Positional inputs in, one logits tensor out: the form torch.export, torch.jit and torch.onnx want.

    The wrapped model is used in the mode it is in (``load_model`` puts it in eval mode).

    HF models return a ModelOutput; this returns its ``.logits`` (or a plain module's tensor / first output).
    Decoders run without a KV cache; with ``causal`` their position ids follow the attention mask, as ONNX
    Runtime's generation loop (optimum) computes them, so left-padded prompts give the same logits everywhere.
    """

    def __init__(self, model: torch.nn.Module, input_names: list[str], causal: bool = False):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        params = inspect.signature(model.forward).parameters
        by_name = any(p.kind is p.VAR_KEYWORD for p in params.values()) or all(n in params for n in input_names)
        self._positional = not by_name  # e.g. nn.Sequential.forward(input)
        self._use_cache = "use_cache" in params
        self._positions = (causal and "position_ids" in params and "position_ids" not in input_names
                           and "attention_mask" in input_names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self._positional:
            return _logits(self.model(*tensors))
        kwargs = dict(zip(self.input_names, tensors))
        if self._positions:
            kwargs["position_ids"] = positions_from_mask(kwargs["attention_mask"])
        if self._use_cache:
            kwargs["use_cache"] = False
        return _logits(self.model(**kwargs))


def _logits(out: Any) -> torch.Tensor:
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: cumsum(mask) - 1, padding set to 1 (as optimum does)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def as_tensors(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in inputs.items()}
