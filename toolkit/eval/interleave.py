"""Latency that holds under load: the contenders timed in interleaved rounds, the machine watched meanwhile.

Timing each model in its own block of runs lets a burst of background work (a browser, a build, another test) land
on one model and not on the others, which can reverse a ranking. Here every contender is loaded and warmed up first,
then timed in rounds — A B C, B C A, C A B … (each round a short block of calls per contender, the order rotated so
no contender always follows the same one) — so interference is spread over all of them alike. Each contender's
compared figure is the 10th percentile of its calls (``FAST_PERCENTILE``: load only adds time, so the fast calls are
the ones that had the CPU) in the quieter half of the rounds (other processes' CPU time is measured per round); the median of its round medians, with their interquartile range as the spread, says
what a user sees; p50/p90/p99 over all calls are kept beside them. While timing, the load average, the CPU time other processes take
and the CPU frequency (where readable) are recorded; when the spread is wide or other processes took CPU, more
rounds are run up to a time budget, and a figure still that noisy, or timed while other processes kept taking CPU,
is labelled unstable.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from toolkit.eval.latency import Loaded, LatencyResult, time_calls

UNSTABLE_SPREAD = 0.10
"""a figure is unstable when the IQR of its round medians is more than this fraction of their median"""
BUSY_CPUS = 0.25
"""interference: other processes took more than this many CPUs on average while timing"""
MIN_ROUNDS = 10
FAST_PERCENTILE = 10
"""the compared figure: this percentile of all timed calls. Background load only ever adds time, and on a busy
2-core machine it shifts a multi-threaded model's whole distribution, not just its tail: measured (MiniLM base vs
INT8, ONNX Runtime with 2 threads, two processes alternating busy/idle spells of 1-6 s, 4 trials each), the ratio of
medians of round medians stayed within 15 % of the quiet ratio in 2 of 4 loaded trials, the ratio of p10s in 4 of 4
(quiet: 2.18-2.25x either way)"""
CONVENTION = ("interleaved rounds: every contender of a target loaded and warmed up first, then timed in rounds "
              "(each a block of calls per contender, the order rotated every round); p10_ms = the 10th percentile "
              "of the calls of the quieter half of the rounds (those in which other processes took the least CPU; "
              "p10_rounds of them), the figure speed-ups and the recommendation compare (the model's cost when it "
              "has the CPU: load only adds time), p10_spread_ms = the interquartile range of those rounds' p10s; "
              "median_ms = median of the round medians, spread_ms = their interquartile range (what a user sees, "
              "load included); p50/p90/p99 over all timed calls; the load average, the CPU time of other processes "
              "and the CPU frequency recorded while timing; a figure whose round medians spread over 10 % of their "
              "median, or that was timed while other processes took over a quarter of a CPU (after extra rounds up "
              "to the time budget), is marked unstable")


@dataclass
class Watch:
    """What the machine did while we timed: load average, other processes' CPU, frequency."""

    start: float = field(default_factory=time.perf_counter)
    cpu0: Any = None
    own0: Any = None
    load: list[float] = field(default_factory=list)
    freq_mhz: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        import psutil

        self.cpu0, self.own0 = psutil.cpu_times(), psutil.Process().cpu_times()
        self.last = (self.start, *self._busy_ours())
        self.sample()

    @staticmethod
    def _busy_ours() -> tuple[float, float]:
        import psutil

        cpu, own = psutil.cpu_times(), psutil.Process().cpu_times()
        return cpu.user + cpu.system + getattr(cpu, "nice", 0.0), own.user + own.system

    def since_last(self) -> float:
        """CPUs other processes used since the previous call (the last round)."""
        now, (busy, ours) = time.perf_counter(), self._busy_ours()
        t0, busy0, ours0 = self.last
        self.last = (now, busy, ours)
        return max(0.0, ((busy - busy0) - (ours - ours0)) / max(now - t0, 1e-9))

    def sample(self) -> None:
        import psutil

        if hasattr(os, "getloadavg"):
            self.load.append(round(os.getloadavg()[0], 2))
        freq = psutil.cpu_freq() if hasattr(psutil, "cpu_freq") else None
        if freq is not None and freq.current:
            self.freq_mhz.append(round(float(freq.current), 1))

    def other_cpus(self) -> float:
        """CPUs other processes used on average since the start (all CPU time but ours, over the wall time)."""
        import psutil

        cpu, own = psutil.cpu_times(), psutil.Process().cpu_times()
        busy = (cpu.user + cpu.system + getattr(cpu, "nice", 0.0)) - (self.cpu0.user + self.cpu0.system +
                                                                       getattr(self.cpu0, "nice", 0.0))
        ours = (own.user + own.system) - (self.own0.user + self.own0.system)
        wall = max(time.perf_counter() - self.start, 1e-9)
        return max(0.0, (busy - ours) / wall)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"other_cpus": round(self.other_cpus(), 3), "seconds": round(
            time.perf_counter() - self.start, 3)}
        if self.load:
            out["load_average"] = [min(self.load), max(self.load)]
        if self.freq_mhz:
            out["cpu_mhz"] = [min(self.freq_mhz), max(self.freq_mhz)]
        return out


def spread(round_medians: Sequence[float]) -> tuple[float, float, float]:
    """(median, q1, q3) of the round medians (ms)."""
    a = np.asarray(round_medians, dtype=np.float64)
    q1, med, q3 = np.percentile(a, [25, 50, 75])
    return float(med), float(q1), float(q3)


def unstable(round_medians: Sequence[float]) -> bool:
    med, q1, q3 = spread(round_medians)
    return (q3 - q1) > UNSTABLE_SPREAD * med


def time_interleaved(loaded: dict[str, Loaded], runs: int, budget_s: float = 10.0, min_rounds: int = MIN_ROUNDS,
                     max_rounds: int | None = None) -> dict[str, LatencyResult]:
    """Time every loaded contender in interleaved rounds; returns each one's LatencyResult with ``p10_ms``,
    ``p10_spread_ms``, ``median_ms``, ``spread_ms``, ``rounds``, ``stable`` and the machine's ``interference`` in
    its details. Every contender is
    closed on return, also on failure.

    Args:
        loaded: name -> a contender from :func:`toolkit.eval.latency.load_contender` (warmed up).
        runs: timed calls per contender over the first ``min_rounds`` rounds (at least one call per round).
        budget_s: while any figure is unstable (or other processes took CPU), further rounds run until this many
            seconds of timing have passed in all (0: none).
        max_rounds: at most this many rounds in all (default 4 x ``min_rounds``).
    """
    names = list(loaded)
    rounds = max(1, min(min_rounds, runs))
    limit = max(rounds, max_rounds if max_rounds is not None else 4 * rounds)
    block = max(1, -(-runs // rounds))
    samples: dict[str, list[np.ndarray]] = {n: [] for n in names}
    medians: dict[str, list[float]] = {n: [] for n in names}
    others: list[float] = []  # CPUs other processes took during each round
    try:
        watch = Watch()
        started = time.perf_counter()

        def one_round(r: int) -> None:
            for i in range(len(names)):
                name = names[(r + i) % len(names)]  # rotate: nobody always follows the same contender
                c = loaded[name]
                with c.runner.context():
                    got = time_calls(c.runner.call, c.feeds, runs=block)
                samples[name].append(got)
                medians[name].append(float(np.median(got)) / 1e6)
            others.append(watch.since_last())
            watch.sample()

        done = 0
        while done < rounds:
            one_round(done)
            done += 1
        # noisy: more rounds while the budget lasts (the noise, not the models, is what varies between rounds)
        while done < limit and time.perf_counter() - started < budget_s and \
                (any(unstable(medians[n]) for n in names) or watch.other_cpus() > BUSY_CPUS):
            one_round(done)
            done += 1
        interference = watch.summary()
        loaded_machine = interference["other_cpus"] > BUSY_CPUS
    finally:
        for c in loaded.values():
            c.close(alone=False)
    # the compared figure comes from the quieter half of the rounds (those in which other processes took the least
    # CPU; all of them on a quiet machine): a load that comes and goes leaves its quiet spells there
    quiet = [i for i, o in enumerate(others) if o <= float(np.median(others)) + 0.05]
    out = {}
    for name in names:
        med, q1, q3 = spread(medians[name])
        calls = np.concatenate(samples[name])
        fast = np.concatenate([samples[name][i] for i in quiet])
        _, f1, f3 = spread([np.percentile(samples[name][i], FAST_PERCENTILE) / 1e6 for i in quiet])
        out[name] = loaded[name].result(calls, interference=interference)
        out[name].details.update(p10_ms=float(np.percentile(fast, FAST_PERCENTILE)) / 1e6, p10_spread_ms=[f1, f3],
                                 p10_rounds=len(quiet),
                                 median_ms=med, spread_ms=[q1, q3], rounds=len(medians[name]),
                                 stable=not (unstable(medians[name]) or loaded_machine), block_runs=block)
    return out
