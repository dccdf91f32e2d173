"""The export stage: every variant's deployable files, each verified on real eval samples.

For each variant of the run (``variants/*/variant.json``):

- a PyTorch variant (``model_dir``) is exported to ``[export] formats`` into ``variants/<name>/``: ``model.onnx``
  (seq2seq: ``encoder_model.onnx`` + ``decoder_model_merged.onnx``), ``model.ort`` (+ its required-operators
  config), ``model.pte``, ``model.ts``; each file is compared with the variant's own PyTorch outputs (float: max
  absolute difference <= ``[export] atol``);
- an ONNX Runtime variant (INT8 / FP16 from the compression stage: ``model_dir`` is None) keeps its ONNX graph,
  gets ``.ort`` files converted from it and keeps a ``.pte`` a PT2E step made; those are lossy, compared with the
  PyTorch outputs of the nearest ancestor that has a model folder (label agreement >= ``min_agreement`` and mean
  logit cosine >= ``min_cosine``);
- the tokenizer, preprocessing and label files go beside the models, so the folder is usable on its own.

Results go to ``variants/<name>/export.json`` and the manifest (``verification`` and one artifact per file).
``strict`` (the explicit ``toolkit export`` command): a failed check raises CheckFailed (exit 3), a format whose
extra is missing is a UserError naming it. In a session: failures are flagged (log warnings) and the run goes on.
A model that does not lower to a best-effort format (ExecuTorch for decoders / encoder-decoders; TorchScript where
tracing fails) is reported with the reason, not failed.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from toolkit.config import Recipe, config_hash
from toolkit.errors import UserError
from toolkit.events import StageEmitter
from toolkit.rundir import RunDir, atomic_write_json, record_artifact, update_manifest

STAGE = "export"
ORDER = ("onnx", "ort", "pte", "torchscript")
VERIFY_BATCH = 8
EXTRA = "pip install 'edge-toolkit[executorch]'"


def run_export(recipe: Recipe, run: RunDir, emit: StageEmitter, strict: bool = False) -> dict[str, list[dict]]:
    """Export and verify every variant of ``run``; returns {variant: export.json's "files"}.

    Raises:
        UserError: no variants in the run; with ``strict``, a format whose extra is missing or an export error.
        CheckFailed: with ``strict``, any file that failed verification (after every variant was written).
    """
    from toolkit.rundir import quiet_onnxruntime

    quiet_onnxruntime()
    import toolkit.models  # noqa: F401  (registers the CNN with transformers' Auto classes)
    from toolkit.compress.registry import Context, load_variants
    from toolkit.export.verify import raise_if_failed

    variants = {name: _rebase(v, run) for name, v in load_variants(run.variants).items()}
    if not variants:
        raise UserError(f"{run.variants}: no variants to export; train first (python -m toolkit train RECIPE)")
    formats = [f for f in ORDER if f in recipe.export.formats]
    if "ort" in formats and "onnx" not in formats:
        formats.insert(0, "onnx")  # .ort files are converted from the ONNX graph
    skipped: dict[str, str] = {}
    if "pte" in formats and not executorch_available():
        why = f"ExecuTorch is not installed: {EXTRA}"
        if strict:
            raise UserError(f"[export] formats includes 'pte': the .pte format needs ExecuTorch, which is not "
                            f"installed: {EXTRA}")
        emit.log(f".pte skipped: {why}", "warning")
        skipped["pte"] = why
    ctx = Context(recipe, run, emit)
    exporter = _VariantExport(recipe, run, emit, ctx, variants, strict)
    emit("start", total=len(variants), variants=list(variants), formats=formats)
    results: dict[str, list[dict]] = {}
    checks: list[dict] = []
    for i, variant in enumerate(variants.values()):
        emit("progress", step=i, total=len(variants), variant=variant.name)
        records, raw = exporter.export(variant, [f for f in formats if f not in skipped])
        records += [{"format": f, "path": None, "size_bytes": 0, "verified": None, "check": {}, "reason": why}
                    for f, why in skipped.items()]
        checks += raw
        results[variant.name] = records
        _write(run, variant, records, recipe)
        failed = [r for r in records if r["verified"] is False]
        for r in failed:
            what = f"{r['path']} FAILED verification" if r["path"] else "export FAILED"
            emit.log(f"{variant.name}: {r['format']} {what}: {r.get('reason') or _summary(r['check'])}", "warning")
    emit("progress", step=len(variants), total=len(variants))
    if strict:
        raise_if_failed(checks)
    emit("done", variants=list(results), verified=sum(r["verified"] is True for rs in results.values() for r in rs),
         failed=sum(r["verified"] is False for rs in results.values() for r in rs))
    return results


def _rebase(variant: Any, run: RunDir) -> Any:
    """The variant with its paths inside this run directory (variant.json holds the paths of the run directory it
    was made in; a copied or moved run keeps working)."""
    folder = run.variant(variant.name)

    def moved(p: Any) -> Any:
        if p is None:
            return None
        here = folder / Path(p).name
        return here if here.exists() else Path(p)

    return dataclasses.replace(variant, path=folder, model_dir=moved(variant.model_dir), onnx=moved(variant.onnx))


def executorch_available() -> bool:
    """ExecuTorch (the optional extra) imports."""
    try:
        import executorch.exir  # noqa: F401
    except ImportError:
        return False
    return True


class _VariantExport:
    """Exports one variant after another, sharing the eval samples of each reference model."""

    def __init__(self, recipe: Recipe, run: RunDir, emit: StageEmitter, ctx: Any, variants: dict[str, Any],
                 strict: bool) -> None:
        self.recipe, self.run, self.emit, self.ctx = recipe, run, emit, ctx
        self.variants, self.strict = variants, strict
        self.task = recipe.task
        self._samples: dict[Path, list[dict]] = {}

    # -- references and samples ------------------------------------------------------------------------------

    def reference(self, variant: Any) -> Path | None:
        """The PyTorch model a variant's files are compared with: its own, else the nearest ancestor's."""
        seen: set[str] = set()
        v = variant
        while v is not None and v.name not in seen:
            seen.add(v.name)
            if v.model_dir is not None and Path(v.model_dir).is_dir():
                return Path(v.model_dir)
            v = self.variants.get(v.parent) if v.parent else None
        return None

    def samples(self, model_dir: Path) -> list[dict]:
        """Up to ``[export] verify_samples`` real examples (the eval split; else validation, else train), collated
        by the task into batches of numpy arrays, as the model's tokenizer / preprocessing encodes them."""
        if model_dir not in self._samples:
            import numpy as np

            prepared = self.ctx.prepare(model_dir)
            items = list(prepared.eval_set or prepared.val_set or prepared.train_set)[: self.recipe.export.verify_samples]
            if not items:
                raise UserError(f"{model_dir}: no examples to verify the exports on (the data splits are empty)")
            batches = []
            for start in range(0, len(items), VERIFY_BATCH):
                batch = prepared.collate(items[start:start + VERIFY_BATCH])
                batches.append({k: np.asarray(v) for k, v in batch.items()})
            self._samples[model_dir] = batches
        return self._samples[model_dir]

    # -- one variant -----------------------------------------------------------------------------------------

    def export(self, variant: Any, formats: list[str]) -> tuple[list[dict], list[dict]]:
        """(export.json records, verify() results) for one variant."""
        from toolkit.export.bundle import copy_bundle_files

        folder = Path(variant.path)
        ref = self.reference(variant)
        own_onnx = variant.model_dir is None
        if ref is not None:
            if own_onnx:  # keep what the compression step copied; fill in what is missing
                if not (folder / "labels.json").exists() and not (folder / "preprocess.json").exists():
                    copy_bundle_files(ref, folder)
            else:
                copy_bundle_files(ref, folder)
        records: list[dict] = []
        raw: list[dict] = []
        onnx_result = None
        for fmt in formats:
            try:
                result, reference, lossy = self._make(variant, fmt, ref, onnx_result)
            except Exception as exc:  # exporters raise many types; in a session one format must not stop the run
                if self.strict:
                    raise
                why = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                records.append(_record(fmt, None, self.run, False, {}, reason=why if isinstance(exc, UserError)
                                       else f"{type(exc).__name__}: {why}"))
                continue
            if isinstance(result, str):  # not applicable / not lowered: the reason
                records.append(_record(fmt, None, self.run, None, {}, reason=result))
                if "did not lower" in result or "not traced" in result:
                    self.emit.log(f"{variant.name}: {fmt}: {result}", "warning")
                continue
            if fmt == "onnx":
                onnx_result = result
            checks = self._verify(result, reference, lossy, variant)
            raw += checks
            by_file = {Path(c["file"]).name: c for c in checks}
            for path in result.files:
                c = by_file.get(path.name)
                extra = {"exporter": result.exporter}
                if fmt == "ort" and path.name in result.extra.get("required_operators", {}):
                    extra["required_operators"] = _rel(result.extra["required_operators"][path.name], self.run)
                if fmt == "onnx" and result.opset:
                    extra["opset"] = result.opset
                if c is None:
                    records.append(_record(fmt, path, self.run, None, {}, reason="no PyTorch model to compare with",
                                           **extra))
                else:
                    check = {k: v for k, v in c.items() if k not in ("format", "file", "verified", "reason")}
                    records.append(_record(fmt, path, self.run, c["verified"], check, reason=c.get("reason"),
                                           **extra))
        if onnx_result is not None and variant.onnx is None and onnx_result.files:
            # the eval stage and the report find the variant's graph here
            dataclasses.replace(variant, onnx=onnx_result.files[0]).save()
        return records, raw

    def _make(self, variant: Any, fmt: str, ref: Path | None, onnx_result: Any) -> tuple[Any, Path | None, bool]:
        """(ExportResult or a reason string, reference model dir, lossy)."""
        from toolkit.export.executorch import export_pte
        from toolkit.export.onnx import export_onnx
        from toolkit.export.torchscript import export_torchscript

        folder, task, cfg = Path(variant.path), self.task, self.recipe.export
        if variant.model_dir is None:  # an ONNX Runtime / PT2E variant: lossy against the ancestor's PyTorch
            if fmt == "onnx":
                found = existing_onnx(variant, task)
                return (found or f"{variant.name} has no ONNX graph (made by {variant.method})"), ref, True
            if fmt == "ort":
                if onnx_result is None:
                    return f"{variant.name} has no ONNX graph to convert", ref, True
                return _ort(onnx_result), ref, True
            if fmt == "pte":
                pte = folder / "model.pte"
                return (existing_pte(pte, task) if pte.is_file() else
                        f"no PyTorch model to lower ({variant.method} made an ONNX Runtime graph)"), ref, True
            return f"no PyTorch model to trace ({variant.method} made an ONNX Runtime graph)", ref, True
        model_dir = Path(variant.model_dir)
        lossy = variant.method in ("fp16",)
        if fmt == "onnx":
            return export_onnx(model_dir, folder, task, opset=cfg.opset, example_inputs=self._example(model_dir)), \
                model_dir, lossy
        if fmt == "ort":
            if onnx_result is None:
                return "the ONNX export failed, so there is nothing to convert", model_dir, lossy
            return _ort(onnx_result), model_dir, lossy
        if fmt == "pte":
            r = export_pte(model_dir, folder, task, example_inputs=self._example(model_dir))
            return (r if r.lowered else f"did not lower to ExecuTorch: {r.reason}"), model_dir, lossy
        r = export_torchscript(model_dir, folder, task, example_inputs=self._example(model_dir))
        return (r if r.lowered else f"not traced: {r.reason}"), model_dir, lossy

    def _example(self, model_dir: Path) -> dict | None:
        """Example inputs for torch.onnx / torch.export / tracing: two real images (the CNN's config does not
        name its input size the way HF vision configs do); text models use the exporters' defaults."""
        if self.task != "image-classification":
            return None
        import torch

        first = self.samples(model_dir)[0]["pixel_values"]
        rows = first if len(first) >= 2 else first.repeat(2, axis=0)
        return {"pixel_values": torch.as_tensor(rows[:2]).float()}

    def _verify(self, result: Any, reference: Path | None, lossy: bool, variant: Any) -> list[dict]:
        from toolkit.export.verify import verify

        if reference is None:
            return []
        cfg = self.recipe.export
        try:
            return verify(result, reference, self.samples(reference), atol=cfg.atol, lossy=lossy,
                          min_agreement=cfg.min_agreement, min_cosine=cfg.min_cosine)
        except UserError as exc:  # e.g. the runtime cannot load the file: an op it lacks (named)
            if self.strict:
                raise
            return [{"format": result.format, "file": str(p), "verified": False, "error": str(exc)}
                    for p in result.files]


def _ort(onnx_result: Any) -> Any:
    import logging

    import onnxruntime.tools.ort_format_model.utils  # noqa: F401  (creates the logger quieted below)

    from toolkit.export.ort import export_ort

    # the converter's config helper logs each file it writes at INFO on its own handler: keep the console quiet
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    return export_ort(onnx_result)


def existing_onnx(variant: Any, task: str):
    """An ExportResult for the ONNX graph(s) a compression step wrote (seq2seq: encoder + decoder), or None."""
    from toolkit.eval.onnx_eval import graph_files
    from toolkit.export.onnx import _result

    graphs = graph_files(Path(variant.path), task, variant.onnx)
    files = [graphs[k] for k in ("model", "encoder", "decoder") if k in graphs]
    if not files:
        return None
    result = _result(files, f"compress stage ({variant.method}: {variant.info.get('scheme', variant.method)})", task)
    for path in files:  # quantized graphs may carry a suffix; give each its role by what it is
        role = "encoder" if path.name.startswith("encoder") else ("decoder" if path.name.startswith("decoder")
                                                                   else "model")
        result.graphs[path.name]["role"] = role
    return result


def existing_pte(path: Path, task: str):
    """An ExportResult for a .pte a PT2E step wrote: inputs named in the exporter's order (input_ids,
    attention_mask / pixel_values), dtypes and sizes from the program, dynamic where the program says so."""
    from toolkit.eval.backends_executorch import _dynamic_inputs
    from toolkit.export.common import ExportResult
    from toolkit.export.executorch import load_method

    md = load_method(path).metadata
    n = md.num_inputs()
    names = (["pixel_values"] if task == "image-classification" else
             ["input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"])[:n]
    dynamic = _dynamic_inputs(path, n)
    inputs = []
    for i, name in enumerate(names):
        meta = md.input_tensor_meta(i)
        shape: list[int | str] = [int(d) for d in meta.sizes()]
        if dynamic[i]:
            shape[0] = "batch_size"
            if len(shape) == 2:
                shape[1] = "sequence_length"
        inputs.append({"name": name, "shape": shape, "dtype": {4: "int64", 6: "float32"}.get(meta.dtype(), "float32")})
    return ExportResult(format="pte", files=[path], exporter="compress stage (PT2E)", task=task, inputs=inputs,
                        outputs=["logits"], graphs={path.name: {"role": "model", "inputs": inputs,
                                                                "outputs": ["logits"]}})


# --- records -------------------------------------------------------------------------------------------------


def _rel(path: Path | str, run: RunDir) -> str:
    p = Path(path).absolute()
    root = run.path.absolute()
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(path)


def _size(path: Path) -> int:
    size = path.stat().st_size if path.is_file() else 0
    for extra in (path.with_name(path.name + "_data"), path.with_name(path.name + ".data")):
        if extra.is_file():
            size += extra.stat().st_size
    return size


def _record(fmt: str, path: Path | None, run: RunDir, verified: bool | None, check: dict[str, Any],
            reason: str | None = None, **extra: Any) -> dict[str, Any]:
    """One export.json entry: {"format", "path" (relative to the run dir), "size_bytes", "verified", "check",
    "reason"?, "exporter", "role", ...}."""
    rec: dict[str, Any] = {"format": fmt, "path": _rel(path, run) if path else None,
                           "size_bytes": _size(path) if path else 0, "verified": verified, "check": check}
    if reason or check.get("error"):
        rec["reason"] = reason or check["error"]
    return rec | extra


def _summary(check: dict[str, Any]) -> str:
    if check.get("mode") == "lossy":
        return (f"label agreement {check.get('agreement', float('nan')):.4f} (min {check.get('min_agreement')}), "
                f"cosine {check.get('cosine', float('nan')):.4f} (min {check.get('min_cosine')})")
    return f"max |diff| {check.get('max_abs_diff', float('nan')):.3g} (atol {check.get('atol')})"


def _write(run: RunDir, variant: Any, records: list[dict], recipe: Recipe) -> None:
    """export.json, the manifest's verification entry and one artifact per file."""
    folder = Path(variant.path)
    atomic_write_json(folder / "export.json", {"schema_version": 1, "variant": variant.name, "files": records})
    chash = config_hash(recipe.export)
    for r in records:
        if r["path"]:
            record_artifact(run, f"{variant.name}/{Path(r['path']).name}", "export", run.path / r["path"], STAGE,
                            parent=variant.name, config_hash=chash, format=r["format"], verified=r["verified"])
    states = [r["verified"] for r in records if r["path"]]
    update_manifest(run, verification={variant.name: {
        "passed": (all(s is not False for s in states) if states else None),
        "files": [{k: r.get(k) for k in ("format", "path", "verified", "reason") if r.get(k) is not None or
                   k == "verified"} for r in records]}})
