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
from typing import Any, Callable, Iterable

import numpy as np
import torch

from toolkit.errors import CheckFailed, UserError
from toolkit.export.common import ExportResult, Logits, first_line, load_model

FP32_ATOL = 1e-4
MIN_AGREEMENT = 0.95
MIN_COSINE = 0.98

Batch = dict[str, torch.Tensor]
_REAL_ROWS = "__rows__"


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
    if not result.lowered or not result.files:
        return []
    task = result.task
    model = load_model(reference, task)
    batches = [_prepare(b, model, task) for b in _batches(samples)]
    bounds = ({"min_agreement": min_agreement, "min_cosine": min_cosine} if lossy else {"atol": atol})
    runners = _runners(result, task)
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
                    real = piece.pop(_REAL_ROWS, None)
                    ref, valid = _reference(model, piece, task, role)
                    if real is not None:
                        valid[real:] = False  # filler rows of a static batch
                    pairs.append((run(piece), ref, valid, real if real is not None else ref.shape[0]))
        except Exception as exc:  # a file that runs but fails on real inputs is a failed check, not a crash
            out.append(record | {"verified": False, "samples": 0, "error": first_line(exc)[:300]})
            continue
        out.append(record | _compare(pairs, lossy, atol, min_agreement, min_cosine))
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


def _prepare(sample: dict[str, Any], model: torch.nn.Module, task: str) -> Batch:
    """Tensors with a batch axis and every input the task's graphs take (masks default to all ones)."""
    batch = {k: torch.as_tensor(np.asarray(v)) for k, v in sample.items()}
    if task == "image-classification":
        x = batch["pixel_values"].float()
        return {"pixel_values": x[None] if x.dim() == 3 else x}
    batch = {k: v[None] if v.dim() == 1 else v for k, v in batch.items()}
    if "input_ids" not in batch:
        raise UserError(f"verify: a {task} sample needs input_ids (got {sorted(batch)})")
    out = {"input_ids": batch["input_ids"].long(),
           "attention_mask": batch.get("attention_mask", torch.ones_like(batch["input_ids"])).long()}
    if "token_type_ids" in batch:
        out["token_type_ids"] = batch["token_type_ids"].long()
    if task == "seq2seq":
        dec = batch.get("decoder_input_ids")
        cfg = model.config
        start = cfg.decoder_start_token_id if cfg.decoder_start_token_id is not None else cfg.pad_token_id
        if dec is None and "labels" in batch:
            labels = batch["labels"].long().masked_fill(batch["labels"] == -100, cfg.pad_token_id or 0)
            dec = torch.cat([torch.full_like(labels[:, :1], start), labels[:, :-1]], dim=1)
        elif dec is None:
            dec = torch.full_like(out["input_ids"][:, :1], start)
        out["decoder_input_ids"] = dec.long()
        out["decoder_attention_mask"] = batch.get("decoder_attention_mask", torch.ones_like(dec)).long()
    return out


@torch.no_grad()
def _reference(model: torch.nn.Module, batch: Batch, task: str, role: str) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's output for ``batch`` and the mask of positions that count (padding excluded)."""
    if role == "encoder":
        hidden = model.get_encoder()(input_ids=batch["input_ids"],
                                     attention_mask=batch["attention_mask"]).last_hidden_state
        return hidden.float().numpy(), batch["attention_mask"].numpy().astype(bool)
    logits = Logits(model, list(batch), task)(*batch.values()).float().numpy()
    if logits.ndim == 3:
        mask = batch["decoder_attention_mask" if task == "seq2seq" else "attention_mask"]
        return logits, mask.numpy().astype(bool)
    return logits, np.ones(logits.shape[:1], dtype=bool)


def _compare(pairs: list[tuple[np.ndarray, np.ndarray, np.ndarray, int]], lossy: bool, atol: float,
             min_agreement: float, min_cosine: float) -> dict[str, Any]:
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
    return record | {"agreement": agreement, "cosine": cosine,
                     "verified": finite and agreement >= min_agreement and cosine >= min_cosine}


# --- runtimes ------------------------------------------------------------------------------------------------

class _Runner:
    """Runs one file on a prepared batch; ``adapt`` splits/pads a batch to the shapes the file accepts."""

    def __init__(self, fn: Callable[[Batch], np.ndarray], inputs: Iterable[str],
                 adapt: Callable[[Batch], list[Batch]] | None = None):
        self._fn = fn
        self.inputs = set(inputs)
        self.adapt = adapt or (lambda b: [b])

    def __call__(self, batch: Batch) -> np.ndarray:
        return self._fn(batch)


def _runners(result: ExportResult, task: str) -> list[tuple[Path, str, str, _Runner]]:
    if result.format in ("onnx", "ort"):
        return _onnx_runners(result)
    if result.format == "pte":
        from importlib.metadata import version

        from toolkit.export.executorch import load_method

        method = load_method(result.files[0])
        names = [i["name"] for i in result.inputs]
        runner = _Runner(lambda b: _pte_run(method, result, b), names, lambda b: _fit_static(result, b))
        return [(result.files[0], "model", f"executorch {version('executorch')} (XNNPACK)", runner)]
    if result.format == "torchscript":
        module = torch.jit.load(str(result.files[0]))
        names = [i["name"] for i in result.inputs]

        @torch.no_grad()
        def run(b: Batch) -> np.ndarray:
            return module(*[b[n] for n in names]).float().numpy()

        return [(result.files[0], "model", f"torch.jit {torch.__version__}", _Runner(run, names))]
    raise UserError(f"verify: unknown export format '{result.format}'")


_NP = {"tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(float)": np.float32,
       "tensor(float16)": np.float16, "tensor(bool)": np.bool_, "tensor(double)": np.float64}


def _onnx_runners(result: ExportResult) -> list[tuple[Path, str, str, _Runner]]:
    import onnxruntime as ort

    from toolkit.export.ort import open_session

    runtime = f"onnxruntime {ort.__version__} CPUExecutionProvider"
    roles = {p: result.graphs.get(p.name, {}).get("role", "model") for p in result.files}
    sessions = {p: open_session(p, result.format) for p in result.files}
    encoder = next((sessions[p] for p, r in roles.items() if r == "encoder"), None)
    runners = []
    for path, role in roles.items():
        session = sessions[path]

        def run(b: Batch, session=session, role=role) -> np.ndarray:
            feed = dict(b)
            if role == "decoder":
                if encoder is None:
                    raise UserError(f"{result.files[0]}: a decoder graph without its encoder graph")
                hidden = encoder.run(None, {i.name: b[i.name].numpy() for i in encoder.get_inputs()})[0]
                feed = {"input_ids": b["decoder_input_ids"], "encoder_attention_mask": b["attention_mask"],
                        "encoder_hidden_states": torch.from_numpy(hidden), "attention_mask": b["attention_mask"],
                        "decoder_attention_mask": b["decoder_attention_mask"]}
            name = "last_hidden_state" if role == "encoder" else "logits"
            outputs = [o.name for o in session.get_outputs()]
            return session.run([name if name in outputs else outputs[0]], _feed(session, feed))[0]

        runners.append((path, role, runtime, _Runner(run, [i.name for i in session.get_inputs()])))
    return runners


def _feed(session, batch: Batch) -> dict[str, np.ndarray]:
    """The session's inputs from ``batch``; a first step's empty KV cache and derived ids fill the rest."""
    from toolkit.export.common import positions_from_mask

    b = batch.get("input_ids")
    n = b.shape[0] if b is not None else next(iter(batch.values())).shape[0]
    feed = {}
    for i in session.get_inputs():
        dtype = _NP.get(i.type, np.float32)
        if i.name in batch:
            value = batch[i.name].numpy()
        elif i.name == "position_ids":
            value = positions_from_mask(batch["attention_mask"]).numpy()
        elif i.name == "token_type_ids":
            value = np.zeros(tuple(batch["input_ids"].shape))
        elif i.name == "use_cache_branch":
            value = np.array([False])
        elif i.name.startswith("past_key_values"):
            # first step: no past; symbolic axes other than the batch are 0 long
            value = np.zeros([n if "batch" in str(d) else (d if isinstance(d, int) else 0) for d in i.shape])
        else:
            raise UserError(f"verify: the graph wants input '{i.name}', which the samples do not have")
        feed[i.name] = value.astype(dtype)
    return feed


def _pte_run(method, result: ExportResult, batch: Batch) -> np.ndarray:
    dtypes = {i["name"]: getattr(torch, i["dtype"]) for i in result.inputs}
    tensors = [batch[name].to(dtypes[name]).contiguous() for name in dtypes]
    return method.execute(tensors)[0].float().numpy()


def _fit_static(result: ExportResult, batch: Batch) -> list[Batch]:
    """Static-shape programs: groups of the program's batch size, token inputs right-padded (mask 0) or cut to
    its length; a short last group is filled with copies of its last row, which ``_REAL_ROWS`` leaves uncounted."""
    shapes = {i["name"]: i["shape"] for i in result.inputs}
    static_batch = next((s[0] for s in shapes.values() if isinstance(s[0], int)), None)
    static_len = any(len(s) > 1 and isinstance(s[1], int) for s in shapes.values())
    if static_batch is None and not static_len:
        return [batch]
    rows = next(iter(batch.values())).shape[0]
    size = static_batch or rows
    pieces = []
    for start in range(0, rows, size):
        real = min(size, rows - start)
        piece: dict[str, Any] = {}
        for name, t in batch.items():
            t = t[start:start + real]
            if real < size:
                t = torch.cat([t, t[-1:].expand(size - real, *t.shape[1:])])
            shape = shapes.get(name)
            if shape is not None and t.dim() == 2 and isinstance(shape[1], int):
                t = t[:, :shape[1]]
                t = torch.nn.functional.pad(t, (0, shape[1] - t.shape[1]), value=0)
            piece[name] = t.contiguous()
        piece[_REAL_ROWS] = real
        pieces.append(piece)
    return pieces
