"""The GPU path in one run (issue 18): training throughput and MFU of the toolkit's loop vs a plain loop (fp32, bf16,
fp16; ``gpu_train_throughput.py``), then MiniLM FP32/FP16/INT8 latency on the CPU, CUDA and TensorRT execution
providers at batch 1 and 32, seq 64 (``gpu_infer_latency.py``). Sized to finish in a few minutes on an H100/H200;
on a machine without CUDA the training part is skipped with a message and the latency part measures the CPU
provider only (the others are reported as skipped, with what to install).

    PYTHONPATH=. python benchmarks/gpu_path.py --out runs/gpu-path            # on the GPU machine
    PYTHONPATH=. python benchmarks/gpu_path.py --quick --out /tmp/gpu-path    # a check anywhere (tiny models)

Writes OUT/gpu_path.json (everything, with the per-round figures) and prints the README tables. Needs torch with
CUDA, transformers, onnx and onnxruntime-gpu (``pip install 'edge-toolkit[gpu]'``, with the CPU onnxruntime
uninstalled) and, for TensorRT, libnvinfer (``pip install tensorrt-cu12``).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_infer_latency as infer  # noqa: E402
import gpu_train_throughput as train  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/gpu-path"))
    ap.add_argument("--quick", action="store_true", help="tiny models, few steps and runs: checks the script")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--skip-infer", action="store_true")
    ap.add_argument("--compile", action="store_true", help="also time the toolkit loop with torch.compile (bf16)")
    args = ap.parse_args()
    quick = args.quick
    t_args = argparse.Namespace(steps=20 if quick else 60, skip=5 if quick else 10, batch=16 if quick else 64,
                                seq=32 if quick else 128, rounds=1 if quick else args.rounds, device="cuda",
                                precisions=list(train.PRECISIONS), compile=args.compile, tiny=quick)
    i_args = argparse.Namespace(providers=list(infer.PROVIDERS), variants=list(infer.VARIANTS), batches=[1, 32],
                                seq=64, runs=20 if quick else 100, warmup=3 if quick else 10, threads=0, tiny=quick,
                                rounds=1 if quick else args.rounds, out=args.out / "infer")
    args.out.mkdir(parents=True, exist_ok=True)
    result: dict = {"host": platform.node(), "python": platform.python_version(), "quick": quick}
    t0 = time.perf_counter()
    if not args.skip_train:
        result["train"] = train.run_train(t_args)
        train.print_train(result["train"])
        result["train_s"] = round(time.perf_counter() - t0, 1)
    t1 = time.perf_counter()
    if not args.skip_infer:
        result["infer"] = infer.run_infer(i_args)
        infer.print_infer(result["infer"])
        result["infer_s"] = round(time.perf_counter() - t1, 1)
    (args.out / "gpu_path.json").write_text(json.dumps(result, indent=2) + "\n")
    print(f"\nwrote {args.out / 'gpu_path.json'} in {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
