"""Mixed-precision training throughput on a CUDA GPU: fp32 vs bf16 vs fp16 (+ GradScaler) through this
toolkit's loop, and a plain loop at bf16 for the overhead ratio.

A MiniLM-sized BERT (6 layers, hidden 384, 12 heads; random weights: throughput does not depend on them),
synthetic token batches. Run by hand on a machine with a GPU:

    PYTHONPATH=. python benchmarks/gpu_train_throughput.py [--steps 60] [--batch 64] [--seq 128]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time

import torch


def make_model():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                     intermediate_size=1536, num_labels=2)
    return BertForSequenceClassification(cfg)


def make_data(n: int, seq: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, 30000, (n, seq), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(seq, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(n)]


def collate(items):
    return {k: torch.stack([i[k] for i in items]) for k in items[0]}


def toolkit_run(precision: str, data, steps: int, batch: int) -> float:
    from toolkit.config import recipe_from_dict
    from toolkit.events import null_emitter
    from toolkit.rundir import RunDir
    from toolkit.tasks.base import Prepared
    from toolkit.train.loop import fit

    class NoEval:
        def evaluate(self, *a, **k):
            return {}

    recipe = recipe_from_dict({"name": "gpu", "task": "text-classification", "train": {
        "max_steps": steps, "batch_size": batch, "lr": 5e-5, "checkpoint_every": 0, "log_every": 20,
        "precision": precision, "device": "cuda", "warmup": 0, "schedule": "constant"}}, "gpu.toml")
    prepared = Prepared(model=make_model(), train_set=data, val_set=[], eval_set=[], collate=collate,
                        primary_metric="loss", higher_is_better=False, save=lambda m, d: None)
    with tempfile.TemporaryDirectory() as tmp:
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        fit(recipe, NoEval(), prepared, RunDir(tmp), null_emitter())
        torch.cuda.synchronize()
        return steps * batch / (time.perf_counter() - t0)


def plain_run(data, steps: int, batch: int) -> float:
    model = make_model().cuda().train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    for s in range(steps):
        b = {k: v.cuda(non_blocking=True) for k, v in collate(data[s * batch % len(data):][:batch]).items()}
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out = model(**b)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 2
    data = make_data(args.steps * args.batch, args.seq)
    toolkit_run("bf16", data, 5, args.batch)  # warm-up (CUDA context, kernels)
    res: dict[str, list[float]] = {"fp32": [], "bf16": [], "fp16": [], "plain bf16": []}
    for _ in range(args.rounds):
        for p in ("fp32", "bf16", "fp16"):
            res[p].append(toolkit_run(p, data, args.steps, args.batch))
        res["plain bf16"].append(plain_run(data, args.steps, args.batch))
        print(json.dumps({k: round(v[-1], 1) for k, v in res.items()}), flush=True)
    med = {k: statistics.median(v) for k, v in res.items()}
    print(f"\n{torch.cuda.get_device_name()} torch {torch.__version__}; MiniLM-size BERT, batch {args.batch}, "
          f"seq {args.seq}, {args.steps} steps, {args.rounds} rounds (median samples/s)")
    for k, v in med.items():
        print(f"| {k} | {v:.0f} | x{v / med['fp32']:.2f} vs fp32 |")
    print(f"toolkit bf16 / plain bf16 = {med['bf16'] / med['plain bf16']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
