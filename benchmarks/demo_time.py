"""The demo's budget: wall time and peak memory of ``python -m toolkit run`` (the packaged demo), median of N runs.

Each run starts from an empty run directory (``--force``) in a fresh process, so it includes the imports, the
data, training, compression, export, evaluation and the report. Besides wall time it reports the CPU time
(user + system) of the run: on a machine that others load, wall time grows with their load, CPU time much less,
and on an idle machine wall time is about CPU time divided by the cores the run keeps busy. Peak memory is
reported two ways:
- ``ru_maxrss``: the largest resident set of any one process of the run (getrusage RUSAGE_CHILDREN);
- ``tree_peak``: the largest sum of RSS over the process and its children, sampled every 50 ms (psutil).

The issue's budget: ≤ 90 s wall time on 2 cores with peak RSS ≤ 2 GB.

    .venv/bin/python benchmarks/demo_time.py [--runs 3] [--cores 2] [--recipe RECIPE] [--set k=v ...] [--json]
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BUDGET_S, BUDGET_MB = 90.0, 2048.0


def _tree_rss(pid: int) -> int:
    import psutil

    try:
        proc = psutil.Process(pid)
        procs = [proc, *proc.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0
    total = 0
    for p in procs:
        try:
            total += p.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total


def one_run(cmd: list[str], cores: set[int] | None) -> dict:
    """Run ``cmd`` once; wall seconds, peak RSS (MiB) and exit code."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    before, cpu_before = usage.ru_maxrss, usage.ru_utime + usage.ru_stime
    load_before = os.getloadavg()[0]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            preexec_fn=(lambda: os.sched_setaffinity(0, cores)) if cores else None)
    peak = 0
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.05):
            peak = max(peak, _tree_rss(proc.pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    sampler.join()
    # ru_maxrss of RUSAGE_CHILDREN is the max over every waited-for descendant (KiB on Linux); it only rises.
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    maxrss, cpu = usage.ru_maxrss, usage.ru_utime + usage.ru_stime - cpu_before
    return {"wall_s": round(wall, 2), "cpu_s": round(cpu, 2), "load": round((load_before + os.getloadavg()[0]) / 2, 1),
            "ru_maxrss_mb": round(max(maxrss, before) / 1024, 1),
            "tree_peak_mb": round(peak / 2**20, 1), "exit": proc.returncode, "stdout": out, "stderr": err[-2000:]}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cores", type=int, default=2, help="pin the run to this many CPU cores (0 = no pinning)")
    ap.add_argument("--recipe", default="", help="a recipe file (default: the packaged demo)")
    ap.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    available = sorted(os.sched_getaffinity(0))
    cores = set(available[:args.cores]) if args.cores else None
    results = []
    with tempfile.TemporaryDirectory(prefix="demo-time-") as tmp:
        for i in range(args.runs):
            cmd = [sys.executable, "-m", "toolkit", "run", *([args.recipe] if args.recipe else []),
                   "--out", str(Path(tmp) / "run"), "--force", "--quiet"]
            for s in args.overrides:
                cmd += ["--set", s]
            r = one_run(cmd, cores)
            results.append(r)
            print(f"run {i + 1}: {r['wall_s']:.1f} s wall, {r['cpu_s']:.1f} s CPU (load average {r['load']}), "
                  f"peak RSS {r['ru_maxrss_mb']:.0f} MiB (one process), {r['tree_peak_mb']:.0f} MiB (process tree), "
                  f"exit {r['exit']}", file=sys.stderr)
            if r["exit"] != 0:
                print(r["stderr"], file=sys.stderr)
                return 1
        report = json.loads((Path(tmp) / "run" / "report.json").read_text())
        stages = json.loads((Path(tmp) / "run" / "manifest.json").read_text()).get("stages", {})
    summary = {
        "runs": args.runs, "cores": len(cores) if cores else len(available),
        "cpu": _cpu_name(), "wall_s_median": statistics.median(r["wall_s"] for r in results),
        "wall_s": [r["wall_s"] for r in results], "cpu_s_median": statistics.median(r["cpu_s"] for r in results),
        "cpu_s": [r["cpu_s"] for r in results], "load_average": [r["load"] for r in results],
        "peak_rss_mb_max": max(r["ru_maxrss_mb"] for r in results),
        "tree_peak_mb_max": max(r["tree_peak_mb"] for r in results),
        "budget": {"wall_s": BUDGET_S, "rss_mb": BUDGET_MB},
        "recommendation": report.get("recommendation"),
        "variants": [v["name"] for v in report.get("variants", [])],
        "last_run_stages": {k: {"seconds": v.get("seconds"), "cpu_seconds": v.get("cpu_seconds")}
                            for k, v in stages.items()},
    }
    summary["within_budget"] = (summary["wall_s_median"] <= BUDGET_S
                                and max(summary["peak_rss_mb_max"], summary["tree_peak_mb_max"]) <= BUDGET_MB)
    if args.json:
        print(json.dumps(summary, indent=2))
    else:
        print(f"demo: median {summary['wall_s_median']:.1f} s wall, {summary['cpu_s_median']:.1f} s CPU over {args.runs} "
              f"runs on {summary['cores']} cores (load average {summary['load_average']}) "
              f"({summary['cpu']}); peak RSS {summary['peak_rss_mb_max']:.0f} MiB (one process), "
              f"{summary['tree_peak_mb_max']:.0f} MiB (tree); budget ≤ {BUDGET_S:.0f} s, ≤ {BUDGET_MB:.0f} MiB: "
              f"{'met' if summary['within_budget'] else 'NOT met'}")
        print(f"variants: {', '.join(summary['variants'])}; recommendation: {summary['recommendation']}")
    return 0 if summary["within_budget"] else 1


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


if __name__ == "__main__":
    sys.exit(main())
