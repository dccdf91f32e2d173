"""What every exporter shares: the result record, task names, model loading, the logits wrapper, op errors.

An exporter is a plain function ``export_<format>(model, out_dir, task, ...) -> ExportResult``; the result says
which files were written, by which exporter, with which input/output signature, and (for best-effort formats)
whether the model lowered at all and why not.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from toolkit.errors import UserError, did_you_mean

TASKS = ("text-classification", "language-modeling", "seq2seq", "image-classification")
REQUIRED_TASKS = ("text-classification", "image-classification")
"""tasks whose models must export to every format (DESIGN.md); the others are best-effort for .pte / .ts"""

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


class UnsupportedOpError(UserError):
    """A runtime cannot run an operator of the model. Exit 2: the message names the op and the format."""

    def __init__(self, message: str, op: str | None, format: str):
        super().__init__(message)
        self.op = op
        self.format = format


# How ONNX Runtime and ExecuTorch name an op they cannot run (the op is group 1).
_OP_PATTERNS = (
    r"Could not find an implementation for (\S+?)\(\d+\)",         # ORT: no kernel for this op/type
    r"No Op registered for (\S+) with domain_version",               # ORT: unknown op in a known domain
    r"Fatal error: (\S+?)\(-?\d+\) is not a registered function/op",  # ORT: unknown domain
    r"of operator \((\S+)\) in node",                                  # ORT: type not allowed by the schema
    r"(?:Operator|op) [`'\"]?([\w.:]+)[`'\"]? (?:is )?not (?:implemented|supported)",  # torch / ExecuTorch
    r"not implemented for (?:op|operator) [`'\"]?([\w.:]+)",
    r"Missing out variants: \{'([^']+)'",                              # ExecuTorch to_executorch
    r"is not Aten Canonical.*?([\w.]+\.default)",
)


def unsupported_op(message: str) -> str | None:
    """The op a runtime's error message names, or None."""
    for pattern in _OP_PATTERNS:
        hit = re.search(pattern, message, flags=re.S)
        if hit:
            return hit.group(1)
    return None


def first_line(exc: BaseException) -> str:
    text = str(exc).strip() or type(exc).__name__
    return text.splitlines()[0].strip()


def op_error(exc: BaseException, fmt: str, path: Path | str) -> UnsupportedOpError | None:
    """An UnsupportedOpError for ``exc`` when its message names an op, else None."""
    op = unsupported_op(str(exc))
    if op is None:
        return None
    return UnsupportedOpError(f"{path}: {fmt} cannot run operator '{op}' ({first_line(exc)[:300]})", op, fmt)


def check_task(task: str) -> str:
    if task not in TASKS:
        raise UserError(f"export: task '{task}' is not a task{did_you_mean(task, list(TASKS))}")
    return task


def is_model_dir(obj: Any) -> bool:
    return isinstance(obj, (str, Path)) and (Path(obj) / "config.json").is_file()


def load_model(model: torch.nn.Module | str | Path, task: str) -> torch.nn.Module:
    """The model in eval mode: a module as given, or a Hugging Face directory loaded with eager attention.

    Raises:
        UserError: a path that is not a model directory, or a model class transformers cannot load.
    """
    if isinstance(model, torch.nn.Module):
        try:
            return model.eval()
        except NotImplementedError:  # a PT2E / torch.export GraphModule: its mode was fixed when exported
            return model
    path = Path(model)
    if not (path / "config.json").is_file():
        raise UserError(f"{path}: not a model directory (no config.json); pass a saved model or a torch module")
    import transformers

    auto = {
        "text-classification": transformers.AutoModelForSequenceClassification,
        "language-modeling": transformers.AutoModelForCausalLM,
        "seq2seq": transformers.AutoModelForSeq2SeqLM,
        "image-classification": transformers.AutoModelForImageClassification,
    }[check_task(task)]
    try:
        loaded = auto.from_pretrained(path, attn_implementation=EAGER)
    except (ValueError, KeyError, OSError) as exc:
        raise UserError(f"{path}: cannot load as a {task} model ({first_line(exc)[:200]}); "
                        "pass the loaded torch module instead") from exc
    return loaded.eval()


class Logits(torch.nn.Module):
    """Positional inputs in, one logits tensor out: the form torch.export, torch.jit and torch.onnx want.

    The wrapped model is used in the mode it is in (``load_model`` puts it in eval mode).

    HF models return a ModelOutput; this returns its ``.logits`` (or a plain module's tensor / first output).
    Decoders run without a KV cache; their position ids follow the attention mask, as ONNX Runtime's generation
    loop (optimum) computes them, so left-padded prompts give the same logits everywhere.
    """

    def __init__(self, model: torch.nn.Module, input_names: list[str], task: str):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.task = task
        params = inspect.signature(model.forward).parameters
        by_name = any(p.kind is p.VAR_KEYWORD for p in params.values()) or all(n in params for n in input_names)
        self._positional = not by_name  # e.g. nn.Sequential.forward(input)
        self._use_cache = "use_cache" in params
        self._positions = (task == "language-modeling" and "position_ids" in params
                           and "position_ids" not in input_names and "attention_mask" in input_names)

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self._positional:
            return _logits(self.model(*tensors))
        kwargs = dict(zip(self.input_names, tensors))
        if self._positions:
            kwargs["position_ids"] = positions_from_mask(kwargs["attention_mask"])
        if self._use_cache:
            kwargs["use_cache"] = False
        return _logits(self.model(**kwargs))


def _logits(out: Any) -> torch.Tensor:
    if hasattr(out, "logits"):
        return out.logits
    if isinstance(out, (tuple, list)):
        return out[0]
    return out


def positions_from_mask(mask: torch.Tensor) -> torch.Tensor:
    """Position ids that skip left padding: cumsum(mask) - 1, padding set to 1 (as optimum does)."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def default_inputs(model: torch.nn.Module, task: str, batch: int = 2, seq_len: int = 8) -> dict[str, torch.Tensor]:
    """Example inputs from the model's config: token ids below the vocabulary size, or images of its size."""
    cfg = getattr(model, "config", None)
    gen = torch.Generator().manual_seed(0)
    if task == "image-classification":
        channels = getattr(cfg, "num_channels", None) or getattr(cfg, "in_channels", None)
        size = getattr(cfg, "image_size", None)
        if channels is None or size is None:
            raise UserError("export: the image model's config has no num_channels/image_size; pass example_inputs "
                            "= {'pixel_values': tensor of shape (B, C, H, W)}")
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return {"pixel_values": torch.randn(batch, channels, h, w, generator=gen)}
    vocab = getattr(cfg, "vocab_size", None)
    if vocab is None:
        raise UserError(f"export: {type(model).__name__} has no config.vocab_size; pass example_inputs")
    low = min(4, vocab - 1)  # keep clear of the usual special ids
    ids = torch.randint(low, vocab, (batch, seq_len), generator=gen)
    inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    if task == "seq2seq":
        dec = torch.randint(low, vocab, (batch, max(2, seq_len // 2)), generator=gen)
        inputs |= {"decoder_input_ids": dec, "decoder_attention_mask": torch.ones_like(dec)}
    return inputs


def as_tensors(inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
    return {k: v if isinstance(v, torch.Tensor) else torch.as_tensor(v) for k, v in inputs.items()}


def failed(fmt: str, task: str, exporter: str, exc: BaseException) -> ExportResult:
    """The result of a best-effort export that did not work: no files, the error's first line (op named if known)."""
    op = unsupported_op(str(exc))
    reason = first_line(exc)[:500]
    if op and op not in reason:
        reason = f"operator '{op}': {reason}"
    return ExportResult(format=fmt, files=[], exporter=exporter, task=task, lowered=False, reason=reason)
