"""A model's structure without its weights: built on the meta device from a folder's config.json or a built-in's
settings, so a recipe's steps can be checked against the model's architecture before any work (no data is read,
nothing is trained, no memory is used for weights).
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from toolkit.errors import UserError


def skeleton(recipe: Any, task: Any) -> Any | None:
    """The model ``recipe.model.source`` names, on the meta device; None for an ONNX source (no PyTorch model).

    Raises:
        UserError: a folder that is not a model folder (as loading it would).
    """
    import torch

    from toolkit.models.builtin import resolve_source

    if recipe.model.source.strip().lower().endswith(".onnx"):
        return None
    src = resolve_source(recipe)
    with torch.device("meta"):
        if src.kind == "builtin":
            return _builtin(recipe, src.name)
        import transformers

        from toolkit.models.pretrained import check_model_dir

        config = check_model_dir(src.path)
        if task.classifies and getattr(config, "num_labels", 0) < 2:
            config.num_labels = 2
        try:
            return getattr(transformers, task.auto_class).from_config(config)
        except ValueError as e:
            raise UserError(f"{src.path}: a '{getattr(config, 'model_type', '?')}' model has no {task.name} head "
                            f"({str(e).splitlines()[0][:120]}): point model.source at a {task.name} model") from None


def _builtin(recipe: Any, name: str) -> Any:
    from toolkit.models import builtin

    stub = SimpleNamespace(pad_token_id=0, eos_token_id=1, bos_token_id=2, __len__=lambda: recipe.model.vocab_size)
    tokenizer = _Sized(stub, recipe.model.vocab_size)
    if name == "cnn-small":
        return builtin.cnn_small(recipe, 1, [8, 8], ["0", "1"])
    if name == "bert-tiny":
        return builtin.bert_tiny(recipe, tokenizer, ["0", "1"])
    return getattr(builtin, name.replace("-", "_"))(recipe, tokenizer)


class _Sized:
    """A tokenizer stand-in: the special ids and the vocabulary size are all a built-in's config reads."""

    def __init__(self, ns: SimpleNamespace, size: int) -> None:
        self.pad_token_id, self.eos_token_id, self.bos_token_id = ns.pad_token_id, ns.eos_token_id, ns.bos_token_id
        self._size = size

    def __len__(self) -> int:
        return self._size
