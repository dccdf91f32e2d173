"""ExecuTorch ``.pte`` through torch.export and the XNNPACK partitioner (the optional extra ``executorch``).

Classifiers and CNNs must lower (DESIGN.md); they are exported with a dynamic batch axis (and a dynamic sequence
axis up to the model's position limit), falling back to the example's static shapes if that fails. Decoders and
encoder-decoders are best-effort: logits only, no KV cache (each call recomputes the whole window), exported with
static shapes (batch 1, ``seq_len`` tokens; shorter inputs are right-padded with attention mask 0), because HF's
masking code builds batch-sized aranges that ExecuTorch cannot resize. A model that does not lower gives a result
with ``lowered=False`` and the error's first line (naming the op when the message does) instead of an exception.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from toolkit.errors import UserError
from toolkit.export.common import (
    REQUIRED_TASKS, ExportResult, Logits, as_tensors, check_task, default_inputs, failed, first_line, load_model,
    op_error,
)

EXTRA = "pip install 'edge-toolkit[executorch]'"


def _require_executorch() -> str:
    try:
        from importlib.metadata import version

        import executorch.exir  # noqa: F401
        return version("executorch")
    except ImportError as exc:
        raise UserError(f"the .pte format needs ExecuTorch, which is not installed: {EXTRA}") from exc


def export_pte(model_dir_or_module: str | Path | torch.nn.Module, out_dir: Path, task: str,
               example_inputs: dict[str, Any] | None = None, *, required: bool | None = None,
               filename: str = "model.pte", max_batch: int = 64, seq_len: int = 32) -> ExportResult:
    """Lower a model to an ExecuTorch program with the XNNPACK backend and write ``out_dir/filename``.

    Args:
        model_dir_or_module: an HF model directory or a torch module (also one PT2E has quantized to INT8).
        task: text-classification | language-modeling | seq2seq | image-classification.
        example_inputs: names -> tensors, in the order the program takes them; default from the model's config
            (classifiers: input_ids, attention_mask; seq2seq also decoder_input_ids, decoder_attention_mask;
            images: pixel_values).
        required: raise when lowering fails (default: for classifiers and CNNs) instead of returning
            ``lowered=False``.
        max_batch: upper bound of the dynamic batch axis (XNNPACK plans memory for the largest shape).
        seq_len: decoders / encoder-decoders: the static number of tokens (batch 1).

    Raises:
        UserError: ExecuTorch is not installed (names the extra), or a required model did not lower
            (UnsupportedOpError when the error names the op).
    """
    check_task(task)
    version = _require_executorch()
    required = task in REQUIRED_TASKS if required is None else required
    exporter = f"executorch {version} (XNNPACK)"
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    module = load_model(model_dir_or_module, task)
    static = task in ("language-modeling", "seq2seq")
    if example_inputs:
        inputs = as_tensors(example_inputs)
    elif static:
        inputs = default_inputs(module, task, batch=1, seq_len=min(seq_len, _max_positions(module) - 1))
    else:
        inputs = default_inputs(module, task)
    wrapper = Logits(module, list(inputs), task)
    extra: dict[str, Any] = {}
    try:
        program, inputs = _capture(wrapper, inputs, static, max_batch, _max_positions(module), extra)
        buffer = _lower(program)
    except Exception as exc:  # torch.export and the lowering passes raise many types
        if required:
            raise op_error(exc, "pte (ExecuTorch/XNNPACK)", path) or UserError(
                f"{path}: the model did not lower to ExecuTorch: {first_line(exc)[:300]}") from exc
        return failed("pte", task, exporter, exc)
    path.write_bytes(buffer)
    try:
        _load(path)
    except Exception as exc:
        if required:
            raise UserError(f"{path}: ExecuTorch cannot load the program it wrote: {first_line(exc)[:300]}") from exc
        path.unlink()
        return failed("pte", task, exporter, exc)
    if static:
        extra |= {"static_shapes": True, "kv_cache": False,
                  "note": "logits only, no KV cache: each call recomputes the padded window"}
    dynamic = "static" not in extra["shapes"]
    signature = [{"name": k, "shape": _shape(k, v, dynamic), "dtype": str(v.dtype).removeprefix("torch.")}
                 for k, v in inputs.items()]
    return ExportResult(format="pte", files=[path], exporter=exporter, task=task, inputs=signature,
                        outputs=["logits"], graphs={path.name: {"role": "model", "inputs": signature,
                                                                "outputs": ["logits"]}}, extra=extra)


def _max_positions(module: torch.nn.Module) -> int:
    cfg = getattr(module, "config", None)
    for key in ("max_position_embeddings", "n_positions"):
        if isinstance(getattr(cfg, key, None), int):
            return getattr(cfg, key)
    return 512


def _capture(wrapper: torch.nn.Module, inputs: dict[str, torch.Tensor], static: bool, max_batch: int,
             max_len: int, extra: dict[str, Any]):
    """torch.export: with dynamic batch/sequence axes; else static at batch 1 (fed one row at a time); else at
    the example's shapes (e.g. a PT2E GraphModule captured at that batch size). Returns (program, inputs)."""
    attempts: list[tuple[dict[str, torch.Tensor], tuple | None]] = [(inputs, None)]
    if not static:
        attempts = [(inputs, _dynamic_shapes(inputs, max_batch, max_len)),
                    ({k: v[:1] for k, v in inputs.items()}, None), (inputs, None)]
    for i, (args, dynamic) in enumerate(attempts):
        try:
            program = _export(wrapper, args, dynamic)
        except Exception as exc:  # torch.export raises many types; the next attempt may still work
            if i == len(attempts) - 1:
                raise
            extra.setdefault("dynamic_shapes_failed", first_line(exc)[:300])
            continue
        extra["shapes"] = (f"dynamic batch (<= {max_batch}) and sequence" if dynamic else
                           "static: " + ", ".join(f"{k} {tuple(v.shape)}" for k, v in args.items()))
        return program, args
    raise AssertionError("unreachable")


def _dynamic_shapes(inputs: dict[str, torch.Tensor], max_batch: int, max_len: int) -> tuple:
    from torch.export import Dim

    batch = Dim("batch_size", min=1, max=max_batch)
    seq = Dim("sequence_length", min=1, max=max_len)
    dec = Dim("decoder_sequence_length", min=1, max=max_len)
    shapes = []
    for name, t in inputs.items():
        axes = {0: batch}
        if t.dim() == 2 and not t.is_floating_point():
            axes[1] = dec if name.startswith("decoder_") else seq
        shapes.append(axes)
    return (tuple(shapes),)  # one entry: the wrapper's *tensors


def _shape(name: str, t: torch.Tensor, dynamic: bool) -> list[int | str]:
    shape: list[int | str] = list(t.shape)
    if dynamic:
        shape[0] = "batch_size"
        if t.dim() == 2 and not t.is_floating_point():
            shape[1] = "decoder_sequence_length" if name.startswith("decoder_") else "sequence_length"
    return shape


def _export(wrapper: torch.nn.Module, inputs: dict[str, torch.Tensor], dynamic_shapes: tuple | None):
    with torch.no_grad():
        return torch.export.export(wrapper, tuple(inputs.values()), dynamic_shapes=dynamic_shapes)


def _lower(program) -> bytes:
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    return to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()]).to_executorch().buffer


def _load(path: Path):
    from executorch.runtime import Runtime

    return Runtime.get().load_program(str(path)).load_method("forward")


def load_method(path: Path | str):
    """The ``forward`` method of a ``.pte`` in the ExecuTorch runtime (``method.execute([tensors])``)."""
    _require_executorch()
    try:
        return _load(Path(path))
    except Exception as exc:
        raise op_error(exc, "pte (ExecuTorch)", path) or UserError(
            f"{path}: ExecuTorch cannot load it: {first_line(exc)[:300]}") from exc
