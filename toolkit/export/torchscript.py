"""TorchScript ``.ts`` by tracing a wrapper that returns logits: the file ``torch.jit.load`` serves.

Tracing records one path through the model; classifiers and CNNs trace with dynamic batch and sequence lengths.
HF decoders build their masks with Python-side logic that tracing cannot record (GPT-2 fails in the tracer): the
result then says ``lowered=False`` with the reason, and the caller reports it.
"""
from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from toolkit.export.common import ExportJob, ExportResult, FileRunner, Format, failed, load_model
from toolkit.registry import FORMATS


def export_torchscript(model_dir_or_module: Any, out_dir: Path, task: Any,
                       example_inputs: dict[str, Any] | None = None, filename: str = "model.ts") -> ExportResult:
    """Trace the model to ``out_dir/filename`` and check the traced module reproduces the eager outputs.

    Returns:
        format "torchscript", inputs in the order the traced module takes them; ``lowered=False`` and the
        reason when tracing fails or the traced module disagrees with eager PyTorch on the example.
    Raises:
        UserError: unknown task or a path that is not a model directory.
    """
    import torch

    from toolkit.export.logits import Logits, as_tensors
    from toolkit.tasks import as_task

    task = as_task(task)
    exporter = f"torch.jit {torch.__version__}"
    module = load_model(model_dir_or_module, task)
    inputs = as_tensors(example_inputs) if example_inputs else task.dummy_inputs(module, 2, 8)
    wrapper = Logits(module, list(inputs), task.causal)
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
        result = failed("torchscript", task.name, exporter, exc)
        result.reason = f"torch.jit.trace: {result.reason}"
        return result
    signature = [{"name": k, "shape": list(v.shape), "dtype": str(v.dtype).removeprefix("torch.")}
                 for k, v in inputs.items()]
    return ExportResult(format="torchscript", files=[path], exporter=exporter, task=task.name, inputs=signature,
                        outputs=["logits"], graphs={path.name: {"role": "model", "inputs": signature,
                                                                "outputs": ["logits"]}},
                        extra={"traced_with": {k: list(v.shape) for k, v in inputs.items()}})


def _export(job: ExportJob) -> ExportResult | str:
    if not job.variant.has_pytorch:
        return f"no PyTorch model to trace ({job.variant.method} made an ONNX Runtime graph)"
    r = export_torchscript(job.variant.model_dir, job.folder, job.task, example_inputs=job.example)
    return r if r.lowered else f"not traced: {r.reason}"


def _runners(result: ExportResult) -> list:
    import torch

    module = torch.jit.load(str(result.files[0]))
    names = [i["name"] for i in result.inputs]

    @torch.no_grad()
    def run(b: dict) -> Any:
        return module(*[b[n] for n in names]).float().numpy()

    return [(result.files[0], "model", f"torch.jit {torch.__version__}", FileRunner(run, names))]


FORMATS.register("torchscript", Format("torchscript", ".ts", "torch", _export, _runners, order=3,
                                       best_effort_when_generating=True))
