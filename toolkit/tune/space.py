"""The search space of ``toolkit tune``: which compression chains fit the recipe's model, task and targets.

A chain is at most three ``[[compress]]`` tables: a student (distillation), structured pruning with a recovery
fine-tune, a quantization. Nothing here names a task or a model type: every candidate step is built as the typed
step settings a recipe would hold and kept only when its own ``check_model`` accepts the model (a CNN refuses a
transformer's layer list, a classifier refuses INT4 ...), so a new family or task widens the space by itself.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from toolkit.config import Recipe, config_hash
from toolkit.errors import UserError

SPARSITIES = (0.2, 0.35, 0.5)
"""structured pruning levels tried (fraction of heads / FFN neurons / channels removed)"""
NONE = "none"
TRAINING = ("distill", "prune")
"""methods whose steps fine-tune (their length is what successive halving shortens)"""


@dataclass
class Space:
    """Candidate steps by kind, each a recipe table (``method`` and its keys), keyed by a short label."""

    students: dict[str, dict[str, Any]] = field(default_factory=dict)
    prunes: dict[str, dict[str, Any]] = field(default_factory=dict)
    quants: dict[str, dict[str, Any]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    """what was left out and why (reported)"""

    def to_dict(self) -> dict[str, Any]:
        return {"students": self.students, "prunes": self.prunes, "quants": self.quants, "notes": self.notes}


def _accepts(recipe: Recipe, table: dict[str, Any], model: Any, task: Any, from_base: bool) -> str | None:
    """None when the step would apply to ``model``; else the first line of why not."""
    from toolkit.registry import METHODS
    from toolkit.schema import build

    cls = METHODS.get(table["method"])
    data = {k: v for k, v in table.items() if k != "from"}
    try:
        step = build(cls, data, "tune", recipe.source_path or "recipe")
        step.check("tune")
        step.check_model(model, task, "tune", from_base=from_base)
    except UserError as e:
        return str(e).split(": ", 2)[-1]
    return None


def fp16_runs_on(target: Any) -> bool:
    """Whether the device computes in FP16 (the profile's ISA lists it, or an accelerator has FP16 figures)."""
    return any("fp16" in f for f in target.isa) or any(a.gflops_fp16 > 0 for a in target.accelerators)


def search_space(recipe: Recipe, targets: dict[str, Any], max_drop: float) -> Space:
    """The candidate steps for ``recipe``'s model on ``targets`` (name -> profile).

    Raises:
        UserError: the model source cannot be trained from (an ONNX file): nothing to distil or prune.
    """
    from toolkit.arch import adapter_for
    from toolkit.models.skeleton import skeleton
    from toolkit.tasks import get_task

    task = get_task(recipe.task)
    model = skeleton(recipe, task)
    space = Space()
    guard = {"max_accuracy_drop": max_drop}
    # Students: layer dropping keeps evenly spaced layers with their weights; a CNN (whose adapter makes narrower
    # fresh students) gets its default half-width student and one at three quarters.
    adapter = adapter_for(model)
    candidates: dict[str, dict[str, Any]] = {}
    n = adapter.layer_count(model)
    for keep in sorted({max(1, (n + 1) // 2), max(1, (2 * n) // 3), max(1, n - 1)}):
        if keep < n:
            # every other layer for the half-depth student (the method's default, the benchmark's 6 -> [0, 2, 4]);
            # else evenly spaced, first and last kept
            idx = (list(range(0, n, 2)) if keep == (n + 1) // 2 else
                   sorted({round(i * (n - 1) / max(1, keep - 1)) for i in range(keep)}) if keep > 1 else [n - 1])
            # alpha 0.9: mostly the teacher's soft targets, what a shallower student needed in the compression
            # benchmark's hand-tuned chain
            candidates[f"layers{len(idx)}of{n}"] = {"method": "distill", "layers": idx, "alpha": 0.9}
    widths = getattr(adapter, "default_student_widths", None)
    if widths is not None:
        half = list(widths(model))
        candidates["widths-1/2"] = {"method": "distill", "widths": half, "alpha": 0.9}
        candidates["widths-3/4"] = {"method": "distill", "widths": [max(1, (w * 3) // 2) for w in half], "alpha": 0.9}
    for label, table in candidates.items():
        why = _accepts(recipe, table, model, task, from_base=True)
        if why is None:
            space.students[label] = table
            # the same student trained three times as long: a shallower student needs more than the base's
            # training (the benchmark's half-depth MiniLM: 3 passes), and the sampler finds out whether it pays
            space.students[f"{label}-x3"] = {**table, **_scaled(recipe.train, 3.0)}
        else:
            space.notes.append(f"student {label}: {why}")
    for s in SPARSITIES:
        # |w * grad| ranks units by what removing them costs the loss (the benchmark's chain used it)
        table = {"method": "prune", "kind": "structured", "sparsity": s, "importance": "taylor"}
        why = _accepts(recipe, table, model, task, from_base=True)
        if why is None:
            space.prunes[f"structured-{s:g}"] = table
        else:
            space.notes.append(f"prune {s:g}: {why}")
            break  # the same reason holds for every level
    # Quantizations in each target's INT8 format (one per distinct format); FP16 where a target computes in it.
    seen: set[str] = set()
    for name, target in targets.items():
        label = target.int8.label
        if label in seen:
            continue
        seen.add(label)
        for scheme in ("int8-dynamic", "int8-static"):
            for per_channel in (False, True):
                table = {"method": "quantize", "scheme": scheme, "target": name, "per_channel": per_channel, **guard}
                why = _accepts(recipe, table, model, task, from_base=True)
                key = f"{scheme}{'-pc' if per_channel else ''}@{name}"
                if why is None:
                    space.quants[key] = table
                else:
                    space.notes.append(f"{key}: {why}")
    if any(fp16_runs_on(t) for t in targets.values()):
        table = {"method": "fp16", **guard}
        why = _accepts(recipe, table, model, task, from_base=True)
        (space.quants.__setitem__("fp16", table) if why is None else space.notes.append(f"fp16: {why}"))
    else:
        space.notes.append("fp16: no target computes in FP16 (no 'fp16' in their ISA)")
    table = {"method": "quantize", "scheme": "int4", "target": next(iter(targets)), **guard}
    why = _accepts(recipe, table, model, task, from_base=True)
    (space.quants.__setitem__("int4", table) if why is None else space.notes.append(f"int4: {why}"))
    return space


def chain_tables(space: Space, student: str, prune: str, quant: str, length: float = 1.0,
                 train: Any = None) -> list[dict[str, Any]]:
    """The [[compress]] tables of one chain, each named by a hash of the chain up to it (so two chains that share
    a prefix share its variants, and a rerun finds them), the first from ``base``.

    ``length`` < 1 shortens every fine-tune of the chain to that fraction of ``train``'s (the [train] section's)
    epochs or steps: the first rung of successive halving. The length is part of the tables, hence of the hash.
    """
    picked = [t for t in (space.students.get(student), space.prunes.get(prune), space.quants.get(quant)) if t]
    if length < 1.0 and train is not None:
        picked = [({**t, **_scaled(train, length, t)} if t["method"] in TRAINING else t) for t in picked]
    tables: list[dict[str, Any]] = []
    parent = "base"
    for i, table in enumerate(picked):
        h = config_hash({"chain": picked[: i + 1]})[:8]
        name = f"t{h}-{table['method']}"
        tables.append({**table, "name": name, "from": parent})
        parent = name
    return tables


def _scaled(train: Any, factor: float, table: dict[str, Any] | None = None) -> dict[str, Any]:
    """A fine-tune's length (the table's own, else [train]'s steps or epochs) times ``factor``, as step keys."""
    table = table or {}
    if table.get("max_steps") or (not table.get("epochs") and train.max_steps > 0):
        return {"max_steps": max(1, round((table.get("max_steps") or train.max_steps) * factor))}
    return {"epochs": round((table.get("epochs") or train.epochs) * factor, 4)}


def chain_key(tables: list[dict[str, Any]]) -> str:
    """A trial's identity: the hash of its chain (its last variant's name carries the same hash)."""
    return tables[-1]["name"].split("-", 1)[0][1:] if tables else "base"


def needs_training(tables: list[dict[str, Any]]) -> bool:
    return any(t["method"] in TRAINING for t in tables)
