"""Runners for the latency harness: one small class per runtime, behind one registry.

A runner loads a model, declares its inputs (:class:`~toolkit.eval.inputs.InputSpec`), turns a feed
(name → numpy array) into what its runtime takes (``prepare``, done before timing), and exposes ``call``: the
one callable the harness times. ``call(prepared)`` must be exactly what a user's own loop would call, so the
harness measures the runtime and nothing of ours.

Adding a runtime is one class and one ``@register_runner`` line; ``RUNNERS`` and ``EXTENSIONS`` are the only
lists. Heavy libraries are imported inside ``import_runtime``/``load``. This module holds the registry and ONNX
Runtime; :mod:`toolkit.eval.backends_torch` and :mod:`toolkit.eval.backends_executorch` the others.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import os
from pathlib import Path
from typing import Any, Callable, ContextManager, Mapping, Protocol, Sequence

import numpy as np

from toolkit.errors import UserError, did_you_mean
from toolkit.eval.inputs import InputSpec

EXECUTORCH_EXTRA = "pip install 'edge-toolkit[executorch]'"


class Runner(Protocol):
    """What the harness needs from a runtime."""

    name: str
    threads: int
    call: Callable[[Any], Any]

    def import_runtime(self, model: Any) -> None:
        """Check the model file cheaply and import the runtime's libraries (untimed: not part of load time).

        Raises:
            UserError: a file that is plainly not this runtime's format, or the library is not installed
                (naming the extra to install).
        """

    def load(self, model: Any) -> None:
        """Create the session/program; the harness times this as the load time."""

    def input_specs(self, real: Mapping[str, np.ndarray] | None = None) -> list[InputSpec]:
        """The model's inputs. ``real``: the samples the caller will pass, for runtimes whose signature is
        only known by name (a Python nn.Module takes the samples' names as keyword arguments)."""

    def prepare(self, feed: dict[str, np.ndarray]) -> Any:
        """The runtime's own input object for ``feed`` (built once, before timing)."""

    def context(self) -> ContextManager:
        """Entered around warm-up and timed runs (e.g. torch.inference_mode)."""

    def info(self) -> dict:
        """Extras for the result: providers, effective thread counts, ..."""

    def close(self) -> None:
        """Release the model and undo process-wide settings (torch threads, ExecuTorch thread pool)."""


RUNNERS: dict[str, type] = {}
EXTENSIONS: dict[str, str] = {}


def register_runner(name: str, extensions: Sequence[str] = ()) -> Callable[[type], type]:
    """Register a runner class under ``name``; files with ``extensions`` default to it."""

    def deco(cls: type) -> type:
        cls.name = name
        RUNNERS[name] = cls
        for ext in extensions:
            EXTENSIONS[ext] = name
        return cls

    return deco


def runtime_for(model: Any) -> str:
    """The runtime a model runs in by default: from the file extension, or ``torch`` for an nn.Module."""
    if isinstance(model, (str, os.PathLike)):
        ext = Path(model).suffix.lower()
        if ext in EXTENSIONS:
            return EXTENSIONS[ext]
        known = ", ".join(sorted(EXTENSIONS))
        raise UserError(f"{model}: cannot tell the runtime from the extension '{ext}' (known: {known}); "
                        f"pass --runtime ({', '.join(sorted(RUNNERS))})")
    return "torch"


def make_runner(name: str, threads: int, options: dict | None = None) -> Runner:
    """An instance of the runner registered as ``name``.

    Raises:
        UserError: unknown runtime, or an option that runtime does not take.
    """
    if name not in RUNNERS:
        raise UserError(f"unknown runtime '{name}'{did_you_mean(name, sorted(RUNNERS))}")
    cls = RUNNERS[name]
    options = dict(options or {})
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self", "threads"}
    bad = sorted(set(options) - accepted)
    if bad:
        raise UserError(f"runtime '{name}' does not take option(s) {bad}; it takes {sorted(accepted) or 'none'}")
    return cls(threads, **options)


def first_line(e: BaseException, limit: int = 200) -> str:
    text = str(e).strip().splitlines()
    line = text[0] if text else type(e).__name__
    return line if len(line) <= limit else line[: limit - 1] + "…"


def require_file(path: Any) -> Path:
    p = Path(path)
    if not p.exists():
        raise UserError(f"{p}: no such file")
    if p.is_dir():
        raise UserError(f"{p}: is a directory; pass the model file inside it")
    return p


# ---------------------------------------------------------------------------------------------- ONNX Runtime


@register_runner("onnxruntime", extensions=(".onnx", ".ort"))
class OnnxRuntimeRunner:
    """An ``InferenceSession``: intra-op threads = ``threads``, inter-op 1 (sequential), all graph optimisations.

    Args:
        threads: intra_op_num_threads.
        providers: execution providers in order of preference (default ``["CPUExecutionProvider"]``).
        provider: ``cpu | cuda | tensorrt`` instead: the chain of :func:`toolkit.onnxrt.provider_chain`, its
            TensorRT flags from the graph (FP16 weights, Q/DQ nodes).
        cache_dir: TensorRT's engine and timing cache (default: ``trt_cache/`` beside the model, i.e. inside
            the run directory for a run's variants).
    """

    name = "onnxruntime"

    def __init__(self, threads: int, providers: Sequence[str] | None = None, provider: str | None = None,
                 cache_dir: str | Path | None = None):
        from toolkit.onnxrt import provider_name

        self.threads = threads
        self.providers: list = list(providers or ["CPUExecutionProvider"])
        self.provider = provider_name(provider) if provider else None  # a bad word fails before any loading
        self.cache_dir = cache_dir
        self.session = None
        self.call = None

    def import_runtime(self, model: Any) -> None:
        import onnxruntime  # noqa: F401

    def load(self, model: Any) -> None:
        from toolkit import onnxrt

        path = self.path = require_file(model)
        if self.provider:
            cache = Path(self.cache_dir) if self.cache_dir else path.parent / "trt_cache"
            self.providers = onnxrt.provider_chain(self.provider, cache_dir=cache, **onnxrt.graph_precision(path))
        # fatal log lines only: errors reach the user once, as our one-line message
        self.session = onnxrt.open_session(path, threads=self.threads, providers=self.providers, timing=True,
                                           assignment=True)
        self.call = functools.partial(self.session.run, None)  # = session.run(None, feed)

    def input_specs(self, real: Mapping[str, np.ndarray] | None = None) -> list[InputSpec]:
        from toolkit.onnxrt import NP_TYPES

        vocab = _onnx_vocab_sizes(self.path)
        specs = []
        for i in self.session.get_inputs():
            dtype = np.dtype(NP_TYPES[i.type]).name if i.type in NP_TYPES else None
            if dtype is None:
                raise UserError(f"input '{i.name}' has type {i.type}, which the harness cannot synthesise")
            shape = tuple(d if isinstance(d, int) and d > 0 else (d if isinstance(d, str) else None) for d in i.shape)
            specs.append(InputSpec(i.name, dtype, shape, vocab=vocab.get(i.name)))
        return specs

    def prepare(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return feed

    def context(self) -> ContextManager:
        return contextlib.nullcontext()

    def info(self) -> dict:
        opts = self.session.get_session_options()
        from toolkit.onnxrt import node_assignment

        out = {"providers": self.session.get_providers(), "intra_op_threads": opts.intra_op_num_threads,
               "inter_op_threads": opts.inter_op_num_threads}
        nodes = node_assignment(self.session)
        if nodes is not None:
            out["node_assignment"] = nodes  # the fraction of the graph's nodes each provider took
        options = self.session.get_provider_options()
        trt = options.get("TensorrtExecutionProvider")
        if trt:
            out["tensorrt"] = {k: trt.get(k) for k in ("trt_fp16_enable", "trt_int8_enable", "trt_engine_cache_path")}
        return out

    def close(self) -> None:
        self.session = None
        self.call = None


def _onnx_vocab_sizes(path: Path) -> dict[str, int]:
    """Graph input → rows of the embedding table it indexes (Gather on an initializer), for .onnx files."""
    if path.suffix.lower() != ".onnx":
        return {}
    try:
        import onnx

        graph = onnx.load(str(path), load_external_data=False).graph
    except Exception:  # ORT loaded it; the hint is optional
        return {}
    tables = {t.name: t.dims[0] for t in graph.initializer if len(t.dims) == 2}
    casts = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Cast"}
    out: dict[str, int] = {}
    for n in graph.node:
        if n.op_type == "Gather" and len(n.input) == 2 and n.input[0] in tables:
            src = casts.get(n.input[1], n.input[1])
            rows = int(tables[n.input[0]])
            out[src] = min(out.get(src, rows), rows)
    return out


# The other runners register themselves on import; imported last, as they use the registry above.
from toolkit.eval import backends_executorch, backends_torch  # noqa: E402,F401
