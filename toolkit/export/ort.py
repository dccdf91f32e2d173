"""ONNX Runtime Mobile: ``.ort`` files and the required-operators config a reduced ORT build is made from.

``onnxruntime.tools.convert_onnx_models_to_ort`` optimises each graph (fixed style, level "all") and saves it in
the flatbuffer ORT format; ``<name>.required_operators.config`` lists the (domain, opset, op) triples it uses,
which ``build.py --minimal_build --include_ops_by_config`` turns into a mobile runtime holding only those kernels.
"""
from __future__ import annotations

import contextlib
import io
from pathlib import Path

from toolkit.errors import UnsupportedOpError, UserError, first_line, op_error
from toolkit.export.common import ExportJob, ExportResult, Format
from toolkit.onnxrt import open_session
from toolkit.registry import FORMATS


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
        open_session(ort_path, fmt="ort")
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


def _export(job: ExportJob) -> ExportResult | str:
    import logging

    import onnxruntime.tools.ort_format_model.utils  # noqa: F401  (creates the logger quieted below)

    onnx_result = job.done.get("onnx")
    if onnx_result is None:
        return (f"{job.variant.name} has no ONNX graph to convert" if not job.variant.has_pytorch else
                "the ONNX export failed, so there is nothing to convert")
    four_bit = [p.name for p in onnx_result.files if _has_4bit_tensors(p)]
    if four_bit:
        return (f"ORT format files cannot hold 4-bit tensors ({', '.join(four_bit)}: onnxruntime "
                f"{_ort_version()} rejects them); ship the .onnx, which ONNX Runtime Mobile loads as well")
    # the converter's config helper logs each file it writes at INFO on its own handler: keep the console quiet
    logging.getLogger("ort_format_model.utils").setLevel(logging.WARNING)
    return export_ort(onnx_result)


def _has_4bit_tensors(path: Path) -> bool:
    """An INT4 / UINT4 initializer anywhere (GatherBlockQuantized's 4-bit embedding writes one)."""
    import onnx

    four = {onnx.TensorProto.INT4, onnx.TensorProto.UINT4}
    return any(t.data_type in four for t in onnx.load(str(path), load_external_data=False).graph.initializer)


def _ort_version() -> str:
    import onnxruntime

    return onnxruntime.__version__


def _runners(result: ExportResult) -> list:
    from toolkit.export.onnx import ort_runners

    return ort_runners(result)


FORMATS.register("ort", Format("ort", ".ort", "ort-mobile", _export, _runners, order=1, needs=("onnx",)))

__all__ = ["export_ort", "open_session", "UnsupportedOpError"]
