"""Hugging Face models whose layers no longer have the sizes their config describes (a CNN after structured
pruning), saved and reloaded without pickle.

A family's config cannot say "stage 2, block 1 keeps 37 of its 64 channels", so after channel pruning
``config.json`` would rebuild the unpruned model and ``from_pretrained`` would fail on the weights' shapes. Such a
model is saved with ``model_type = "edge-reshaped"``: config.json holds the family's own config as it was, the
family's name (``reshaped_from``) and, per module whose sizes differ from what the config builds
(``reshaped_modules``), the integer attributes that differ (``out_channels``, ``normalized_shape`` ...) and the
sizes of its tensors (``null`` for a dimension the config still sets, e.g. a classifier's class count). Importing
``toolkit.models`` registers the type with ``AutoConfig`` / ``AutoModelForImageClassification``, whose
``from_pretrained`` then builds the family's model from the config, resizes those modules and loads
``model.safetensors`` strictly. The model it returns is the family's own class (a ``ResNetForImageClassification``)
with the family's config; ``save_model`` writes the record again whenever the shapes differ.

Folders without differences are saved exactly as ``save_pretrained`` writes them (their own ``model_type``), so
unpruned models stay loadable by any tool.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import torch
from transformers import AutoConfig, AutoModelForImageClassification, PretrainedConfig

RESHAPED = "edge-reshaped"
_OWN_KEYS = ("model_type", "reshaped_from", "reshaped_modules", "transformers_version")


# ---- the record ------------------------------------------------------------------------------------------------

def _int_like(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return True
    return isinstance(value, (tuple, list)) and bool(value) and all(isinstance(v, int) and not isinstance(v, bool)
                                                                    for v in value)


def built_from_config(model: torch.nn.Module) -> torch.nn.Module:
    """The model the config describes, on the meta device (no memory, no initialisation cost)."""
    with torch.device("meta"):
        return type(model)._from_config(copy.deepcopy(model.config))


def shape_record(model: torch.nn.Module) -> dict[str, dict[str, Any]]:
    """Per module whose sizes differ from what ``model.config`` builds: {"attrs": the integer attributes that
    differ, "shapes": {tensor: size per dimension, None where it is the config's}}. Empty when none differ."""
    fresh = dict(built_from_config(model).named_modules())
    record: dict[str, dict[str, Any]] = {}
    for name, module in model.named_modules():
        ref = fresh.get(name)
        if ref is None:
            raise RuntimeError(f"{type(model).__name__}: module '{name}' is not in the model its config builds; "
                               f"only resized modules can be recorded")
        shapes = {}
        for key, t in [*module.named_parameters(recurse=False), *module.named_buffers(recurse=False)]:
            want = getattr(ref, key, None)
            if want is not None and tuple(want.shape) != tuple(t.shape):
                shapes[key] = [d if d != w else None for d, w in zip(t.shape, want.shape)]
        attrs = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(module).items()
                 if not k.startswith("_") and _int_like(v) and _int_like(getattr(ref, k, None))
                 and getattr(ref, k) != v}
        if shapes or attrs:
            record[name] = {"attrs": attrs, "shapes": shapes}
    return record


def apply_record(model: torch.nn.Module, record: dict[str, dict[str, Any]]) -> None:
    """Resize ``model``'s modules as ``record`` says (their tensors become uninitialised: load weights next)."""
    for name, entry in record.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"reshaped_modules names '{name}', which the model has not") from None
        for key, value in entry.get("attrs", {}).items():
            old = getattr(module, key)
            setattr(module, key, tuple(value) if isinstance(old, tuple) else value)
        for key, dims in entry.get("shapes", {}).items():
            old = getattr(module, key)
            shape = [d if d is not None else o for d, o in zip(dims, old.shape)]
            new = torch.empty(shape, dtype=old.dtype)
            if key in module._parameters:
                setattr(module, key, torch.nn.Parameter(new, requires_grad=old.requires_grad))
            else:
                module._buffers[key] = new


# ---- the config and the loader transformers calls ---------------------------------------------------------------

class ReshapedConfig(PretrainedConfig):
    """config.json of a reshaped model: the family's config keys, ``reshaped_from`` and ``reshaped_modules``."""

    model_type = RESHAPED

    def __init__(self, reshaped_from: str | None = None, reshaped_modules: dict | None = None, **kwargs: Any) -> None:
        self.reshaped_from = reshaped_from
        self.reshaped_modules = dict(reshaped_modules or {})
        super().__init__(**kwargs)

    def family_config(self) -> PretrainedConfig:
        """The family's own config (with whatever was set on this one: labels, dropout)."""
        if not self.reshaped_from:
            raise ValueError("config.json of an edge-reshaped model has no reshaped_from (the family's model_type)")
        keys = {k: v for k, v in self.to_dict().items() if k not in _OWN_KEYS}
        return AutoConfig.for_model(self.reshaped_from, **keys)


class ReshapedForImageClassification:
    """What ``AutoModelForImageClassification`` calls for an edge-reshaped folder; it returns the family's model."""

    config_class = ReshapedConfig
    main_input_name = "pixel_values"

    @classmethod
    def _from_config(cls, config: ReshapedConfig, **kwargs: Any) -> torch.nn.Module:
        """The family's model at the recorded sizes, freshly initialised."""
        model = AutoModelForImageClassification.from_config(config.family_config(), **kwargs)
        apply_record(model, config.reshaped_modules)
        for module in model.modules():  # the resized tensors are empty: initialise them as the family does
            model._init_weights(module)
        return model

    @classmethod
    def from_pretrained(cls, path: str | Path, *args: Any, config: ReshapedConfig | None = None,
                        output_loading_info: bool = False, ignore_mismatched_sizes: bool = False,
                        **kwargs: Any) -> Any:
        from safetensors.torch import load_file

        path = Path(path)
        config = config if config is not None else ReshapedConfig.from_pretrained(path)
        extra = {k: kwargs[k] for k in ("attn_implementation",) if kwargs.get(k) is not None}
        model = AutoModelForImageClassification.from_config(config.family_config(), **extra)
        apply_record(model, config.reshaped_modules)
        files = sorted(path.glob("model*.safetensors"))
        if not files:
            raise OSError(f"{path}: an edge-reshaped model needs model.safetensors beside config.json")
        state: dict[str, torch.Tensor] = {}
        for f in files:
            state.update(load_file(str(f)))
        own = model.state_dict()
        mismatched = [k for k, t in state.items() if k in own and tuple(t.shape) != tuple(own[k].shape)]
        if mismatched and not ignore_mismatched_sizes:
            k = mismatched[0]
            raise RuntimeError(f"{path}: {k} is {tuple(state[k].shape)} in the weights but "
                               f"{tuple(own[k].shape)} in the model config.json describes")
        for k in mismatched:
            state.pop(k)
        missing, unexpected = model.load_state_dict(state, strict=False)
        fresh = sorted(set(missing) | set(mismatched))
        if unexpected or (missing and not ignore_mismatched_sizes):
            what = f"{unexpected[0]} is not in the model" if unexpected else f"{missing[0]} is missing"
            raise RuntimeError(f"{path}: the weights do not fit the recorded shapes ({what})")
        owners = {k.rpartition(".")[0] for k in fresh}
        for name in owners:  # a classifier fitted to other classes: initialised as the family does
            model._init_weights(model.get_submodule(name))
        model.eval()
        if output_loading_info:
            return model, {"missing_keys": sorted(missing), "unexpected_keys": [],
                           "mismatched_keys": [(k, tuple(state.get(k, own[k]).shape), tuple(own[k].shape))
                                               for k in mismatched], "error_msgs": []}
        return model


# ---- saving -----------------------------------------------------------------------------------------------------

def save_model(model: torch.nn.Module, out_dir: Path) -> dict[str, Any]:
    """``save_pretrained`` (safetensors); when the model's modules differ from what its config builds, config.json
    becomes the edge-reshaped one that rebuilds them. Returns the record (empty: a plain folder)."""
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir, safe_serialization=True)
    config = getattr(model, "config", None)
    if config is None or getattr(config, "model_type", None) in (None, "", RESHAPED):
        return {}
    try:
        record = shape_record(model)
    except NotImplementedError:  # a family that cannot be built on the meta device: its shapes come from config
        return {}
    if record:
        path = out_dir / "config.json"
        data = json.loads(path.read_text(encoding="utf-8"))
        data.update(model_type=RESHAPED, reshaped_from=config.model_type, reshaped_modules=record)
        path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return record


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModelForImageClassification`` load edge-reshaped folders (idempotent)."""
    AutoConfig.register(RESHAPED, ReshapedConfig, exist_ok=True)
    AutoModelForImageClassification.register(ReshapedConfig, ReshapedForImageClassification, exist_ok=True)


register_auto_classes()
