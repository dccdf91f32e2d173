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
from typing import Any, Sequence

from toolkit.config import Recipe, config_hash
from toolkit.errors import UserError
from toolkit.events import StageEmitter
from toolkit.rundir import RunDir, atomic_write_json, record_artifact, update_manifest

STAGE = "export"
VERIFY_BATCH = 8


def export_formats(names: list[str]) -> list[Any]:
    """The registered formats ``names`` asks for, in export order, with the formats they convert added."""
    from toolkit.registry import FORMATS

    wanted = set(names)
    for name in list(wanted):
        wanted.update(FORMATS.get(name, "[export] formats").needs)
    return sorted((FORMATS.get(n) for n in wanted), key=lambda f: f.order)


def executorch_available() -> bool:
    """ExecuTorch (the optional extra) imports."""
    from toolkit.registry import FORMATS

    return FORMATS.get("pte").available() is None


def run_export(recipe: Recipe, run: RunDir, emit: StageEmitter, strict: bool = False,
               only: Sequence[str] | None = None) -> dict[str, list[dict]]:
    """Export and verify every variant of ``run`` (or those named in ``only``: ``tune`` exports one trial's
    variant at a time); returns {variant: export.json's "files"}.

    Raises:
        UserError: no variants in the run; with ``strict``, a format whose extra is missing or an export error.
        CheckFailed: with ``strict``, any file that failed verification (after every variant was written).
    """
    from toolkit.rundir import quiet_onnxruntime

    quiet_onnxruntime()
    from toolkit.export.verify import raise_if_failed
    from toolkit.variants import load_variants

    variants = load_variants(run.variants)
    if not variants:
        raise UserError(f"{run.variants}: no variants to export; train first (python -m toolkit train RECIPE)")
    selected = variants if only is None else {n: v for n, v in variants.items() if n in only}
    formats = export_formats(list(recipe.export.formats))
    skipped: dict[str, str] = {}
    for fmt in formats:
        why = fmt.available()
        if why is None:
            continue
        if strict:
            raise UserError(f"[export] formats includes '{fmt.name}': {why}")
        emit.log(f".{fmt.name} skipped: {why}", "warning")
        skipped[fmt.name] = why
    exporter = _VariantExport(recipe, run, emit, variants, strict)
    emit("start", total=len(selected), variants=list(selected), formats=[f.name for f in formats])
    results: dict[str, list[dict]] = {}
    checks: list[dict] = []
    for i, variant in enumerate(selected.values()):
        emit("progress", step=i, total=len(selected), variant=variant.name)
        records, raw = exporter.export(variant, [f for f in formats if f.name not in skipped])
        records += [{"format": f, "path": None, "size_bytes": 0, "verified": None, "check": {}, "reason": why}
                    for f, why in skipped.items()]
        checks += raw
        results[variant.name] = records
        _write(run, variant, records, recipe)
        failed = [r for r in records if r["verified"] is False]
        for r in failed:
            what = f"{r['path']} FAILED verification" if r["path"] else "export FAILED"
            emit.log(f"{variant.name}: {r['format']} {what}: {r.get('reason') or _summary(r['check'])}", "warning")
    emit("progress", step=len(selected), total=len(selected))
    if strict:
        raise_if_failed(checks)
    emit("done", variants=list(results), verified=sum(r["verified"] is True for rs in results.values() for r in rs),
         failed=sum(r["verified"] is False for rs in results.values() for r in rs))
    return results


class _VariantExport:
    """Exports one variant after another, sharing the eval samples of each reference model."""

    def __init__(self, recipe: Recipe, run: RunDir, emit: StageEmitter, variants: dict[str, Any],
                 strict: bool) -> None:
        from toolkit.tasks import get_task

        self.recipe, self.run, self.emit = recipe, run, emit
        self.variants, self.strict = variants, strict
        self.task = get_task(recipe.task)
        self._samples: dict[Path, list[dict]] = {}
        self._splits: Any = None

    def samples(self, model_dir: Path) -> list[dict]:
        """Up to ``[export] verify_samples`` real examples (the eval split; else validation, else train), collated
        by the task into batches of numpy arrays, as the model's tokenizer / preprocessing encodes them."""
        if model_dir not in self._samples:
            import numpy as np

            from toolkit.data import load_splits
            from toolkit.tasks import prepare_folder

            if self._splits is None:
                self._splits = load_splits(self.recipe)
            prepared = prepare_folder(self.recipe, self._splits, model_dir, self.run.train)
            items = list(prepared.eval_set or prepared.val_set or prepared.train_set)[: self.recipe.export.verify_samples]
            if not items:
                raise UserError(f"{model_dir}: no examples to verify the exports on (the data splits are empty)")
            batches = []
            for start in range(0, len(items), VERIFY_BATCH):
                batch = prepared.collate(items[start:start + VERIFY_BATCH])
                batches.append({k: np.asarray(v) for k, v in batch.items()})
            self._samples[model_dir] = batches
        return self._samples[model_dir]

    def export(self, variant: Any, formats: list[Any]) -> tuple[list[dict], list[dict]]:
        """(export.json records, verify() results) for one variant."""
        from toolkit.export.bundle import copy_bundle_files
        from toolkit.export.common import ExportJob
        from toolkit.variants import nearest_model_dir

        folder = Path(variant.path)
        ref = nearest_model_dir(variant, self.variants)
        if ref is not None:
            if not variant.has_pytorch:  # keep what the compression step copied; fill in what is missing
                if not (folder / "labels.json").exists() and not (folder / "preprocess.json").exists():
                    copy_bundle_files(ref, folder)
            else:
                copy_bundle_files(ref, folder)
        # lossy: an ONNX Runtime / PT2E variant (INT8, FP16) is compared with the nearest ancestor's PyTorch outputs
        lossy = not variant.has_pytorch
        job = ExportJob(variant=variant, task=self.task, folder=folder, reference=ref, config=self.recipe.export,
                        example=self._example(ref) if variant.has_pytorch else None)
        records: list[dict] = []
        raw: list[dict] = []
        for fmt in formats:
            try:
                result = fmt.export(job)
            except Exception as exc:  # exporters raise many types; in a session one format must not stop the run
                if self.strict:
                    raise
                why = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
                records.append(_record(fmt.name, None, self.run, False, {}, reason=why if isinstance(exc, UserError)
                                       else f"{type(exc).__name__}: {why}"))
                continue
            if isinstance(result, str):  # not applicable / not lowered: the reason
                records.append(_record(fmt.name, None, self.run, None, {}, reason=result))
                if "did not lower" in result or "not traced" in result:
                    self.emit.log(f"{variant.name}: {fmt.name}: {result}", "warning")
                continue
            job.done[fmt.name] = result
            checks = self._verify(result, ref, lossy)
            raw += checks
            by_file = {Path(c["file"]).name: c for c in checks}
            for path in result.files:
                c = by_file.get(path.name)
                extra = {"exporter": result.exporter}
                if path.name in result.extra.get("required_operators", {}):
                    extra["required_operators"] = _rel(result.extra["required_operators"][path.name], self.run)
                if fmt.name == "onnx" and result.opset:
                    extra["opset"] = result.opset
                if c is None:
                    records.append(_record(fmt.name, path, self.run, None, {},
                                           reason="no PyTorch model to compare with", **extra))
                else:
                    check = {k: v for k, v in c.items() if k not in ("format", "file", "verified", "reason")}
                    records.append(_record(fmt.name, path, self.run, c["verified"], check, reason=c.get("reason"),
                                           **extra))
        onnx_result = job.done.get("onnx")
        if onnx_result is not None and variant.onnx is None and onnx_result.files:
            # the eval stage and the report find the variant's graph here
            dataclasses.replace(variant, onnx=onnx_result.files[0]).save()
        return records, raw

    def _example(self, model_dir: Path | None) -> dict | None:
        """Example inputs for torch.onnx / torch.export / tracing: two real images (image models' configs do not
        all name their input size the same way); text models use the exporters' defaults."""
        if model_dir is None or not self.task.data.images:
            return None
        import torch

        first = self.samples(model_dir)[0]["pixel_values"]
        rows = first if len(first) >= 2 else first.repeat(2, axis=0)
        return {"pixel_values": torch.as_tensor(rows[:2]).float()}

    def _verify(self, result: Any, reference: Path | None, lossy: bool) -> list[dict]:
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
