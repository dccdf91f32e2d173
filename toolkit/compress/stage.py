"""The compress stage: a recipe's [[compress]] steps in order, each making one variant from its parent.

Every step's handler writes ``variants/<name>/`` (model/ for PyTorch results, model.onnx for ONNX Runtime results,
model.pte for PT2E) and returns a Variant; the stage saves it as ``variants/<name>/variant.json`` (last, so a
variant.json means a finished step), records it in the manifest with what the step did, and reports each step
through events (start, progress, log, artifact, done). A step whose settings and parent are unchanged since it
last finished is skipped, so a rerun continues where an interrupted one stopped.
"""
from __future__ import annotations

import shutil
import time
from typing import Any

from toolkit.compress.context import Context
from toolkit.config import Recipe, config_hash
from toolkit.errors import UserError
from toolkit.events import StageEmitter
from toolkit.rundir import RunDir, load_manifest, record_artifact, update_manifest
from toolkit.steps import handler_for, step_to_dict
from toolkit.variants import Variant, load_variants, main_file, size_bytes

STAGE = "compress"

# Info keys worth a line of their own in the step's summary event (the full info is in variant.json).
SUMMARY_KEYS = ("scheme", "int8_format", "kind", "sparsity", "params_before", "params_after", "size_bytes",
                "size_ratio", "layers_in_float", "within_budget")


def step_hash(step: Any, parent: Variant, manifest: dict[str, Any]) -> str:
    """What a step's result depends on: its settings and its parent's recorded content."""
    parent_sha = next((a.get("sha256") for a in manifest.get("artifacts", []) if a.get("name") == parent.name), "")
    return config_hash({"step": step_to_dict(step), "parent": parent.name, "parent_sha256": parent_sha})


def check_steps(recipe: Recipe) -> None:
    """Every [[compress]] step against the model's structure, before any work: a step that cannot apply to the
    family (structured pruning of a model whose units cannot be removed, a layer that does not exist, PT2E of a
    language model, distillation of an ONNX file ...) is one UserError naming the step, the family and what works
    instead."""
    if not recipe.steps:
        return
    from toolkit.models.skeleton import skeleton
    from toolkit.tasks import get_task

    task = get_task(recipe.task)
    model = skeleton(recipe, task)
    file = recipe.source_path or "recipe"
    for step in recipe.steps:
        where = f"{file}: [[compress]] '{step.name}' ({type(step).method_name})"
        step.check_model(model, task, where, from_base=step.from_ == "base")


def run_compress(recipe: Recipe, run: RunDir, emit: StageEmitter) -> dict[str, Variant]:
    """Run the recipe's [[compress]] steps in order into ``run``; returns every variant by name (base first).

    Raises:
        UserError: a bad step (named with its key), no baseline variant (train first), a step that fails on its
            input (e.g. nothing to quantize).
    """
    from toolkit.rundir import quiet_onnxruntime

    quiet_onnxruntime()
    file = recipe.source_path or "recipe"
    steps = recipe.steps
    variants = load_variants(run.variants)
    if "base" not in variants:
        raise UserError(f"{run.variant('base')}: no baseline variant; run `python -m toolkit train` on the recipe "
                        f"first (or `python -m toolkit compress`, which trains when it is missing)")
    ctx = Context(recipe=recipe, run=run, emit=emit)
    ctx.cache["variants"] = variants
    emit("start", total=len(steps), steps=[s.name for s in steps])
    started = time.time()
    done: list[str] = []
    for i, step in enumerate(steps, 1):
        parent = variants[step.from_]
        chash = step_hash(step, parent, load_manifest(run))
        method = type(step).method_name
        if _up_to_date(run, step.name, chash, variants):
            emit("skip", step=step.name, reason=f"variant '{step.name}' is up to date with its step and parent")
            emit("progress", step=i, total=len(steps), variant=step.name)
            done.append(step.name)
            continue
        emit.log(f"step {i}/{len(steps)}: {step.name} = {method}"
                 f"{' ' + getattr(step, 'scheme', '') if getattr(step, 'scheme', '') else ''} of '{parent.name}'")
        _clear(run, step.name)
        t0 = time.time()
        handler = handler_for(step)
        try:
            variant = handler(step, parent, ctx)
        except UserError as e:
            # name the recipe file, as parse errors do (handlers name the step and the key)
            if not str(e).startswith(file):
                e.args = (f"{file}: {e}",)
            raise
        variant = _finish(variant, step, parent, run, time.time() - t0)
        variant.save()
        entry = record_artifact(run, step.name, "variant", main_file(variant), STAGE, parent=parent.name,
                                config_hash=chash, method=method, step=step_to_dict(step),
                                within_budget=variant.within_budget, info=variant.info)
        variants[step.name] = variant
        emit("artifact", path=entry["path"], what="variant", variant=step.name, method=method, parent=parent.name,
             within_budget=variant.within_budget, summary={k: variant.info[k] for k in SUMMARY_KEYS if k in variant.info})
        if variant.within_budget is False:
            emit.log(f"{step.name}: over its accuracy budget: {variant.info.get('note', 'see variant.json')}",
                     "warning")
        emit("progress", step=i, total=len(steps), variant=step.name)
        done.append(step.name)
    update_manifest(run, compress={"steps": done, "seconds": round(time.time() - started, 1)})
    emit("done", variants=[n for n in variants], steps=done)
    return variants


def _up_to_date(run: RunDir, name: str, chash: str, variants: dict[str, Variant]) -> bool:
    if name not in variants:
        return False
    for a in load_manifest(run).get("artifacts", []):
        if a.get("name") == name and a.get("stage") == STAGE:
            return a.get("config_hash") == chash
    return False


def _clear(run: RunDir, name: str) -> None:
    """Remove what an earlier (changed or interrupted) run of this step left, keeping its checkpoints so a
    training step resumes."""
    folder = run.variant(name)
    if not folder.exists():
        return
    for child in folder.iterdir():
        if child.name == "checkpoints":
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


def _finish(variant: Variant, step: Any, parent: Variant, run: RunDir, seconds: float) -> Variant:
    """Fill what every variant records: names, sizes, the time taken, the params when the handler did not say."""
    if variant.name != step.name or variant.parent != parent.name:
        raise UserError(f"[[compress]] {step.name}: the handler returned variant '{variant.name}' (parent "
                        f"'{variant.parent}'); expected '{step.name}' from '{parent.name}'")
    info = dict(variant.info)
    info.setdefault("size_bytes", size_bytes(main_file(variant)))
    info.setdefault("parent_size_bytes", parent.info.get("size_bytes") or size_bytes(main_file(parent)))
    if variant.model_dir is not None and "params_after" not in info:
        from safetensors import safe_open

        weights = variant.model_dir / "model.safetensors"
        if weights.exists():
            with safe_open(str(weights), "pt") as fh:
                info["params_after"] = sum(_numel(fh.get_slice(k).get_shape()) for k in fh.keys())
    info["seconds"] = round(seconds, 1)
    variant.info = info
    return variant


def _numel(shape: list[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n
