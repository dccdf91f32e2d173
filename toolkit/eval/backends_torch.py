"""PyTorch runners for the latency harness: eager (``torch``) and ``torch-compile``."""
from __future__ import annotations

import dataclasses
import inspect
import os
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping

import numpy as np

from toolkit.errors import UserError
from toolkit.eval.backends import first_line, require_file, register_runner
from toolkit.eval.inputs import TOKEN_INPUT_NAMES, InputSpec


@register_runner("torch", extensions=(".pt2", ".ts"))
class TorchRunner:
    """PyTorch eager under ``torch.inference_mode`` with ``torch.set_num_threads(threads)``.

    Takes an ``nn.Module`` (Python API; inputs go in as keyword arguments, so a Hugging Face model takes the
    tokeniser's output as is), a ``torch.export`` program saved as ``.pt2``, or TorchScript ``.ts`` (inputs
    go in by position).
    """

    name = "torch"
    accepts_modules = True  # besides files, a Python nn.Module

    def __init__(self, threads: int):
        self.threads = threads
        self.module = None
        self.call = None
        self._specs: list[InputSpec] = []
        self._prev_threads: int | None = None
        self._by_name = False
        self._vocab: int | None = None

    def import_runtime(self, model: Any) -> None:
        import torch  # noqa: F401

    def load(self, model: Any) -> None:
        import torch

        self._prev_threads = torch.get_num_threads()
        torch.set_num_threads(self.threads)
        if isinstance(model, torch.nn.Module):
            self.module = model.eval()
            self._by_name = True
            # The smallest embedding table bounds every id input safely (ids are timing fodder, not data).
            tables = [m.num_embeddings for m in model.modules() if isinstance(m, torch.nn.Embedding)]
            self._vocab = min(tables) if tables else None
            self._specs = _specs_from_signature(model.forward)
        else:
            path = require_file(model)
            if path.suffix.lower() == ".pt2":
                try:
                    ep = torch.export.load(str(path))
                except Exception as e:
                    raise UserError(f"{path}: not a torch.export program ({first_line(e)})") from e
                self._specs = _specs_from_exported(ep)
                self.module = ep.module()
            else:
                try:
                    self.module = torch.jit.load(str(path), map_location="cpu").eval()
                except Exception as e:
                    raise UserError(f"{path}: not a TorchScript module ({first_line(e)})") from e
                args = self.module.forward.schema.arguments[1:]  # drop self
                self._specs = [_named_spec(a.name) for a in args]
        module = self.module
        self.call = (lambda feed: module(**feed)) if self._by_name else (lambda feed: module(*feed))

    def input_specs(self, real: Mapping[str, np.ndarray] | None = None) -> list[InputSpec]:
        if self._by_name and real is not None:
            self._specs = _specs_from_samples(self.module.forward, real)
        if self._vocab is not None:
            self._specs = [dataclasses.replace(s, vocab=self._vocab) if s.is_int else s for s in self._specs]
        return self._specs

    def prepare(self, feed: dict[str, np.ndarray]) -> tuple | dict:
        import torch

        if self._by_name:
            return {s.name: torch.from_numpy(feed[s.name]) for s in self._specs}
        return tuple(torch.from_numpy(feed[s.name]) for s in self._specs)

    def context(self) -> ContextManager:
        import torch

        return torch.inference_mode()

    def info(self) -> dict:
        import torch

        return {"torch_threads": torch.get_num_threads()}

    def close(self) -> None:
        import torch

        if self._prev_threads is not None:
            torch.set_num_threads(self._prev_threads)
        self.module = None
        self.call = None


@register_runner("torch-compile")
class TorchCompileRunner(TorchRunner):
    """``torch.compile`` of the eager module. Compilation happens in the first (warm-up) call, so it is part
    of the reported first-inference time, never of the timed runs.

    Args:
        mode: torch.compile mode (None, "reduce-overhead", "max-autotune").
        backend: torch.compile backend (default "inductor").
    """

    def __init__(self, threads: int, mode: str | None = None, backend: str = "inductor"):
        super().__init__(threads)
        self.mode = mode
        self.backend = backend

    def load(self, model: Any) -> None:
        import torch

        if isinstance(model, (str, os.PathLike)) and Path(model).suffix.lower() == ".ts":
            raise UserError(f"{model}: torch.compile does not take TorchScript; use --runtime torch or a .pt2 file")
        super().load(model)
        compiled = torch.compile(self.module, mode=self.mode, backend=self.backend, dynamic=False)
        self.call = (lambda feed: compiled(**feed)) if self._by_name else (lambda feed: compiled(*feed))

    def info(self) -> dict:
        return {**super().info(), "compile_backend": self.backend, "compile_mode": self.mode}


def _named_spec(name: str) -> InputSpec:
    """An input known only by name: token inputs are int64 (batch, seq); anything else needs real inputs."""
    if name in TOKEN_INPUT_NAMES:
        return InputSpec(name, "int64", None)
    return InputSpec(name, "float32", None)


# Optional forward() parameters still fed with synthetic inputs: what an encoder, a decoder-only model, an
# encoder-decoder (decoder_input_ids) or an image model (pixel_values: real inputs only) needs to run.
_OPTIONAL_FED = ("input_ids", "attention_mask", "decoder_input_ids", "pixel_values")


def _specs_from_signature(forward: Callable) -> list[InputSpec]:
    params = [p for p in inspect.signature(forward).parameters.values()
              if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)
              and (p.default is p.empty or p.name in _OPTIONAL_FED)]
    return [_named_spec(p.name) for p in params]


def _specs_from_samples(forward: Callable, samples: Mapping[str, np.ndarray]) -> list[InputSpec]:
    """Specs for real samples given to an nn.Module: their names (checked against forward's) and dtypes."""
    params = inspect.signature(forward).parameters
    takes_any = any(p.kind == p.VAR_KEYWORD for p in params.values())
    unknown = [n for n in samples if n not in params and not takes_any]
    if unknown:
        raise UserError(f"the module's forward() takes no {unknown}; it takes {list(params)}")
    return [InputSpec(n, str(np.asarray(a).dtype), None) for n, a in samples.items()]


def _specs_from_exported(ep: Any) -> list[InputSpec]:
    import torch

    user_inputs = list(ep.graph_signature.user_inputs)
    by_name = {n.name: n for n in ep.graph.nodes if n.op == "placeholder"}
    vocab: dict[str, int] = {}  # input → rows of the embedding table it indexes directly
    for n in ep.graph.nodes:
        if n.op == "call_function" and n.target == torch.ops.aten.embedding.default:
            weight, ids = n.args[0], n.args[1]
            rows = getattr(weight.meta.get("val"), "shape", [None])[0]
            if getattr(ids, "name", None) in by_name and isinstance(rows, int):
                vocab[ids.name] = min(vocab.get(ids.name, rows), rows)
    specs = []
    for name in user_inputs:
        val = by_name[name].meta.get("val")
        if not isinstance(val, torch.Tensor):
            raise UserError(f"exported input '{name}' is not a tensor; the harness times tensor inputs only")
        shape = tuple(int(d) if isinstance(d, int) else str(d) for d in val.shape)
        dtype = str(val.dtype).removeprefix("torch.")
        specs.append(InputSpec(name, dtype, shape, vocab=vocab.get(name)))
    return specs
