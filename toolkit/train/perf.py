"""The loop's speed: host-side spans of a step, an optional torch.profiler trace, a prefetching collator, the
host-to-device copy, and MFU (model FLOPs utilisation) on GPUs.

Nothing here changes what is trained: spans only read the clock, the prefetcher collates the same batches in the
same order (on another thread, only on CUDA), and MFU is a number in the metrics.
"""
from __future__ import annotations

import contextlib
import json
import queue
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch

SPANS = ("collate", "to_device", "forward", "backward", "optimizer", "bookkeeping", "events")
"""host-side parts of a step that ``[train] profile = true`` times (in this order in the summary)"""

TRACE_STEPS = (2, 2, 4)
"""torch.profiler schedule of the trace: steps skipped, warm-up steps, recorded steps"""


class Spans:
    """Host wall time of each part of a step, summed over the run (``[train] profile = true``).

    Host time, not device time: on CUDA a forward span is the time to *launch* its kernels, which is exactly the
    per-step host work that can starve a fast GPU. Inside a torch.profiler trace each span is also a
    ``record_function`` range, so the trace shows them by name. Disabled, ``span`` is one attribute test.
    """

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.total: dict[str, float] = {}
        self.count: dict[str, int] = {}
        self.steps = 0
        self.step_time = 0.0
        self.trace: Any = None  # the torch.profiler.profile while one records

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        rf = torch.profiler.record_function(name) if self.trace is not None else contextlib.nullcontext()
        t0 = time.perf_counter()
        with rf:
            yield
        self.total[name] = self.total.get(name, 0.0) + time.perf_counter() - t0
        self.count[name] = self.count.get(name, 0) + 1

    def span(self, name: str) -> contextlib.AbstractContextManager:
        return self._timed(name) if self.enabled else contextlib.nullcontext()

    def step_done(self, seconds: float) -> None:
        """One optimizer step launched, ``seconds`` after it began (host time)."""
        if self.enabled:
            self.steps += 1
            self.step_time += seconds
            if self.trace is not None:
                self.trace.step()

    def summary(self) -> dict[str, Any]:
        """Per span: total ms, calls, ms per step and share of the host step time; plus the step itself."""
        steps = max(self.steps, 1)
        names = [n for n in SPANS if n in self.total] + sorted(set(self.total) - set(SPANS))
        spans = {n: {"total_ms": round(self.total[n] * 1e3, 3), "calls": self.count[n],
                     "ms_per_step": round(self.total[n] * 1e3 / steps, 4),
                     "fraction_of_step": round(self.total[n] / self.step_time, 4) if self.step_time else None}
                 for n in names}
        return {"schema_version": 1, "steps": self.steps, "ms_per_step": round(self.step_time * 1e3 / steps, 4),
                "spans": spans,
                "conventions": "host wall time (time.perf_counter) around each part; on CUDA kernels run "
                               "asynchronously, so forward/backward/optimizer are launch times"}


@contextlib.contextmanager
def profiling(enabled: bool, folder: Path, device: torch.device) -> Iterator[Spans]:
    """Spans for the loop; when ``enabled``, also a torch.profiler trace of a few steps, then on exit
    ``folder/profile.json`` (the span summary) and ``folder/profile/trace.json`` (Chrome trace format)."""
    spans = Spans(enabled)
    if not enabled:
        yield spans
        return
    from torch.profiler import ProfilerActivity, profile, schedule

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    trace_dir = folder / "profile"
    trace_dir.mkdir(parents=True, exist_ok=True)
    wait, warmup, active = TRACE_STEPS

    def on_ready(prof: Any) -> None:
        prof.export_chrome_trace(str(trace_dir / "trace.json"))

    with profile(activities=activities, schedule=schedule(wait=wait, warmup=warmup, active=active, repeat=1),
                 on_trace_ready=on_ready) as prof:
        spans.trace = prof
        try:
            yield spans
        finally:
            spans.trace = None
            folder.mkdir(parents=True, exist_ok=True)
            (folder / "profile.json").write_text(json.dumps(spans.summary(), indent=2) + "\n")


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The batch's tensors on ``device``. On CUDA from pinned (page-locked) memory with ``non_blocking``, so the
    copy overlaps with kernels already queued; on the CPU the tensors are returned as they are."""
    if device.type != "cuda":
        return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
    out = {}
    for k, v in batch.items():
        if torch.is_tensor(v):
            if v.device.type == "cpu" and not v.is_pinned():
                v = v.pin_memory()
            v = v.to(device, non_blocking=True)
        out[k] = v
    return out


class Prefetcher:
    """Collates the coming micro-batches on a background thread while the device trains (CUDA only).

    ``make(part)`` builds one micro-batch; the parts are made strictly in order, ``depth`` ahead, so what ``get``
    returns is exactly what calling ``make`` inline would give. A failure inside ``make`` is raised by ``get`` in
    the loop's thread. ``close`` stops the thread (also when the loop stops early).
    """

    def __init__(self, make: Callable[[Any], Any], parts: Sequence[Any], depth: int = 4) -> None:
        self._queue: queue.Queue = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._work, args=(make, list(parts)), daemon=True,
                                        name="toolkit-prefetch")
        self._thread.start()

    def _work(self, make: Callable[[Any], Any], parts: list[Any]) -> None:
        for part in parts:
            try:
                item: tuple[Any, BaseException | None] = (make(part), None)
            except BaseException as exc:  # handed to the loop's thread, which raises it
                item = (None, exc)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.1)
                    break
                except queue.Full:
                    continue
            if self._stop.is_set() or item[1] is not None:
                return

    def get(self, part: Any) -> Any:
        """The next micro-batch (``part`` is the one the loop expects; the thread makes them in that order)."""
        value, exc = self._queue.get()
        if exc is not None:
            raise exc
        return value

    def close(self) -> None:
        self._stop.set()
        with contextlib.suppress(queue.Empty):
            while True:
                self._queue.get_nowait()
        self._thread.join(timeout=5)


class Inline:
    """The prefetcher's interface without a thread (the CPU, and ``deterministic`` runs): ``make(part)`` when
    asked, so collation stays interleaved with the forward passes exactly as before (an augmenting collate
    draws from the same RNG as dropout)."""

    def __init__(self, make: Callable[[Any], Any]) -> None:
        self._make = make

    def get(self, part: Any) -> Any:
        return self._make(part)

    def close(self) -> None:
        return None


def pinned(batch: dict[str, Any]) -> dict[str, Any]:
    """The batch's CPU tensors in page-locked memory (what a non_blocking copy to CUDA needs to be async)."""
    return {k: v.pin_memory() if torch.is_tensor(v) and v.device.type == "cpu" else v for k, v in batch.items()}


def compile_model(model: torch.nn.Module, where: str) -> None:
    """``torch.compile`` the model in place (``Module.compile``: its state_dict keys stay as they are, so
    checkpoints of a compiled run load into an eager one and back). The graph itself is built on the first call."""
    from toolkit.errors import UserError

    if not hasattr(model, "compile"):
        raise UserError(f"{where}: train.compile = true needs torch >= 2.2 (torch {torch.__version__} is installed); "
                        f"set compile = false")
    model.compile()


def compile_error(exc: BaseException, where: str) -> Exception | None:
    """A UserError for a failure of torch.compile's graph capture or code generation (None for other errors)."""
    from toolkit.errors import UserError, first_line

    module = type(exc).__module__
    if not (module.startswith("torch._dynamo") or module.startswith("torch._inductor")):
        return None
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    why = first_line(exc, 160)
    if why.endswith(":") and len(lines) > 1:  # "backend='inductor' raised:" is followed by the cause
        why = f"{why} {lines[1][:160]}"
    return UserError(f"{where}: train.compile = true, but torch.compile failed on this model/machine "
                     f"({type(exc).__name__}: {why}); set [train] compile = false")
