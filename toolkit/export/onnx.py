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

import onnx
import torch

from toolkit.errors import UserError
from toolkit.export.common import (
    ExportResult, Logits, as_tensors, check_task, default_inputs, first_line, is_model_dir, load_model,
)

OPTIMUM_TASKS = {
    "text-classification": "text-classification",
    "language-modeling": "text-generation-with-past",
    "seq2seq": "text2text-generation-with-past",
    "image-classification": "image-classification",
}
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


def export_onnx(model_dir_or_module: str | Path | torch.nn.Module, out_dir: Path, task: str, opset: int = 18,
                example_inputs: dict[str, Any] | None = None, keep_unmerged: bool = False) -> ExportResult:
    """Export a model to ONNX in ``out_dir``.

    Args:
        model_dir_or_module: a Hugging Face model directory (save_pretrained) or a torch module. An HF
            ``PreTrainedModel`` instance of an architecture optimum knows is saved to a temporary folder and
            exported like a directory.
        out_dir: where ``model.onnx`` (encoder-decoders: ``encoder_model.onnx`` + ``decoder_model_merged.onnx``) go.
        task: text-classification | language-modeling | seq2seq | image-classification.
        opset: ONNX opset (optimum recommends >= 18 for BERT-style models).
        example_inputs: names -> tensors for the torch.onnx path; default: from the model's config.
        keep_unmerged: encoder-decoders: also keep optimum's ``decoder_model.onnx`` and
            ``decoder_with_past_model.onnx`` (the merged decoder holds both graphs).

    Returns:
        The files written, main graph first, with opset, exporter and each graph's inputs/outputs.

    Raises:
        UserError: unknown task, a path that is not a model directory, a model that cannot be exported.
    """
    check_task(task)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    model_type = _model_type(model_dir_or_module)
    if model_type is not None and _optimum_knows(model_type, task):
        if isinstance(model_dir_or_module, torch.nn.Module):
            with tempfile.TemporaryDirectory(prefix="export-") as tmp:
                model_dir_or_module.save_pretrained(tmp)
                return _export_optimum(Path(tmp), out_dir, task, opset, keep_unmerged)
        return _export_optimum(Path(model_dir_or_module), out_dir, task, opset, keep_unmerged)
    if task != "image-classification" and not isinstance(model_dir_or_module, torch.nn.Module):
        raise UserError(f"{model_dir_or_module}: optimum-onnx cannot export model_type '{model_type}' for {task}; "
                        "pass the loaded torch module to export it with torch.onnx")
    module = load_model(model_dir_or_module, task)
    return _export_torch(module, out_dir, task, opset, example_inputs)


def _model_type(obj: Any) -> str | None:
    if is_model_dir(obj):
        import json

        return json.loads((Path(obj) / "config.json").read_text()).get("model_type")
    config = getattr(obj, "config", None)
    if isinstance(obj, torch.nn.Module) and hasattr(obj, "save_pretrained") and config is not None:
        return getattr(config, "model_type", None)
    if isinstance(obj, (str, Path)):
        raise UserError(f"{obj}: not a model directory (no config.json)")
    return None


def _optimum_knows(model_type: str, task: str) -> bool:
    import optimum.exporters.onnx.model_configs  # noqa: F401  (registers the ONNX configs with TasksManager)
    from optimum.exporters.tasks import TasksManager

    for name in dict.fromkeys([model_type, model_type.replace("_", "-")]):  # optimum spells some with "-"
        try:
            tasks = TasksManager.get_supported_tasks_for_model_type(name, "onnx", library_name="transformers")
        except (KeyError, ValueError):
            continue
        return OPTIMUM_TASKS[task] in tasks
    return False


def _export_optimum(model_dir: Path, out_dir: Path, task: str, opset: int, keep_unmerged: bool) -> ExportResult:
    from importlib.metadata import version

    from optimum.exporters.onnx import main_export

    try:
        # do_validation=False: verify.py compares every file with PyTorch on real samples instead
        main_export(str(model_dir), output=out_dir, task=OPTIMUM_TASKS[task], opset=opset, device="cpu",
                    library_name="transformers", do_validation=False)
    except (ValueError, KeyError, RuntimeError) as exc:
        raise UserError(f"{model_dir}: optimum-onnx could not export it for {task}: {first_line(exc)[:300]}") from exc
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


def _export_torch(module: torch.nn.Module, out_dir: Path, task: str, opset: int,
                  example_inputs: dict[str, Any] | None) -> ExportResult:
    inputs = as_tensors(example_inputs) if example_inputs else default_inputs(module, task)
    names = list(inputs)
    dynamic: dict[str, dict[int, str]] = {}
    for name, t in inputs.items():
        axes = {0: "batch_size"}
        if t.dim() == 2 and not t.is_floating_point():  # token ids / masks
            axes[1] = "decoder_sequence_length" if name.startswith("decoder_") else "sequence_length"
        dynamic[name] = axes
    out_axes = {0: "batch_size"}
    if task in ("language-modeling", "seq2seq"):
        out_axes[1] = "decoder_sequence_length" if task == "seq2seq" else "sequence_length"
    dynamic["logits"] = out_axes
    path = out_dir / MAIN
    wrapper = Logits(module, names, task)
    try:
        with torch.no_grad():
            torch.onnx.export(wrapper, tuple(inputs.values()), str(path), input_names=names, output_names=["logits"],
                              dynamic_axes=dynamic, opset_version=opset, dynamo=False)
    except Exception as exc:  # torch raises many types; all mean "this module does not export"
        raise UserError(f"{type(module).__name__}: torch.onnx could not export it: {first_line(exc)[:300]}") from exc
    return _result([path], f"torch.onnx {torch.__version__}", task)


def _result(files: list[Path], exporter: str, task: str) -> ExportResult:
    graphs = {p.name: {"role": _ROLES.get(p.name, "model"), **describe(p)} for p in files}
    main = graphs[files[0].name]
    if task == "seq2seq" and len(files) > 1:
        extra = {"graphs": "encoder + decoder (merged: with and without past, switched by use_cache_branch)"}
    elif task == "language-modeling":
        extra = {"kv_cache": any(i["name"].startswith("past_key_values") for i in main["inputs"])}
    else:
        extra = {}
    return ExportResult(format="onnx", files=files, exporter=exporter, task=task, opset=opset_of(files[0]),
                        inputs=main["inputs"], outputs=main["outputs"], graphs=graphs, extra=extra)


def describe(path: Path) -> dict[str, Any]:
    """A graph's inputs ({"name", "shape", "dtype"}; axis names for dynamic axes) and output names."""
    model = onnx.load(str(path), load_external_data=False)

    def shape(value: onnx.ValueInfoProto) -> list[int | str]:
        dims = value.type.tensor_type.shape.dim
        return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]

    def dtype(value: onnx.ValueInfoProto) -> str:
        return onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name

    init = {i.name for i in model.graph.initializer}
    inputs = [{"name": v.name, "shape": shape(v), "dtype": dtype(v)} for v in model.graph.input if v.name not in init]
    return {"inputs": inputs, "outputs": [v.name for v in model.graph.output]}


def opset_of(path: Path) -> int:
    model = onnx.load(str(path), load_external_data=False)
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
