"""TorchScript ``.ts`` by tracing a wrapper that returns logits: the file ``torch.jit.load`` serves.

Tracing records one path through the model; classifiers and CNNs trace with dynamic batch and sequence lengths.
HF decoders build their masks with Python-side logic that tracing cannot record (GPT-2 fails in the tracer): the
result then says ``lowered=False`` with the reason, and the caller reports it.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from toolkit.export.common import (
    ExportResult, Logits, as_tensors, check_task, default_inputs, failed, load_model,
)


def export_torchscript(model_dir_or_module: str | Path | torch.nn.Module, out_dir: Path, task: str,
                       example_inputs: dict[str, Any] | None = None, filename: str = "model.ts") -> ExportResult:
    """Trace the model to ``out_dir/filename`` and check the traced module reproduces the eager outputs.

    Returns:
        format "torchscript", inputs in the order the traced module takes them; ``lowered=False`` and the
        reason when tracing fails or the traced module disagrees with eager PyTorch on the example.
    Raises:
        UserError: unknown task or a path that is not a model directory.
    """
    check_task(task)
    exporter = f"torch.jit {torch.__version__}"
    module = load_model(model_dir_or_module, task)
    inputs = as_tensors(example_inputs) if example_inputs else default_inputs(module, task)
    wrapper = Logits(module, list(inputs), task)
    args = tuple(inputs.values())
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / filename
    try:
        with torch.no_grad(), warnings.catch_warnings():
            # TracerWarnings flag Python-side branches; check_trace below is the test that matters
            warnings.simplefilter("ignore")
            traced = torch.jit.trace(wrapper, args, check_trace=True, strict=False)
            torch.jit.save(traced, str(path))
            reloaded = torch.jit.load(str(path))
            diff = (reloaded(*args) - wrapper(*args)).abs().max().item()
        if not diff <= 1e-4:
            raise RuntimeError(f"traced module differs from eager by {diff:.3g} on the example inputs")
    except Exception as exc:  # the tracer raises many types (RuntimeError, TracingCheckError, KeyError ...)
        if path.exists():
            path.unlink()
        result = failed("torchscript", task, exporter, exc)
        result.reason = f"torch.jit.trace: {result.reason}"
        return result
    signature = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                 for k, v in inputs.items()]
    return ExportResult(format="torchscript", files=[path], exporter=exporter, task=task, inputs=signature,
                        outputs=["logits"], graphs={path.name: {"role": "model", "inputs": signature,
                                                                "outputs": ["logits"]}},
                        extra={"traced_with": {k: list(v.shape) for k, v in inputs.items()}})
