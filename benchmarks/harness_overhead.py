"""Latency-harness overhead: ``toolkit.eval.latency.benchmark`` vs a bare ``session.run`` loop.

The same ONNX model (a 2-layer MLP, batch 8, 768 → 3072 → 768, GELU, exported with torch.onnx; about 1 ms
per run on one x86 core), the same input, one process. Each round runs both contenders, in alternating
order (bare first in even rounds, harness first in odd ones) so drift of the machine falls on both alike:

- bare: an ``InferenceSession`` with the harness's session options (intra-op threads, inter-op 1, all graph
  optimisations), ``warmup`` untimed runs, then ``runs`` calls each wrapped in ``time.perf_counter_ns``;
- harness: ``benchmark(model, threads=..., warmup=..., runs=...)`` (its session is created and warmed inside).

Reported: the p50 of each per round, the median over rounds, and the harness/bare ratio of the medians and
per round. The issue's target: the harness's p50 within 3 % of the bare loop's. On a busy machine single
rounds swing by ±10 % (each round has fresh sessions); more rounds steady the medians.

Also reported, free of model noise: the cost of the timing loop itself on a call that does nothing (the
harness's ``time_calls`` vs the bare loop), in ns per call.

    .venv/bin/python benchmarks/harness_overhead.py [--rounds 10] [--runs 500] [--warmup 20] [--threads 1]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from toolkit.eval.latency import benchmark, time_calls  # noqa: E402

BATCH, DIM, HIDDEN = 8, 768, 3072


def export_mlp(path: Path) -> None:
    import torch

    torch.manual_seed(0)
    mlp = torch.nn.Sequential(torch.nn.Linear(DIM, HIDDEN), torch.nn.GELU(), torch.nn.Linear(HIDDEN, DIM)).eval()
    torch.onnx.export(mlp, (torch.randn(BATCH, DIM),), str(path), dynamo=False, input_names=["x"],
                      output_names=["y"])


def bare_loop(path: Path, feed: dict, threads: int, warmup: int, runs: int) -> np.ndarray:
    """What a user would write: a session, a warm-up, perf_counter_ns around each session.run."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
    for _ in range(warmup):
        session.run(None, feed)
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter_ns()
        session.run(None, feed)
        samples.append(time.perf_counter_ns() - t0)
    return np.asarray(samples)


def noop_loop_cost(calls: int = 100_000, repeats: int = 9) -> tuple[float, float]:
    """Median ns per call of each timing loop around a function that returns at once."""

    def noop(_feed):
        return None

    bare, harness = [], []
    for _ in range(repeats):
        samples = []
        t_start = time.perf_counter_ns()
        for _ in range(calls):
            t0 = time.perf_counter_ns()
            noop(None)
            samples.append(time.perf_counter_ns() - t0)
        bare.append((time.perf_counter_ns() - t_start) / calls)
        t_start = time.perf_counter_ns()
        time_calls(noop, [None], runs=calls)
        harness.append((time.perf_counter_ns() - t_start) / calls)
    return statistics.median(bare), statistics.median(harness)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--runs", type=int, default=500)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "mlp.onnx"
        export_mlp(model)
        # the harness's own synthetic input (seed 0), so both contenders run on identical data
        from toolkit.eval.inputs import synthetic_batch
        from toolkit.eval.backends import OnnxRuntimeRunner

        runner = OnnxRuntimeRunner(args.threads)
        runner.load(model)
        feed = synthetic_batch(runner.input_specs(), batch=None, seq_len=None, seed=0).feeds[0]
        runner.close()

        bare_p50, harness_p50 = [], []
        print(f"model: MLP {DIM}->{HIDDEN}->{DIM}, batch {BATCH}, {args.threads} thread(s); "
              f"{args.rounds} rounds x {args.runs} runs after {args.warmup} warm-up; p50 = numpy median")
        print(f"{'round':>5} {'order':>14} {'bare p50 ms':>12} {'harness p50 ms':>15} {'ratio':>8}")
        for r in range(args.rounds):
            order = ("bare", "harness") if r % 2 == 0 else ("harness", "bare")
            got = {}
            for who in order:
                if who == "bare":
                    got[who] = float(np.percentile(bare_loop(model, feed, args.threads, args.warmup, args.runs) / 1e6,
                                                   50))
                else:
                    res = benchmark(model, threads=args.threads, warmup=args.warmup, runs=args.runs)
                    got[who] = res.p50_ms
            bare_p50.append(got["bare"])
            harness_p50.append(got["harness"])
            print(f"{r:>5} {'/'.join(order):>14} {got['bare']:>12.4f} {got['harness']:>15.4f} "
                  f"{got['harness'] / got['bare']:>8.4f}")
        b, h = statistics.median(bare_p50), statistics.median(harness_p50)
        per_round = statistics.median(hh / bb for hh, bb in zip(harness_p50, bare_p50))
        print(f"median p50: bare {b:.4f} ms, harness {h:.4f} ms; harness/bare = {h / b:.4f} "
              f"({(h / b - 1) * 100:+.2f} %); median of per-round ratios {per_round:.4f}")
        verdict = "within" if abs(h / b - 1) <= 0.03 else "OUTSIDE"
        print(f"target |overhead| <= 3 %: {verdict}")
    bare_ns, harness_ns = noop_loop_cost()
    print(f"timing-loop cost on a no-op call (median of 9 x 100k calls): bare {bare_ns:.0f} ns, "
          f"harness {harness_ns:.0f} ns per call")
    return 0


if __name__ == "__main__":
    sys.exit(main())
