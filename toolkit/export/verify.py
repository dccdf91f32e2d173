"""Every export is verified: the file runs in its runtime on the host and its outputs are compared with PyTorch's.

Float exports: the largest absolute difference of the logits (encoders: hidden states) over the valid positions of
real samples must be <= ``atol`` (default 1e-4 for FP32). Lossy exports (INT8, FP16; ``lossy=True``), compared
with their parent's PyTorch outputs: the share of rows whose argmax label/token agrees must be >= ``min_agreement``
(default 0.95) and the mean cosine similarity of the logit rows >= ``min_cosine`` (default 0.98). Each result
states its bounds. Decoders with a KV cache are verified on their first step (empty past) against the PyTorch
logits of the whole prompt; encoder-decoders graph by graph, the decoder fed by the exported encoder as a
deployed pipeline would be.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable

import numpy as np
import torch

from toolkit.errors import CheckFailed, UserError, first_line
from toolkit.export.common import ExportResult, load_model
from toolkit.export.executorch import REAL_ROWS
from toolkit.export.logits import Logits
from toolkit.registry import FORMATS

FP32_ATOL = 1e-4
MIN_AGREEMENT = 0.95
MIN_COSINE = 0.98

Batch = dict[str, torch.Tensor]


def verify(result: ExportResult, reference: torch.nn.Module | str | Path, samples: dict | list[dict], *,
           atol: float = FP32_ATOL, lossy: bool = False, min_agreement: float = MIN_AGREEMENT,
           min_cosine: float = MIN_COSINE) -> list[dict[str, Any]]:
    """Run each file of ``result`` on ``samples`` in its runtime and compare with ``reference`` in PyTorch.

    Args:
        result: an export (onnx | ort | pte | torchscript). One that did not lower gives no results.
        reference: the PyTorch model (for an INT8 export: its float parent), or its HF directory.
        samples: one batch (names -> arrays with a batch axis) or a list of batches or of single examples
            (arrays without a batch axis). Text: input_ids [+ attention_mask, token_type_ids]; seq2seq may add
            decoder_input_ids or labels; images: pixel_values.
        atol: float exports: bound on the max absolute difference.
        lossy: compare by argmax agreement and cosine similarity instead of absolute difference.

    Returns:
        One dict per file: {"format", "file", "role", "verified", "samples", "runtime", "max_abs_diff", "atol"}
        or, lossy, {"agreement", "min_agreement", "cosine", "min_cosine", "max_abs_diff"}; "error" when the
        file failed to run.

    Raises:
        UnsupportedOpError: the runtime cannot load the file because of an op (names it and the format).
    """
    from toolkit.tasks import get_task

    if not result.lowered or not result.files:
        return []
    task = get_task(result.task)
    model = load_model(reference, task)
    batches = [_prepare(b, model, task) for b in _batches(samples)]
    bounds = ({"min_agreement": min_agreement, "min_cosine": min_cosine} if lossy else {"atol": atol})
    runners = FORMATS.get(result.format, "verify").runners(result)
    out = []
    for path, role, runtime, run in runners:
        record: dict[str, Any] = {"format": result.format, "file": str(path), "role": role, "runtime": runtime,
                                  "mode": "lossy" if lossy else "float", **bounds}
        if role == "decoder_with_past":  # only kept with keep_unmerged; the merged decoder holds the same graph
            out.append(record | {"verified": None, "samples": 0,
                                 "reason": "needs a first step's past; verify decoder_model_merged.onnx instead"})
            continue
        try:
            pairs = []
            for batch in batches:
                if "token_type_ids" in batch and "token_type_ids" not in run.inputs:
                    # the file has no segment input; HF models would otherwise add its embedding (GPT-2 does)
                    batch = {k: v for k, v in batch.items() if k != "token_type_ids"}
                for piece in run.adapt(batch):
                    real = piece.pop(REAL_ROWS, None)
                    ref, valid = _reference(model, piece, task, role)
                    if real is not None:
                        valid[real:] = False  # filler rows of a static batch
                    pairs.append((run(piece), ref, valid, real if real is not None else ref.shape[0]))
        except Exception as exc:  # a file that runs but fails on real inputs is a failed check, not a crash
            out.append(record | {"verified": False, "samples": 0, "error": first_line(exc)[:300]})
            continue
        out.append(record | _compare(pairs, lossy, atol, min_agreement, min_cosine, predicts=role != "encoder"))
    return out


def raise_if_failed(results: Iterable[dict[str, Any]]) -> None:
    """Raise CheckFailed (exit 3) naming every file whose verification failed, with the measured value vs bound."""
    lines = []
    for r in results:
        if r.get("verified") is not False:
            continue
        name = Path(r["file"]).name
        if "error" in r:
            lines.append(f"{name} ({r['format']}): did not run on the samples: {r['error']}")
        elif r["mode"] == "lossy":
            lines.append(f"{name} ({r['format']}): label agreement {r['agreement']:.4f} (min {r['min_agreement']}), "
                         f"mean cosine {r['cosine']:.4f} (min {r['min_cosine']}) over {r['samples']} samples")
        else:
            lines.append(f"{name} ({r['format']}): max |diff| {r['max_abs_diff']:.3g} > atol {r['atol']:g} "
                         f"over {r['samples']} samples")
    if lines:
        raise CheckFailed("export verification failed: " + "; ".join(lines))


# --- samples -------------------------------------------------------------------------------------------------

def _batches(samples: dict | list[dict]) -> list[dict[str, Any]]:
    items = [samples] if isinstance(samples, dict) else list(samples)
    if not items:
        raise UserError("verify: no samples to run the export on")
    return items


def _prepare(sample: dict[str, Any], model: torch.nn.Module, task: Any) -> Batch:
    """Tensors with a batch axis and every input the task's graphs take (masks default to all ones)."""
    return task.reference_batch({k: torch.as_tensor(np.asarray(v)) for k, v in sample.items()}, model)


@torch.no_grad()
def _reference(model: torch.nn.Module, batch: Batch, task: Any, role: str) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's output for ``batch`` and the mask of positions that count (padding excluded)."""
    if role == "encoder":
        hidden = model.get_encoder()(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]).last_hidden_state
        return hidden.float().numpy(), batch["attention_mask"].numpy().astype(bool)
    logits = Logits(model, list(batch), task.causal)(*batch.values()).float().numpy()
    if logits.ndim == 3:
        mask = batch.get("decoder_attention_mask", batch.get("attention_mask"))
        return logits, mask.numpy().astype(bool)
    return logits, np.ones(logits.shape[:1], dtype=bool)


def _compare(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]], lossy: bool, atol: float,
             min_agreement: float, min_cosine: float, predicts: bool = True) -> dict[str, Any]:
    """The check of one file. ``predicts``: its outputs are logits, whose argmax is a prediction; an encoder's hidden
    states are not (their argmax is a feature index), so a lossy encoder is held to the cosine alone."""
    rows_out, rows_ref = [], []
    samples = 0
    for out, ref, valid, rows in pairs:
        if out.shape != ref.shape:
            raise_shape = f"output shape {out.shape} != PyTorch {ref.shape}"
            return {"verified": False, "samples": samples, "error": raise_shape}
        samples += rows
        rows_out.append(out[valid].reshape(-1, out.shape[-1]))
        rows_ref.append(ref[valid].reshape(-1, ref.shape[-1]))
    a, b = np.concatenate(rows_out).astype(np.float64), np.concatenate(rows_ref).astype(np.float64)
    finite = bool(np.isfinite(a).all())
    max_diff = float(np.abs(a - b).max()) if finite else float("inf")
    record: dict[str, Any] = {"samples": samples, "max_abs_diff": max_diff}
    if not lossy:
        return record | {"verified": finite and max_diff <= atol}
    agreement = float((a.argmax(-1) == b.argmax(-1)).mean())
    norms = np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1)
    cosine = float(((a * b).sum(-1) / np.maximum(norms, 1e-12)).mean()) if finite else float("nan")
    agrees = agreement >= min_agreement or not predicts
    return record | {"agreement": agreement, "cosine": cosine,
                     "verified": finite and agrees and cosine >= min_cosine}
