"""The ExecuTorch runner for the latency harness (the optional extra ``executorch``)."""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from typing import Any, Callable, ContextManager, Iterator, Mapping, Sequence

import numpy as np

from toolkit.errors import UserError
from toolkit.eval.backends import EXECUTORCH_EXTRA, first_line, require_file, register_runner
from toolkit.eval.inputs import InputSpec
from toolkit.export.executorch import dynamic_inputs

# ExecuTorch ScalarType codes (runtime/core/portable_type/scalar_type.h) for the dtypes numpy can hold.
_ET_DTYPES = {0: "uint8", 1: "int8", 2: "int16", 3: "int32", 4: "int64", 5: "float16", 6: "float32",
              7: "float64", 11: "bool"}


@contextlib.contextmanager
def _captured_stderr() -> Iterator[Callable[[], str]]:
    """Send fd 2 (and sys.stderr) to a temp file; yields a function returning what was written.

    ExecuTorch's C++ logger and torchao's import messages write straight to fd 2; the CLI promises one line.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile(mode="w+b") as tmp:
        os.dup2(tmp.fileno(), 2)
        old_py = sys.stderr
        sys.stderr = open(os.dup(tmp.fileno()), "w", closefd=True)

        def read() -> str:
            sys.stderr.flush()
            tmp.seek(0)
            return tmp.read().decode(errors="replace")

        try:
            yield read
        finally:
            sys.stderr.flush()
            sys.stderr.close()
            old_py.flush()  # loggers holding the original object wrote through it into the file too
            sys.stderr = old_py
            os.dup2(saved, 2)
            os.close(saved)


def _et_log_reason(log: str) -> str:
    """The ExecuTorch C++ log line that says why a load failed (e.g. '[program.cpp:168] Program identifier...')."""
    lines = [ln.strip() for ln in log.splitlines() if ln.strip().startswith("[") and "cpuinfo" not in ln]
    return lines[-1] if lines else ""


@register_runner("executorch", extensions=(".pte",))
class ExecuTorchRunner:
    """An ExecuTorch program's ``forward`` method, run through ``executorch.runtime``.

    The XNNPACK thread pool is resized to ``threads`` (and restored on close).

    Args:
        input_names: names for the program's inputs, in order (a .pte does not store them); default
            ``input_0, input_1, ...``. Unnamed integer inputs are token ids for the first, zeros for the rest.
    """

    name = "executorch"

    def __init__(self, threads: int, input_names: Sequence[str] | None = None):
        self.threads = threads
        self.input_names = list(input_names) if input_names else None
        self.method = None
        self.call = None
        self._pool = None
        self._prev_pool: int | None = None

    def import_runtime(self, model: Any) -> None:
        path = require_file(model)
        with open(path, "rb") as f:
            head = f.read(8)
        # A .pte is a flatbuffer whose file identifier (bytes 4..8) is "ET" + a 2-digit version.
        if len(head) < 8 or head[4:6] != b"ET":
            raise UserError(f"{path}: not an ExecuTorch program (no 'ET..' identifier in its header); "
                            "export one with `python -m toolkit export RECIPE` ([export] formats = [\"pte\"])")
        with _captured_stderr():  # torchao and ExecuTorch print import notes to fd 2
            try:
                import executorch.extension.pybindings.portable_lib  # noqa: F401
                import executorch.runtime  # noqa: F401
            except ImportError as e:
                raise UserError(f"running .pte programs needs ExecuTorch ({first_line(e)}); "
                                f"install it with {EXECUTORCH_EXTRA}") from e

    def load(self, model: Any) -> None:
        path = self.path = require_file(model)
        self.import_runtime(path)  # a no-op when the harness has called it already
        from executorch.runtime import Runtime
        import executorch.extension.pybindings.portable_lib as pool

        if hasattr(pool, "_unsafe_reset_threadpool"):
            self._pool = pool
            with _captured_stderr():  # creating and resetting the pool logs cpuinfo notes to fd 2
                self._prev_pool = pool._threadpool_get_thread_count()
                pool._unsafe_reset_threadpool(self.threads)
        with _captured_stderr() as log:
            try:
                program = Runtime.get().load_program(path)
                self.method = program.load_method("forward")
            except Exception as e:
                why = _et_log_reason(log()) or first_line(e)
                raise UserError(f"{path}: not a loadable ExecuTorch program ({why}); "
                                "export one with `python -m toolkit export RECIPE` ([export] formats = [\"pte\"])") from e
        self._program = program  # the method borrows from the program: keep it alive
        self.call = self.method.execute

    def input_specs(self, real: Mapping[str, np.ndarray] | None = None) -> list[InputSpec]:
        md = self.method.metadata
        n = md.num_inputs()
        names = self.input_names or [f"input_{i}" for i in range(n)]
        if len(names) != n:
            raise UserError(f"input_names has {len(names)} names; the program takes {n} inputs")
        dynamic = dynamic_inputs(self.path, n)
        specs = []
        for i in range(n):
            meta = md.input_tensor_meta(i)
            dtype = _ET_DTYPES.get(meta.dtype())
            if dtype is None:
                raise UserError(f"program input {i} has ExecuTorch dtype code {meta.dtype()}, "
                                "which the harness cannot synthesise")
            sizes = tuple(int(d) for d in meta.sizes())  # for a bounded dynamic input: its largest sizes
            if dynamic[i]:
                # ExecuTorch marks a whole tensor dynamic, not an axis: take axis 0 as the batch and, for token
                # inputs, axis 1 as the sequence; an image keeps its channels and pixels.
                is_int = dtype not in ("float16", "float32", "float64")
                shape = tuple(None if a == 0 or (a == 1 and is_int) else d for a, d in enumerate(sizes))
                specs.append(InputSpec(names[i], dtype, shape, bounds=sizes))
            else:
                specs.append(InputSpec(names[i], dtype, sizes))
        self._names = names
        self._ranks = [len(tuple(md.input_tensor_meta(i).sizes())) for i in range(n)]
        if self.input_names is None:
            specs = _positional_roles(specs)
        return specs

    def prepare(self, feed: dict[str, np.ndarray]) -> list:
        import torch

        # a KV-cache program's cache_position is one row for its batch of 1: samples carry it one row per sample
        return [torch.from_numpy(feed[name][0] if rank == 1 and feed[name].ndim == 2 and len(feed[name]) == 1
                                 else feed[name]) for name, rank in zip(self._names, self._ranks)]

    def context(self) -> ContextManager:
        return contextlib.nullcontext()

    def info(self) -> dict:
        out: dict = {}
        if self._pool is not None:
            out["threadpool_threads"] = self._pool._threadpool_get_thread_count()
        return out

    def close(self) -> None:
        if self._pool is not None and self._prev_pool and self._prev_pool != self.threads:
            with _captured_stderr():
                self._pool._unsafe_reset_threadpool(self._prev_pool)
        self.method = None
        self._program = None
        self.call = None


def _positional_roles(specs: list[InputSpec]) -> list[InputSpec]:
    # Unnamed integer inputs: the first is token ids; later ones (masks, segment ids) become zeros, which is
    # valid for any vocabulary of segment ids and harmless for a mask.
    out, seen_int = [], False
    for s in specs:
        if s.is_int and seen_int:
            s = InputSpec(s.name, s.dtype, s.shape, fill="zeros")
        seen_int = seen_int or s.is_int
        out.append(s)
    return out
