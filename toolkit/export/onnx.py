"""ONNX export: optimum-onnx for the Hugging Face architectures it knows, torch.onnx for everything else.

Text models go through optimum's exporters, which know each architecture's dynamic axes and KV-cache layout:
a decoder becomes one ``model.onnx`` taking ``past_key_values.*`` (empty on the first step), an encoder-decoder
becomes ``encoder_model.onnx`` + ``decoder_model_merged.onnx`` (one decoder graph with and without past, switched by
``use_cache_branch``). Our own CNN and plain torch modules go through ``torch.onnx.export(dynamo=False)`` with a
dynamic batch axis (and a dynamic sequence axis on token inputs).
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from toolkit.errors import UserError, first_line
from toolkit.export.common import ExportJob, ExportResult, FileRunner, Format, is_model_dir, load_model
from toolkit.registry import FORMATS

MAIN = "model.onnx"

# optimum's file names -> the role a runtime gives them
_ROLES = {
    "model.onnx": "model",
    "encoder_model.onnx": "encoder",
    "decoder_model_merged.onnx": "decoder",
    "decoder_model.onnx": "decoder",
    "decoder_with_past_model.onnx": "decoder_with_past",
}
_ORDER = ["model.onnx", "encoder_model.onnx", "decoder_model_merged.onnx", "decoder_model.onnx",
          "decoder_with_past_model.onnx"]


def export_onnx(model_dir_or_module: Any, out_dir: Path, task: Any, opset: int = 18,
                example_inputs: dict[str, Any] | None = None, keep_unmerged: bool = False) -> ExportResult:
    """Export a model to ONNX in ``out_dir``.

    Args:
        model_dir_or_module: a Hugging Face model directory (save_pretrained) or a torch module. An HF
            ``PreTrainedModel`` instance of an architecture optimum knows is saved to a temporary folder and
            exported like a directory.
        out_dir: where ``model.onnx`` (encoder-decoders: ``encoder_model.onnx`` + ``decoder_model_merged.onnx``) go.
        task: the Task, or its name (its optimum task name, its dummy inputs).
        opset: ONNX opset (optimum recommends >= 18 for BERT-style models).
        example_inputs: names -> tensors for the torch.onnx path; default: from the model's config.
        keep_unmerged: encoder-decoders: also keep optimum's ``decoder_model.onnx`` and
            ``decoder_with_past_model.onnx`` (the merged decoder holds both graphs).

    Returns:
        The files written, main graph first, with opset, exporter and each graph's inputs/outputs.

    Raises:
        UserError: unknown task, a path that is not a model directory, a model that cannot be exported.
    """
    import torch

    from toolkit.tasks import as_task

    task = as_task(task)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_type = _model_type(model_dir_or_module)
    if model_type is not None and _optimum_knows(model_type, task.optimum_task):
        if isinstance(model_dir_or_module, torch.nn.Module):
            with tempfile.TemporaryDirectory(prefix="export-") as tmp:
                model_dir_or_module.save_pretrained(tmp)
                return _export_optimum(Path(tmp), out_dir, task, opset, keep_unmerged)
        return _export_optimum(Path(model_dir_or_module), out_dir, task, opset, keep_unmerged)
    if task.kv_cache and not isinstance(model_dir_or_module, torch.nn.Module):
        raise UserError(f"{model_dir_or_module}: optimum-onnx cannot export model_type '{model_type}' for "
                        f"{task.name}; pass the loaded torch module to export it with torch.onnx")
    module = load_model(model_dir_or_module, task)
    return _export_torch(module, out_dir, task, opset, example_inputs)


def _model_type(obj: Any) -> str | None:
    """The family's name as its config says it (what optimum's exporters are keyed by), for a Hugging Face model
    or model folder; None for a plain torch module."""
    from toolkit.arch import family_name

    if isinstance(obj, (str, Path)) and not is_model_dir(obj):
        raise UserError(f"{obj}: not a model directory (no config.json)")
    if not is_model_dir(obj) and not hasattr(obj, "save_pretrained"):
        return None
    return family_name(obj)


def _optimum_knows(model_type: str, optimum_task: str) -> bool:
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs with TasksManager)
    from optimum.exporters.tasks import TasksManager

    for name in dict.fromkeys([model_type, model_type.replace("_", "-")]):  # optimum spells some with "-"
        try:
            tasks = TasksManager.get_supported_tasks_for_model_type(name, "onnx", library_name="transformers")
        except (KeyError, ValueError):
            continue
        return optimum_task in tasks
    return False


def _export_optimum(model_dir: Path, out_dir: Path, task: Any, opset: int, keep_unmerged: bool) -> ExportResult:
    from importlib.metadata import version

    from optimum.exporters.onnx import main_export

    try:
        # do_validation=False: verify.py compares every file with PyTorch on real samples instead
        main_export(str(model_dir), output=out_dir, task=task.optimum_task, opset=opset, device="cpu",
                    library_name="transformers", do_validation=False)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"{model_dir}: optimum-onnx could not export it for {task.name}: "
                        f"{first_line(exc)[:300]}") from exc
    written = [out_dir / name for name in _ORDER if (out_dir / name).exists()]
    if (out_dir / "decoder_model_merged.onnx").exists() and not keep_unmerged:
        for name in ("decoder_model.onnx", "decoder_with_past_model.onnx"):
            _remove_onnx(out_dir / name)
        written = [p for p in written if p.exists()]
    if not written:
        raise UserError(f"{model_dir}: optimum-onnx wrote no ONNX graph into {out_dir}")
    return _result(written, f"optimum-onnx {version('optimum-onnx')}", task)


def _remove_onnx(path: Path) -> None:
    if path.exists():
        path.unlink()
    data = path.with_name(path.name + "_data")  # external weights, for graphs over 2 GB
    if data.exists():
        data.unlink()


def _export_torch(module: Any, out_dir: Path, task: Any, opset: int,
                  example_inputs: dict[str, Any] | None) -> ExportResult:
    import torch

    from toolkit.export.logits import Logits, as_tensors

    inputs = as_tensors(example_inputs) if example_inputs else task.dummy_inputs(module, 2, 8)
    names = list(inputs)
    dynamic: dict[str, dict[int, str]] = {}
    for name, t in inputs.items():
        axes = {0: "batch_size"}
        if t.dim() == 2 and not t.is_floating_point():  # token ids / masks
            axes[1] = "decoder_sequence_length" if name.startswith("decoder_") else "sequence_length"
        dynamic[name] = axes
    out_axes = {0: "batch_size"}
    if task.kv_cache:  # token logits: one row per (decoder) position
        out_axes[1] = "decoder_sequence_length" if len(task.graphs) > 1 else "sequence_length"
    dynamic["logits"] = out_axes
    path = out_dir / MAIN
    wrapper = Logits(module, names, task.causal)
    try:
        with torch.no_grad():
            torch.onnx.export(wrapper, tuple(inputs.values()), str(path), input_names=names, output_names=["logits"],
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    except Exception as exc:  # torch raises many types; all mean "this module does not export"
        raise UserError(f"{type(module).__name__}: torch.onnx could not export it: {first_line(exc)[:300]}") from exc
    return _result([path], f"torch.onnx {torch.__version__}", task)


def _result(files: list[Path], exporter: str, task: Any) -> ExportResult:
    graphs = {p.name: {"role": _ROLES.get(p.name, "model"), **describe(p)} for p in files}
    main = graphs[files[0].name]
    if len(files) > 1:
        extra = {"graphs": "encoder + decoder (merged: with and without past, switched by use_cache_branch)"}
    elif task.kv_cache:
        extra = {"kv_cache": any(i["name"].startswith("past_key_values") for i in main["inputs"])}
    else:
        extra = {}
    return ExportResult(format="onnx", files=files, exporter=exporter, task=task.name, opset=opset_of(files[0]),
                        inputs=main["inputs"], outputs=main["outputs"], graphs=graphs, extra=extra)


def describe(path: Path) -> dict[str, Any]:
    """A graph's inputs ({"name", "shape", "dtype"}; axis names for dynamic axes) and output names."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def shape(value: Any) -> list[int | str]:
        dims = value.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]

    def dtype(value: Any) -> str:
        return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name

    init = {i.name for i in model.graph.initializer}
    inputs = [{"name": v.name, "shape": shape(v), "dtype": dtype(v)} for v in model.graph.input if v.name not in init]
    return {"inputs": inputs, "outputs": [v.name for v in model.graph.output]}


def opset_of(path: Path) -> int:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


# ---- the format plug-in --------------------------------------------------------------------------------------

def existing_onnx(variant: Any, task: Any) -> ExportResult | None:
    """An ExportResult for the ONNX graph(s) a compression step wrote (encoder-decoders: both), or None."""
    from toolkit.variants import graph_files

    graphs = graph_files(Path(variant.path), task.graphs, variant.onnx)
    files = [graphs[k] for k in ("model", "encoder", "decoder") if k in graphs]
    if not files:
        return None
    result = _result(files, f"compress stage ({variant.method}: {variant.info.get('scheme', variant.method)})", task)
    for role, path in graphs.items():  # quantized graphs may carry a suffix; give each its role
        result.graphs[path.name]["role"] = role
    return result


def _export(job: ExportJob) -> ExportResult | str:
    if not job.variant.has_pytorch:  # an ONNX Runtime variant (INT8 / FP16): its own graph, lossy vs the ancestor
        found = existing_onnx(job.variant, job.task)
        return found or f"{job.variant.name} has no ONNX graph (made by {job.variant.method})"
    return export_onnx(job.variant.model_dir, job.folder, job.task, opset=job.config.opset,
                       example_inputs=job.example)


def ort_runners(result: ExportResult) -> list[tuple[Path, str, str, FileRunner]]:
    """ONNX Runtime sessions for every graph of an onnx/ort result; a decoder graph is fed by the exported
    encoder, as a deployed pipeline would be."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from toolkit import onnxrt

    runtime = f"onnxruntime {ort.__version__} CPUExecutionProvider"
    roles = {p: result.graphs.get(p.name, {}).get("role", "model") for p in result.files}
    sessions = {p: onnxrt.open_session(p, fmt=result.format) for p in result.files}
    encoder = next((sessions[p] for p, r in roles.items() if r == "encoder"), None)
    runners = []
    for path, role in roles.items():
        session = sessions[path]

        def run(b: dict, session: Any = session, role: str = role) -> np.ndarray:
            feed = dict(b)
            if role == "decoder":
                if encoder is None:
                    raise UserError(f"{result.files[0]}: a decoder graph without its encoder graph")
                hidden = encoder.run(None, {i.name: b[i.name].numpy() for i in encoder.get_inputs()})[0]
                feed = {"input_ids": b["decoder_input_ids"], "encoder_attention_mask": b["attention_mask"],
                        "encoder_hidden_states": torch.from_numpy(hidden), "attention_mask": b["attention_mask"],
                        "decoder_attention_mask": b["decoder_attention_mask"]}
            name = onnxrt.output_name(session, "last_hidden_state" if role == "encoder" else "logits")
            return session.run([name], onnxrt.feed(session, feed, path))[0]

        runners.append((path, role, runtime, FileRunner(run, [i.name for i in session.get_inputs()])))
    return runners


FORMATS.register("onnx", Format("onnx", ".onnx", "onnxruntime", _export, ort_runners, order=0))
