"""ONNX Runtime Mobile: ``.ort`` files and the required-operators config a reduced ORT build is made from.

``onnxruntime.tools.convert_onnx_models_to_ort`` optimises each graph (fixed style, level "all") and saves it in
the flatbuffer ORT format; ``<name>.required_operators.config`` lists the (domain, opset, op) triples it uses,
which ``build.py --minimal_build --include_ops_by_config`` turns into a mobile runtime holding only those kernels.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from toolkit.errors import UserError
from toolkit.export.common import ExportResult, UnsupportedOpError, first_line, op_error


def open_session(path: Path | str, fmt: str | None = None, threads: int | None = None):
    """An onnxruntime CPU session for an ``.onnx`` or ``.ort`` file.

    Raises:
        UnsupportedOpError: the runtime has no kernel for an op of the graph (the message names op and format).
        UserError: any other load failure (missing or corrupt file).
    """
    import onnxruntime as ort

    path = Path(path)
    fmt = fmt or ("ort" if path.suffix == ".ort" else "onnx")
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own pybind types (Fail, InvalidGraph, NotImplemented)
        raise op_error(exc, f"onnxruntime {ort.__version__} ({fmt})", path) or \
            UserError(f"{path}: onnxruntime cannot load it: {first_line(exc)[:300]}") from exc


def export_ort(onnx: ExportResult | Path | list[Path], out_dir: Path | None = None,
               target_platform: str | None = None) -> ExportResult:
    """Convert ONNX graphs to ORT format and check that each loads in onnxruntime on the host.

    Args:
        onnx: an ONNX ExportResult, one ``.onnx`` file or several (an encoder-decoder's graphs).
        out_dir: where the ``.ort`` files go; default beside each ONNX file.
        target_platform: "arm" (allows int8 QDQ fusions the ARM kernels have) | "amd64" | None (portable).

    Returns:
        format "ort": the ``.ort`` files, then ``extra["required_operators"]``: the config file per graph, and
        ``extra["required_operators_all"]`` (one config covering every graph) when there are several.

    Raises:
        UnsupportedOpError: the graph has an op onnxruntime cannot run.
    """
    import onnxruntime
    from onnxruntime.tools.convert_onnx_models_to_ort import OptimizationStyle, convert_onnx_models_to_ort
    from onnxruntime.tools.ort_format_model import create_config_from_models

    task = onnx.task if isinstance(onnx, ExportResult) else ""
    sources = [Path(p) for p in (onnx.files if isinstance(onnx, ExportResult) else
                                 (onnx if isinstance(onnx, list) else [onnx]))]
    if not sources:
        raise UserError("ort: nothing to convert (the ONNX export wrote no files)")
    for src in sources:
        if not src.is_file():
            raise UserError(f"{src}: no such ONNX file to convert to .ort")
    files: list[Path] = []
    configs: dict[str, Path] = {}
    for src in sources:
        dest_dir = Path(out_dir) if out_dir else src.parent
        dest_dir.mkdir(parents=True, exist_ok=True)
        open_session(src)  # an unknown op fails here with its name, rather than deep in the converter
        try:
            # the converter prints progress to stdout; keep the caller's stdout for its own output
            with contextlib.redirect_stdout(io.StringIO()):
                convert_onnx_models_to_ort(src, output_dir=dest_dir, optimization_styles=[OptimizationStyle.Fixed],
                                           target_platform=target_platform)
        except Exception as exc:
            raise op_error(exc, "ort", src) or UserError(f"{src}: ORT format conversion failed: "
                                                         f"{first_line(exc)[:300]}") from exc
        ort_path = dest_dir / src.with_suffix(".ort").name
        config = dest_dir / src.with_suffix(".required_operators.config").name
        if not ort_path.is_file() or not config.is_file():
            raise UserError(f"{src}: the converter wrote no {ort_path.name} / {config.name} into {dest_dir}")
        open_session(ort_path, "ort")
        files.append(ort_path)
        configs[ort_path.name] = config
    extra: dict = {"required_operators": configs, "optimization": "Fixed, level all",
                   "target_platform": target_platform or "any"}
    if len(files) > 1:
        combined = files[0].parent / "required_operators.config"
        create_config_from_models(files, combined, False)
        extra["required_operators_all"] = combined
    result = ExportResult(format="ort", files=files, exporter=f"onnxruntime {onnxruntime.__version__} "
                          "convert_onnx_models_to_ort", task=task, extra=extra)
    if isinstance(onnx, ExportResult):  # same graphs, same signatures
        result.opset, result.inputs, result.outputs = onnx.opset, onnx.inputs, onnx.outputs
        result.graphs = {p.with_suffix(".ort").name: onnx.graphs[p.name] for p in onnx.files if p.name in onnx.graphs}
    return result


__all__ = ["export_ort", "open_session", "UnsupportedOpError"]
