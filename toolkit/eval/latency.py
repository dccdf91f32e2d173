"""The latency harness: measures a model the way onnxruntime_perf_test and MLPerf do.

Load (timed) → first run (timed apart: first inference = load + first run) → the rest of the warm-up
(untimed) → N timed runs, or T seconds of them, with ``time.perf_counter_ns`` around each call and nothing
else. Statistics come from numpy over the per-call times, and every result carries its conventions.

    result = benchmark("model.onnx", threads=4, batch=1, seq_len=64)
    result.to_dict()  # {"p50_ms": ..., "p90_ms": ..., "throughput": ..., "threads": 4, "runtime": "onnxruntime", ...}

Runners for each runtime live in :mod:`toolkit.eval.backends`; input building in :mod:`toolkit.eval.inputs`.
"""
from __future__ import annotations

import gc
import os
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from toolkit.errors import UserError
from toolkit.eval.backends import RUNNERS, Runner, make_runner, require_file, runtime_for
from toolkit.eval.inputs import Batches, InputSpec, real_batches, synthetic_batch
from toolkit.eval.latency_generation import GenerationTiming, time_generation

DEFAULT_WARMUP = 20  # DESIGN.md's [eval] latency defaults
DEFAULT_RUNS = 200
PERCENTILE_METHOD = "linear"  # numpy's default (Hyndman & Fan type 7), stated so results can be compared

CONVENTIONS = {
    "timer": "time.perf_counter_ns around each call only; inputs prepared before timing; gc disabled while timing",
    "percentiles": f"numpy.percentile(method='{PERCENTILE_METHOD}') over the per-call times",
    "std": "population standard deviation (ddof=0) of the per-call times",
    "throughput": "samples/s = batch / mean latency",
    "first_inference": "load (session/program creation, compile setup) + first run, measured apart from the timed runs",
    "warmup": "runs discarded before timing, the first run included",
}


@dataclass
class LatencyResult:
    """One measurement. ``to_dict()`` uses DESIGN.md's latency field names plus extras."""

    runtime: str
    threads: int
    batch: int
    seq_len: int | None
    warmup: int
    runs: int
    p50_ms: float
    p90_ms: float
    p99_ms: float
    mean_ms: float
    min_ms: float
    max_ms: float
    std_ms: float
    throughput: float
    duration_s: float
    load_ms: float
    first_run_ms: float
    first_inference_ms: float
    peak_rss_mb: float
    rss_growth_mb: float
    model_size_bytes: int | None
    model: str
    inputs: str  # "synthetic" | "real"
    input_shapes: dict[str, list[int]]
    affinity: list[int] | None = None
    target: str | None = None
    details: dict = field(default_factory=dict)  # the runner's own: providers, effective thread counts, ...
    samples_ns: np.ndarray | None = field(default=None, repr=False)

    def to_dict(self, samples: bool = False) -> dict:
        """JSON-ready dict; ``samples=True`` adds the raw per-call times in ns."""
        d = asdict(self)
        d.pop("samples_ns")
        if samples and self.samples_ns is not None:
            d["samples_ns"] = [int(x) for x in self.samples_ns]
        d["source"] = "measured"
        d["peak_rss_method"] = PEAK_RSS_METHOD
        d["conventions"] = dict(CONVENTIONS)
        return d


def summarize(samples_ns: Sequence[int] | np.ndarray) -> dict[str, float]:
    """p50/p90/p99, mean, min, max, std (ms) of per-call times given in ns."""
    ms = np.asarray(samples_ns, dtype=np.float64) / 1e6
    if ms.size == 0:
        raise ValueError("no samples")
    p50, p90, p99 = np.percentile(ms, [50, 90, 99], method=PERCENTILE_METHOD)
    return {"p50_ms": float(p50), "p90_ms": float(p90), "p99_ms": float(p99), "mean_ms": float(ms.mean()),
            "min_ms": float(ms.min()), "max_ms": float(ms.max()), "std_ms": float(ms.std())}


def time_calls(call: Callable[[Any], Any], feeds: Sequence[Any], *, runs: int | None = None,
               seconds: float | None = None) -> np.ndarray:
    """Per-call wall times (ns) of ``call(feed)``, cycling through ``feeds``.

    ``runs`` alone: exactly that many calls. ``seconds``: calls until that much time has passed (and at least
    ``runs`` calls when both are given, as MLPerf's min duration + min query count). Only the call sits
    between the two clock reads; the garbage collector is paused meanwhile, as ``timeit`` does.
    """
    if runs is None and seconds is None:
        raise ValueError("give runs or seconds")
    clock = time.perf_counter_ns
    samples: list[int] = []
    append = samples.append
    k = len(feeds)
    gc_was_enabled = gc.isenabled()
    gc.disable()
    try:
        if seconds is None:
            if k == 1:
                feed = feeds[0]
                for _ in range(runs):
                    t0 = clock()
                    call(feed)
                    append(clock() - t0)
            else:
                for i in range(runs):
                    feed = feeds[i % k]
                    t0 = clock()
                    call(feed)
                    append(clock() - t0)
        else:
            min_runs = runs or 1
            deadline = clock() + int(seconds * 1e9)
            i = 0
            while True:
                feed = feeds[i % k]
                t0 = clock()
                call(feed)
                t1 = clock()
                append(t1 - t0)
                i += 1
                if t1 >= deadline and i >= min_runs:
                    break
    finally:
        if gc_was_enabled:
            gc.enable()
    return np.asarray(samples, dtype=np.int64)


def benchmark(
    model: Any,
    *,
    runtime: str | None = None,
    threads: int | None = None,
    batch: int | None = None,
    seq_len: int | None = None,
    warmup: int = DEFAULT_WARMUP,
    runs: int | None = None,
    seconds: float | None = None,
    inputs: Mapping[str, np.ndarray] | None = None,
    seed: int = 0,
    vocab_size: int | None = None,
    affinity: Sequence[int] | None = None,
    options: Mapping[str, Any] | None = None,
    target: str | None = None,
) -> LatencyResult:
    """Measure ``model`` in one runtime, in this process.

    Args:
        model: a model file (.onnx/.ort, .pte, .pt2, .ts) or, for the torch runtimes, an ``nn.Module``.
        runtime: a name in ``RUNNERS``; default from the file extension.
        threads: intra-op threads (ORT), torch.set_num_threads, the ExecuTorch pool; default: the CPUs this
            process may use (``len(affinity)`` when given).
        batch, seq_len: sizes for dynamic axes (default 1 and 64; fixed axes keep their size). With real
            ``inputs``, ``batch`` rows per call and the samples' own sequence length.
        warmup: runs discarded before timing, the first run included (at least one is always made, as it is
            the first inference).
        runs: timed runs (default 200 when ``seconds`` is not given).
        seconds: time the model for this long instead (with ``runs`` too: at least that many runs).
        inputs: real samples, name → array with one row per sample; cut into batches and cycled. None:
            deterministic synthetic inputs from ``seed`` (token ids in [0, vocab_size), else below the
            embedding table the model shows (ONNX, torch), else 1..99).
        affinity: CPU ids to pin every thread of this process to while measuring (restored afterwards).
        options: runner options, e.g. ``{"providers": [...]}`` for onnxruntime, ``{"mode": ...}`` for
            torch-compile, ``{"input_names": [...]}`` for executorch.
        target: the target profile's name, recorded in the result.

    Raises:
        UserError: bad arguments, a missing or unreadable model, inputs that do not fit, a missing extra.
    """
    _check_args(threads=threads, batch=batch, seq_len=seq_len, warmup=warmup, runs=runs, seconds=seconds)
    if runs is None and seconds is None:
        runs = DEFAULT_RUNS
    loaded = load_contender(model, runtime=runtime, threads=threads, batch=batch, seq_len=seq_len, warmup=warmup,
                            inputs=inputs, seed=seed, vocab_size=vocab_size, affinity=affinity, options=options,
                            target=target)
    try:
        with loaded.runner.context():
            samples = time_calls(loaded.runner.call, loaded.feeds, runs=runs, seconds=seconds)
    finally:
        loaded.close()
    return loaded.result(samples)


@dataclass
class Loaded:
    """A model loaded in its runner, warmed up, its inputs prepared: ready to be timed (alone or in rounds)."""

    runner: Any
    feeds: list
    batches: Batches
    model: Any
    model_label: str
    name: str
    threads: int
    warmup: int
    load_ns: int
    first_ns: int
    import_ns: int
    rss_before: int
    affinity: list[int] | None
    target: str | None
    restore_affinity: Callable[[], None] | None = None
    details: dict = field(default_factory=dict)
    rss_growth: int = 0

    def close(self, alone: bool = True) -> None:
        """Release the runner (recording what it reports first) and undo the CPU pinning. ``alone``: this was the
        only model loaded since it was, so the memory growth until now is its own (else the growth measured when
        it was loaded and warmed up stands)."""
        if self.runner is None:
            return
        try:
            self.details = {**self.runner.info(), "import_ms": self.import_ns / 1e6}
        finally:
            self.runner.close()
            self.runner = None
            if alone:
                self.rss_growth = _rss_bytes() - self.rss_before
            if self.restore_affinity:
                self.restore_affinity()

    def result(self, samples: np.ndarray, **extra: Any) -> "LatencyResult":
        stats = summarize(samples)
        b = self.batches
        return LatencyResult(
            runtime=self.name, threads=self.threads, batch=b.batch, seq_len=b.seq_len, warmup=max(self.warmup, 1),
            runs=int(samples.size), **stats, throughput=b.batch * 1000.0 / stats["mean_ms"],
            duration_s=float(samples.sum()) / 1e9, load_ms=self.load_ns / 1e6, first_run_ms=self.first_ns / 1e6,
            first_inference_ms=(self.load_ns + self.first_ns) / 1e6, peak_rss_mb=_peak_rss_bytes() / 2**20,
            rss_growth_mb=self.rss_growth / 2**20, model_size_bytes=model_size(self.model), model=self.model_label,
            inputs=b.kind, input_shapes=b.shapes, affinity=self.affinity, target=self.target,
            details={**self.details, **extra}, samples_ns=samples)


def load_contender(model: Any, *, runtime: str | None = None, threads: int | None = None, batch: int | None = None,
                   seq_len: int | None = None, warmup: int = DEFAULT_WARMUP,
                   inputs: Mapping[str, np.ndarray] | None = None, seed: int = 0, vocab_size: int | None = None,
                   affinity: Sequence[int] | None = None, options: Mapping[str, Any] | None = None,
                   target: str | None = None) -> Loaded:
    """Load ``model`` in its runner (load timed), prepare its inputs, time the first run apart and warm it up: the
    part of :func:`benchmark` before the timed runs. ``close()`` the result when done."""
    if isinstance(model, (str, os.PathLike)):
        require_file(model)  # before the extension: a missing file is the clearer message
    name = runtime or runtime_for(model)
    model_label = str(model) if isinstance(model, (str, os.PathLike)) else type(model).__name__
    if affinity is not None:
        affinity = sorted(set(int(c) for c in affinity))
        if not affinity:
            raise UserError("affinity must name at least one CPU")
    if threads is None:
        threads = len(affinity) if affinity else _usable_cpus()
    runner = make_runner(name, threads, dict(options or {}))
    if not isinstance(model, (str, os.PathLike)) and not getattr(runner, "accepts_modules", False):
        raise UserError(f"runtime '{name}' takes a model file, not a {type(model).__name__} object")
    t0 = time.perf_counter_ns()
    runner.import_runtime(model)
    import_ns = time.perf_counter_ns() - t0
    restore_affinity = _pin(affinity) if affinity else None
    rss_before = _rss_bytes()
    try:
        t0 = time.perf_counter_ns()
        runner.load(model)
        load_ns = time.perf_counter_ns() - t0
        specs = runner.input_specs(inputs)
        if inputs is not None:
            batches = real_batches(specs, inputs, batch=batch, seq_len=seq_len, model=model_label)
        else:
            batches = synthetic_batch(specs, batch=batch, seq_len=seq_len, seed=seed, vocab_size=vocab_size,
                                      model=model_label)
        feeds = [runner.prepare(f) for f in batches.feeds]
        with runner.context():
            first_ns = _first_run(runner, feeds[0], batches, specs, model_label, vocab_size)
            for i in range(1, max(warmup, 1)):
                runner.call(feeds[i % len(feeds)])
    except BaseException:
        runner.close()
        if restore_affinity:
            restore_affinity()
        raise
    return Loaded(runner=runner, feeds=feeds, batches=batches, model=model, model_label=model_label, name=name,
                  threads=threads, warmup=warmup, load_ns=load_ns, first_ns=first_ns, import_ns=import_ns,
                  rss_before=rss_before, affinity=affinity, target=target, restore_affinity=restore_affinity,
                  rss_growth=_rss_bytes() - rss_before)


def _first_run(runner: Runner, feed: Any, batches: Batches, specs: Sequence[InputSpec], model: str,
               vocab_size: int | None) -> int:
    """The first call, timed apart; a failure here is almost always inputs the model does not take."""
    t0 = time.perf_counter_ns()
    try:
        runner.call(feed)
    except Exception as e:
        msg = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        hint = ""
        if batches.kind == "synthetic" and vocab_size is None and any(s.is_int and s.vocab is None for s in specs):
            hint = "; synthetic token ids are 1..99: if the vocabulary is smaller, pass --vocab-size"
        raise UserError(f"{model}: {runner.name} failed on the first run with {batches.kind} inputs "
                        f"{batches.shapes} ({msg}){hint}") from e
    return time.perf_counter_ns() - t0


def _check_args(**kw: Any) -> None:
    for key in ("threads", "batch", "seq_len", "runs"):
        v = kw[key]
        if v is not None and (not isinstance(v, (int, np.integer)) or v < 1):
            raise UserError(f"--{key.replace('_', '-')} must be at least 1 (got {v})")
    if kw["warmup"] is None or kw["warmup"] < 0:
        raise UserError(f"--warmup must be 0 or more (got {kw['warmup']})")
    if kw["seconds"] is not None and not kw["seconds"] > 0:
        raise UserError(f"--seconds must be more than 0 (got {kw['seconds']})")


def _usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows
        return os.cpu_count() or 1


def _pin(cpus: list[int]) -> Callable[[], None]:
    """Pin every thread of this process to ``cpus`` (threads made later inherit it); returns the undo."""
    if not hasattr(os, "sched_setaffinity"):
        raise UserError("CPU affinity needs Linux (os.sched_setaffinity)")
    import psutil

    allowed = os.sched_getaffinity(0)
    bad = [c for c in cpus if c not in allowed]
    if bad:
        raise UserError(f"CPU(s) {bad} are not available to this process; available: {sorted(allowed)}")
    before: dict[int, set[int]] = {}
    for t in psutil.Process().threads():
        try:
            before[t.id] = os.sched_getaffinity(t.id)
            os.sched_setaffinity(t.id, cpus)
        except OSError:  # the thread ended meanwhile
            pass

    def undo() -> None:
        for tid, mask in before.items():
            try:
                os.sched_setaffinity(tid, mask)
            except OSError:
                pass

    return undo


def _rss_bytes() -> int:
    import psutil

    return psutil.Process().memory_info().rss


if sys.platform.startswith("linux"):
    PEAK_RSS_METHOD = "resource.getrusage(RUSAGE_SELF).ru_maxrss: peak RSS of this process over its lifetime"
elif sys.platform == "darwin":
    PEAK_RSS_METHOD = "resource.getrusage(RUSAGE_SELF).ru_maxrss (bytes on macOS): process lifetime peak"
else:
    PEAK_RSS_METHOD = "psutil memory_info().peak_wset: process lifetime peak"


def _peak_rss_bytes() -> int:
    try:
        import resource
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB


def model_size(model: Any) -> int | None:
    """Bytes on disk: the file plus ONNX external-data files beside it (``<name>.data``, ``<name>_data``)."""
    if not isinstance(model, (str, os.PathLike)):
        return None
    p = Path(model)
    if not p.is_file():
        return None
    size = p.stat().st_size
    for extra in (p.with_name(p.name + ".data"), p.with_name(p.name + "_data")):
        if extra.is_file():
            size += extra.stat().st_size
    return size


__all__ = [
    "RUNNERS", "LatencyResult", "GenerationTiming", "benchmark", "time_calls", "summarize", "time_generation",
    "model_size", "CONVENTIONS",
]
