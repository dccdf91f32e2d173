"""LoRA fine-tuning with peft: low-rank adapters on a frozen base, merged back into an ordinary model.

``[train.lora] r = 8`` wraps the task's model with ``peft.get_peft_model``: only the adapters (and the task
head, ``modules_to_save``) train. After training, ``train/adapter/`` keeps the adapter (``save_pretrained``
of the PeftModel) and ``merge_and_verify`` folds it into the base weights (``merge_and_unload``), so
``train/final/`` — what compression and export read — is a plain model of the base's class. The merge is
checked on real validation samples: the merged model must give the adapter model's outputs, and a merge
that changes no weight (an adapter that never trained) is an error.
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

import torch

from toolkit.config import Recipe
from toolkit.errors import CheckFailed, UserError

HEADS = ("classifier", "score")          # classification heads, trained in full beside the adapters
MERGE_RTOL = 1e-4                        # merged vs adapter outputs: |Δ| <= MERGE_RTOL * max(1, max |output|)


def enabled(recipe: Recipe) -> bool:
    """True when the recipe asks for LoRA (``[train.lora] r > 0``)."""
    return recipe.train.lora.r > 0


def check_config(recipe: Recipe) -> None:
    """Value checks of ``[train.lora]``. Raises UserError naming the key."""
    c, file = recipe.train.lora, recipe.source_path or "the recipe"
    checks = [("r", c.r, c.r >= 0, "must be >= 0 (0 = off), e.g. 8"),
              ("alpha", c.alpha, c.alpha > 0 and math.isfinite(c.alpha), "must be a positive number, e.g. 16"),
              ("dropout", c.dropout, 0 <= c.dropout < 1, "must be in [0, 1)")]
    for key, value, ok, why in checks:
        if not ok:
            raise UserError(f"{file}: train.lora.{key} = {value!r}: {why}")
    if c.r > 0 and not recipe.train.enabled:
        raise UserError(f"{file}: train.lora.r = {c.r} but [train] enabled = false: nothing would train; "
                        f"remove [train.lora] or enable training")


def _peft() -> Any:
    try:
        import peft
    except ImportError:
        raise UserError("[train.lora] needs the peft library: pip install 'edge-toolkit[peft]'") from None
    return peft


@dataclass
class LoraSetup:
    """What ``apply_lora`` did; recorded in the manifest (``lora``) and in every checkpoint (``base``)."""

    r: int
    alpha: float
    dropout: float
    target_modules: list[str]
    modules_to_save: list[str]
    adapted_modules: int
    trainable_params: int
    total_params: int
    base: dict[str, str] = field(default_factory=dict)

    @property
    def trainable_fraction(self) -> float:
        return self.trainable_params / max(1, self.total_params)

    def info(self) -> dict[str, Any]:
        return {**asdict(self), "trainable_fraction": self.trainable_fraction}


def base_reference(recipe: Recipe, model: torch.nn.Module) -> dict[str, str]:
    """The frozen base the adapters belong to: a model folder's path and sha256 (of its files), or for a
    built-in the name and the sha256 of its seeded initial weights."""
    from toolkit.models import resolve_source
    from toolkit.rundir import sha256_path

    src = resolve_source(recipe)
    if src.kind == "dir" and src.path is not None:
        return {"source": recipe.model.source, "path": str(src.path.resolve()), "sha256": sha256_path(src.path)}
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode() + b"\0" + t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"source": str(src), "path": str(src), "sha256": h.hexdigest()}


def apply_lora(recipe: Recipe, model: torch.nn.Module) -> tuple[torch.nn.Module, LoraSetup]:
    """Wrap ``model`` with LoRA adapters per ``recipe.train.lora``; returns (PeftModel, setup).

    Raises:
        UserError: peft is missing, the architecture has no default targets and none are given, or a
            target/saved module matches nothing in the model.
    """
    peft = _peft()
    from toolkit.arch import adapter_for
    from toolkit.arch.base import is_conv1d
    from toolkit.tasks import get_task
    from toolkit.tasks.common import seeded

    cfg, file = recipe.train.lora, recipe.source_path or "the recipe"
    base = base_reference(recipe, model)
    names = [n for n, _ in model.named_modules() if n]
    try:
        adapter = adapter_for(model)
    except UserError:
        adapter = None
    family = adapter.family(model) if adapter is not None else type(model).__name__
    targets = list(cfg.target_modules) or (adapter.lora_targets(model) if adapter is not None else [])
    if not targets:
        linear = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)})
        raise UserError(f"{file}: train.lora.target_modules: no default for '{family}' models; name the "
                        f"layers to adapt, e.g. {', '.join(linear[:8])}")
    heads = [h for h in HEADS if hasattr(model, h)] if get_task(recipe.task).classifies else []
    to_save = list(cfg.modules_to_save) or heads
    layers = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules()
                     if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d, torch.nn.Embedding)) or is_conv1d(m)})
    children = [n for n, _ in model.named_children()]
    for key, wanted, hint in (("target_modules", targets, layers), ("modules_to_save", to_save, children)):
        for t in wanted:
            if not any(n == t or n.endswith("." + t) for n in names):
                raise UserError(f"{file}: train.lora.{key}: '{t}' matches no module of this {family} model; "
                                f"candidates: {', '.join(hint[:16])}")
    config = peft.LoraConfig(r=cfg.r, lora_alpha=cfg.alpha, lora_dropout=cfg.dropout, target_modules=targets,
                             modules_to_save=to_save or None,
                             fan_in_fan_out=any(is_conv1d(m) for m in model.modules()))  # GPT-2: weights (in, out)
    with seeded(recipe.seed):  # the adapters' initialisation depends only on the recipe's seed
        try:
            wrapped = peft.get_peft_model(model, config)
        except (ValueError, TypeError, AttributeError) as e:  # peft's word for a layer it cannot adapt
            from toolkit.errors import first_line

            raise UserError(f"{file}: train.lora.target_modules = {targets}: peft cannot adapt them in this "
                            f"{family} model ({first_line(e, 160)}); name plain Linear or Conv2d layers") from None
    trainable, total = wrapped.get_nb_trainable_parameters()
    adapted = sum(1 for m in wrapped.modules() if isinstance(m, peft.tuners.lora.LoraLayer))
    setup = LoraSetup(r=cfg.r, alpha=cfg.alpha, dropout=cfg.dropout, target_modules=targets, modules_to_save=to_save,
                      adapted_modules=adapted, trainable_params=int(trainable), total_params=int(total), base=base)
    return wrapped, setup


def _outputs(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    return (out.logits if hasattr(out, "logits") else out[0]).float()  # (B, ..., K)


def merge_and_verify(wrapped: torch.nn.Module, samples: Sequence[Any], collate: Any,
                     rtol: float = MERGE_RTOL) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Fold the adapters into the base weights (``merge_and_unload``) and check the result.

    Args:
        wrapped: the trained PeftModel (on the CPU).
        samples: real validation items; their outputs before and after the merge are compared.
        collate: the task's collate function.

    Returns:
        (the merged plain model, {"samples", "max_abs_diff", "tolerance", "changed_modules", "adapted_modules"})

    Raises:
        CheckFailed: the merged model's outputs differ from the adapter model's beyond the tolerance, or
            the merge changed no weight (the adapters are zero: nothing was learnt).
    """
    peft = _peft()
    if not samples:
        raise CheckFailed("LoRA merge: no validation or eval samples to verify the merged model on")
    batch = collate(list(samples))
    wrapped.eval()
    before: dict[str, torch.Tensor] = {}
    prefix = "base_model.model."
    for name, module in wrapped.named_modules():
        if isinstance(module, peft.tuners.lora.LoraLayer):
            before[name.removeprefix(prefix)] = module.get_base_layer().weight.detach().clone()
    with torch.no_grad():
        reference = _outputs(wrapped, batch)
        merged = wrapped.merge_and_unload()
        merged.eval()
        got = _outputs(merged, batch)
    changed = sum(1 for name, w in before.items() if not torch.equal(merged.get_submodule(name).weight, w))
    diff = float((got - reference).abs().max())
    tol = rtol * max(1.0, float(reference.abs().max()))
    check = {"samples": len(samples), "max_abs_diff": diff, "tolerance": tol, "changed_modules": changed,
             "adapted_modules": len(before)}
    if changed == 0:
        raise CheckFailed(f"LoRA merge changed none of the {len(before)} adapted weights: the adapters are zero "
                          f"(did training run? check train.lr and train.max_steps)")
    if not diff <= tol:
        raise CheckFailed(f"LoRA merge: the merged model's outputs differ from the adapter model's by {diff:.3g} "
                          f"(tolerance {tol:.1g}) on {len(samples)} validation samples")
    return merged, check
