"""Architecture adapters: everything a stage needs to know about a model's structure, in one place per family.

    from toolkit.arch import adapter_for
    adapter = adapter_for(model)
    adapter.stacks(model)            # the layer lists
    adapter.prune_groups(model, ["heads", "ffn"], kv_cache=False, notes=[])

The adapters register themselves (``toolkit.registry.ADAPTERS``); the first that recognises a model answers for
it, adapters with a higher ``precedence`` asked first. See ``base.py`` for the questions, ``transformer.py`` /
``cnn.py`` / ``convnet.py`` for the answers.
"""
from __future__ import annotations

from typing import Any

from toolkit.arch.base import Adapter, Group, Stack
from toolkit.errors import UserError
from toolkit.registry import ADAPTERS


def family_name(obj: Any) -> str | None:
    """A Hugging Face family's name (config's model_type) for a model, its config, or a model folder; None when
    there is none (a plain torch module)."""
    from pathlib import Path

    if isinstance(obj, (str, Path)):
        import json

        cfg = Path(obj) / "config.json"
        if not cfg.is_file():
            return None
        try:
            value = json.loads(cfg.read_text(encoding="utf-8")).get("model_type")
        except (OSError, ValueError, AttributeError):
            return None
        return value if isinstance(value, str) else None
    config = getattr(obj, "config", obj)
    value = getattr(config, "model_type", None)
    return value if isinstance(value, str) and value else None


def adapter_for(model: Any) -> Adapter:
    """The adapter that recognises ``model``.

    Raises:
        UserError: no adapter recognises it; the message names the family and what was looked for.
    """
    # Higher precedence is asked first (a CNN adapter before the transformer adapter: hybrids such as MobileViT
    # hold transformer layers inside a CNN); equal precedence keeps registration order.
    for _, adapter in sorted(ADAPTERS.items(), key=lambda item: -getattr(item[1], "precedence", 0)):
        if adapter.matches(model):
            return adapter
    family = family_name(model) or type(model).__name__
    raise UserError(f"'{family}' models ({type(model).__name__}) have no structure this toolkit can read: no list "
                    f"of transformer layers with attention and no CNN it knows; structured pruning and "
                    f"distillation need one (quantization and unstructured pruning work without)")


__all__ = ["Adapter", "Group", "Stack", "adapter_for", "family_name"]
