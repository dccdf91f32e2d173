"""Mixed-precision training throughput: this toolkit's loop vs a plain PyTorch loop, fp32 / bf16 / fp16, with MFU.

A MiniLM-sized BERT (6 layers, hidden 384, 12 heads, FFN 1536, vocab 30,522; random weights: throughput does not
depend on them), synthetic token batches (batch 64, seq 128 by default). Both loops use the same model, batch,
optimizer (fused AdamW, lr 5e-5, constant), gradient clipping at 1.0 and autocast (fp16 with a GradScaler); runs
alternate (toolkit fp32, plain fp32, toolkit bf16, plain bf16, ...), and the medians are reported. Each run is
timed from the end of step ``--skip`` (its work finished: the toolkit settles its log steps, the plain loop
synchronises) to the end of the last step, so setup, the first steps' allocations / compilation and the toolkit's
final checkpoint are outside the timing. MFU = 6 x MACs(seq) x samples / time / the device's peak for the precision
(``toolkit.train.mfu``: the vendors' dense figures; fp32 counts TF32 when torch allows TF32 matmuls).

One toolkit run with ``[train] profile = true`` (bf16) prints where the host time of a step goes.

    PYTHONPATH=. python benchmarks/gpu_train_throughput.py [--steps 60] [--batch 64] [--seq 128] [--rounds 3]
    PYTHONPATH=. python benchmarks/gpu_train_throughput.py --device cpu --tiny --steps 20   # a check without a GPU
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

PRECISIONS = ("fp32", "bf16", "fp16")


def make_model(tiny: bool):
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    if tiny:
        cfg = BertConfig(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=2,
                         intermediate_size=128, num_labels=2)
    else:
        cfg = BertConfig(vocab_size=30522, hidden_size=384, num_hidden_layers=6, num_attention_heads=12,
                         intermediate_size=1536, num_labels=2)
    return BertForSequenceClassification(cfg)


def make_data(n: int, seq: int, vocab: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, vocab - 1, (n, seq), generator=g)
    return [{"input_ids": ids[i], "attention_mask": torch.ones(seq, dtype=torch.long),
             "labels": torch.tensor(i % 2)} for i in range(n)]


def collate(items):
    return {k: torch.stack([i[k] for i in items]) for k in items[0]}


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def toolkit_run(precision: str, data, args, profile: bool = False, compile: bool = False) -> dict[str, Any]:
    """Samples/s of ``fit`` from step ``args.skip`` to the last; the MFU it logged; the profile summary if asked."""
    from toolkit.config import recipe_from_dict
    from toolkit.events import Emitter
    from toolkit.rundir import RunDir
    from toolkit.tasks.base import Prepared
    from toolkit.train.loop import fit

    class NoEval:
        classifies = True

        def evaluate(self, *a, **k):
            return {}

    marks: dict[int, float] = {}

    def on_event(event: dict) -> None:
        if event["kind"] == "progress" and event.get("step") in (args.skip, args.steps):
            marks[event["step"]] = time.perf_counter()

    recipe = recipe_from_dict({"name": "gpu", "task": "text-classification", "train": {
        "max_steps": args.steps, "batch_size": args.batch, "lr": 5e-5, "checkpoint_every": 0,
        "log_every": args.skip, "precision": precision, "device": args.device, "warmup": 0,
        "schedule": "constant", "profile": profile, "compile": compile}}, "gpu.toml")
    prepared = Prepared(model=make_model(args.tiny), train_set=data, val_set=[], eval_set=[], collate=collate,
                        primary_metric="loss", higher_is_better=False, save=lambda m, d: None)
    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(tmp)
        fit(recipe, NoEval(), prepared, run, Emitter(None, "bench", [on_event]).for_stage("train"))
        records = [json.loads(line) for line in run.metrics.read_text().splitlines()]
        summary = json.loads((run.train / "profile.json").read_text()) if profile else None
    logged = [r["mfu"] for r in records if "mfu" in r]
    return {"samples_per_s": (args.steps - args.skip) * args.batch / (marks[args.steps] - marks[args.skip]),
            "logged_mfu": logged[-1] if logged else None, "profile": summary}


def plain_run(precision: str, data, args) -> dict[str, Any]:
    device = args.device
    model = make_model(args.tiny).to(device).train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    scaler = torch.amp.GradScaler(device, enabled=precision == "fp16")
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    t0 = 0.0
    for s in range(args.steps):
        if s == args.skip:
            sync(device)
            t0 = time.perf_counter()
        batch = collate(data[s * args.batch % len(data):][:args.batch])
        b = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
        with torch.autocast(device, dtype=dtype or torch.float32, enabled=dtype is not None):
            out = model(**b)
        scaler.scale(out.loss).backward()
        scaler.unscale_(opt)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(opt)
        scaler.update()
        opt.zero_grad(set_to_none=True)
    sync(device)
    return {"samples_per_s": (args.steps - args.skip) * args.batch / (time.perf_counter() - t0)}


def peak_flops(device: str, precision: str) -> float | None:
    from toolkit.train.mfu import peak_flops as lookup

    if device != "cuda":
        return None
    props = torch.cuda.get_device_properties(0)
    return lookup(props.name, precision, props.multi_processor_count, torch.backends.cuda.matmul.allow_tf32)


def train_flops_per_sample(args) -> float:
    from toolkit.arch import adapter_for
    from toolkit.train.mfu import train_flops

    model = make_model(args.tiny)
    return train_flops(adapter_for(model).count_macs(model, args.seq, False), 1)


def run_train(args) -> dict[str, Any]:
    """The comparison; returns {"rows": [...], "profile": {...}, "device": ...}."""
    if args.device == "cuda" and not torch.cuda.is_available():
        print("training throughput: no CUDA device here: skipped (run with --device cpu for a CPU check)")
        return {"skipped": "no CUDA device"}
    vocab = 1000 if args.tiny else 30522
    data = make_data(max(args.steps * args.batch, args.batch), args.seq, vocab)
    precisions = [p for p in args.precisions if not (p == "fp16" and args.device == "cpu")]
    if len(precisions) < len(args.precisions):
        print("fp16 training on the CPU skipped (GradScaler + float16 autocast is a GPU path)")
    toolkit_run("bf16" if "bf16" in precisions else precisions[0], data, argparse.Namespace(**{**vars(args),
                "steps": args.skip + 2}))  # warm-up: CUDA context, kernels, allocator
    contenders = [(f"{loop} {p}", loop, p) for p in precisions for loop in ("toolkit", "plain")]
    if args.compile:
        contenders.append(("toolkit+compile bf16", "compile", "bf16"))
    results: dict[str, list[dict]] = {name: [] for name, _, _ in contenders}
    for r in range(args.rounds):
        for name, loop, p in contenders:
            if loop == "plain":
                res = plain_run(p, data, args)
            else:
                res = toolkit_run(p, data, args, compile=loop == "compile")
            results[name].append(res)
            print(f"round {r + 1} {name:22s} {res['samples_per_s']:9.1f} samples/s", flush=True)
    per_sample = train_flops_per_sample(args)
    rows = []
    for name, loop, p in contenders:
        med = statistics.median(x["samples_per_s"] for x in results[name])
        peak = peak_flops(args.device, p)
        plain = statistics.median(x["samples_per_s"] for x in results[f"plain {p}"]) if f"plain {p}" in results \
            else None
        logged = [x.get("logged_mfu") for x in results[name] if x.get("logged_mfu") is not None]
        rows.append({"loop": name, "precision": p, "samples_per_s": round(med, 1),
                     "vs_plain": round(med / plain, 3) if plain else None,
                     "mfu": round(med * per_sample / peak, 4) if peak else None,
                     "logged_mfu": round(statistics.median(logged), 4) if logged else None,
                     "rounds": [round(x["samples_per_s"], 1) for x in results[name]]})
    prof = toolkit_run("bf16" if "bf16" in precisions else precisions[0], data, args, profile=True)["profile"]
    device = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    return {"device": device, "torch": torch.__version__, "batch": args.batch, "seq": args.seq,
            "steps": args.steps, "timed_steps": args.steps - args.skip, "rounds": args.rounds,
            "flops_per_sample": per_sample, "rows": rows, "profile": prof}


def print_train(result: dict[str, Any]) -> None:
    if "rows" not in result:
        return
    print(f"\n{result['device']}, torch {result['torch']}; BERT {'tiny' if result['flops_per_sample'] < 1e9 else 'MiniLM-size'}, "
          f"batch {result['batch']}, seq {result['seq']}, {result['timed_steps']} timed steps, {result['rounds']} "
          f"rounds (median samples/s)")
    print("| loop | precision | samples/s | vs plain | MFU | MFU logged by the loop |\n|---|---|---|---|---|---|")
    for r in result["rows"]:
        fmt = lambda v, f: "-" if v is None else format(v, f)  # noqa: E731
        print(f"| {r['loop']} | {r['precision']} | {r['samples_per_s']:.1f} | {fmt(r['vs_plain'], '.3f')} | "
              f"{fmt(r['mfu'], '.1%')} | {fmt(r['logged_mfu'], '.1%')} |")
    prof = result.get("profile")
    if prof:
        print(f"\nhost time of a toolkit step ({prof['ms_per_step']:.3f} ms per step, [train] profile = true):")
        for name, s in prof["spans"].items():
            share = s["fraction_of_step"]
            print(f"  {name:12s} {s['ms_per_step']:8.4f} ms/step  {'' if share is None else f'{share:.1%}'}")


def add_arguments(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--steps", type=int, default=60)
    ap.add_argument("--skip", type=int, default=10, help="steps before the timing starts")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq", type=int, default=128)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    ap.add_argument("--precisions", nargs="+", default=list(PRECISIONS), choices=PRECISIONS)
    ap.add_argument("--compile", action="store_true", help="also time the toolkit loop with [train] compile = true")
    ap.add_argument("--tiny", action="store_true", help="a 2-layer, hidden-64 BERT (a quick check)")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(ap)
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args()
    if args.skip >= args.steps:
        ap.error("--skip must be below --steps")
    result = run_train(args)
    print_train(result)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
