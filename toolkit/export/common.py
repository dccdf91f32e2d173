"""What every exporter shares: the result record, the format plug-in record, model loading.

An exporter is a plain function ``export_<format>(model, out_dir, task, ...) -> ExportResult``; the result says
which files were written, by which exporter, with which input/output signature, and (for best-effort formats)
whether the model lowered at all and why not. Each format module registers a :class:`Format` (``FORMATS``), which
the export stage and export verification go through: the registry is the only list of formats.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from toolkit.errors import UnsupportedOpError, UserError, first_line, op_error, unsupported_op  # noqa: F401

if TYPE_CHECKING:
    import torch

EAGER = "eager"
"""HF attention that torch.export / torch.jit / ExecuTorch trace cleanly (sdpa adds data-dependent branches)"""


@dataclass
class ExportResult:
    """One export: the files it wrote and what they take and return."""

    format: str
    """onnx | ort | pte | torchscript"""
    files: list[Path]
    """every file written, the main graph first (encoder-decoders: encoder, then decoder graphs)"""
    exporter: str
    """library and version that wrote the files, e.g. "optimum-onnx 0.1.0" """
    task: str
    lowered: bool = True
    """False when a best-effort format could not be produced; ``files`` is then empty and ``reason`` says why"""
    reason: str | None = None
    opset: int | None = None
    inputs: list[dict[str, Any]] = field(default_factory=list)
    """the main graph's inputs: [{"name", "shape" (ints and axis names), "dtype"}]"""
    outputs: list[str] = field(default_factory=list)
    graphs: dict[str, dict[str, Any]] = field(default_factory=dict)
    """per file name: {"role", "inputs", "outputs"}; role is model | encoder | decoder | decoder_with_past"""
    extra: dict[str, Any] = field(default_factory=dict)
    """format-specific facts: ORT's required-operators config, ExecuTorch's static shapes, notes"""

    @property
    def path(self) -> Path | None:
        return self.files[0] if self.files else None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (paths as strings) for the manifest."""
        def plain(v: Any) -> Any:
            if isinstance(v, Path):
                return str(v)
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, (list, tuple)):
                return [plain(x) for x in v]
            return v

        return plain({k: getattr(self, k) for k in self.__dataclass_fields__})


def is_model_dir(obj: Any) -> bool:
    return isinstance(obj, (str, Path)) and (Path(obj) / "config.json").is_file()


def load_model(model: "torch.nn.Module | str | Path", task: Any) -> "torch.nn.Module":
    """The model in eval mode: a module as given, or a Hugging Face directory loaded with eager attention by the
    task's Auto class.

    Raises:
        UserError: a path that is not a model directory, or a model class transformers cannot load.
    """
    import torch

    from toolkit.tasks import as_task

    task = as_task(task)
    if isinstance(model, torch.nn.Module):
        try:
            return model.eval()
        except NotImplementedError:  # a PT2E / torch.export GraphModule: its mode was fixed when exported
            return model
    path = Path(model)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a model directory (no config.json); pass a saved model or a torch module")
    import transformers

    import toolkit.models  # noqa: F401  (registers the CNN with transformers' Auto classes)

    auto = getattr(transformers, task.auto_class)
    try:
        loaded = auto.from_pretrained(path, attn_implementation=EAGER)
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(f"{path}: cannot load as a {task.name} model ({first_line(exc)[:200]}); "
                        "pass the loaded torch module instead") from exc
    return loaded.eval()


def failed(fmt: str, task: str, exporter: str, exc: BaseException) -> ExportResult:
    """The result of a best-effort export that did not work: no files, the error's first line (op named if known)."""
    op = unsupported_op(str(exc))
    reason = first_line(exc)[:500]
    if op and op not in reason:
        reason = f"operator '{op}': {reason}"
    return ExportResult(format=fmt, files=[], exporter=exporter, task=task, lowered=False, reason=reason)


@dataclass
class ExportJob:
    """One variant's export, as the format plug-ins see it."""

    variant: Any
    """the Variant (paths local to this run directory)"""
    task: Any
    """the Task"""
    folder: Path
    """variants/<name>/, where the files go"""
    reference: Path | None
    """the PyTorch model folder the files are compared with (the variant's own, else its nearest ancestor's)"""
    config: Any
    """the recipe's [export] settings"""
    example: dict[str, Any] | None = None
    """real example inputs (images; tokens where an exporter traces), None: the exporter's defaults"""
    done: dict[str, ExportResult] = field(default_factory=dict)
    """what the formats before this one made (``ort`` converts the ``onnx`` result)"""


@dataclass(frozen=True)
class Format:
    """An export format: how to make its files from a variant and how to run them for verification.

    ``export`` returns an ExportResult, or a sentence saying why the variant has no such file (not applicable,
    did not lower). ``runners`` gives, per file of a result, (path, role, runtime label, a callable on a prepared
    batch returning the output, the input names the file takes, an optional splitter of a batch into the shapes
    the file accepts).
    """

    name: str
    suffix: str
    """the main file's suffix (".onnx", ".ort", ".pte", ".ts")"""
    runtime: str
    """the latency harness's runner for its files"""
    export: Callable[[ExportJob], "ExportResult | str"]
    runners: Callable[[ExportResult], list[tuple[Path, str, str, Any]]]
    order: int = 0
    """export order (a format that converts another's result comes after it)"""
    needs: tuple[str, ...] = ()
    """formats whose results this one converts"""
    available: Callable[[], str | None] = lambda: None
    """None when the format can be made here, else what to install"""
    best_effort_when_generating: bool = False
    """for models with a KV cache (generation) the format may fail to lower without failing the export"""


class FileRunner:
    """Runs one exported file on a prepared batch (verification); ``adapt`` splits/pads a batch to the shapes the
    file accepts."""

    def __init__(self, fn: Callable[[dict], Any], inputs: Any, adapt: Callable[[dict], list[dict]] | None = None):
        self._fn = fn
        self.inputs = set(inputs)
        self.adapt = adapt or (lambda b: [b])

    def __call__(self, batch: dict) -> Any:
        return self._fn(batch)
