"""``python -m toolkit bench MODEL_FILE``: measure a model file's latency on this machine.

The runtime follows the file (.onnx/.ort → onnxruntime, .pte → executorch, .pt2/.ts → torch) unless
``--runtime`` says otherwise; ``--target`` takes the profile's threads and preferred runtime. Prints a short
table, or with ``--json`` one JSON object with DESIGN.md's latency fields (p50_ms, p90_ms, p99_ms, mean_ms,
throughput, threads, runtime) and the extras.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from types import SimpleNamespace
from typing import Any

from toolkit.errors import UserError

HELP = "measure a model file's latency (p50/p90/p99, throughput, first inference, peak memory)"

# A target's preferred runtime → the runner that loads its format here.
_TARGET_RUNTIME = {"ort-mobile": "onnxruntime"}


def add_arguments(p: argparse.ArgumentParser) -> None:
    # Numbers are checked in the harness, not by argparse, so a bad value gets one line naming the flag.
    from toolkit.eval.backends import EXTENSIONS, RUNNERS  # the registry (numpy only; no runtime imported)

    p.add_argument("model", metavar="MODEL_FILE", help=f"model file: {', '.join(EXTENSIONS)}")
    p.add_argument("--target", metavar="NAME", help="device profile whose threads and runtime to use (e.g. host)")
    p.add_argument("--runtime", metavar="NAME",
                   help=f"{' | '.join(RUNNERS)} (default: from the file extension)")
    p.add_argument("--threads", type=int, metavar="N", help="threads for the runtime (default: the target's, "
                   "else this machine's usable CPUs)")
    p.add_argument("--batch", type=int, metavar="B", help="batch size for dynamic batch axes (default 1)")
    p.add_argument("--seq-len", type=int, metavar="S", help="sequence length for dynamic axes (default 64)")
    p.add_argument("--runs", type=int, metavar="N", help="timed runs (default 200; with --seconds: at least N)")
    p.add_argument("--seconds", type=float, metavar="T", help="time runs for T seconds instead of a count")
    p.add_argument("--warmup", type=int, default=20, metavar="W", help="runs discarded first (default 20)")
    p.add_argument("--provider", metavar="EP",
                   help="ONNX Runtime execution provider: cpu | cuda | tensorrt (default cpu; cuda and tensorrt "
                        "fall back to the next provider for the nodes they cannot run, and need the gpu extra: "
                        "pip install 'edge-toolkit[gpu]'). TensorRT keeps its engines in trt_cache/ beside the model")
    p.add_argument("--affinity", metavar="CPUS", help="pin the measuring process to these CPUs, e.g. 0-3 or 0,2")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic inputs (default 0)")
    p.add_argument("--vocab-size", type=int, metavar="V",
                   help="synthetic token ids in [0, V) (default: below the model's embedding table where it shows "
                        "one, else 1..99)")
    p.add_argument("--new-tokens", type=int, metavar="N",
                   help="time generation instead: a greedy decode of N tokens (batch 1, a --seq-len-token prompt) "
                        "with the graph's KV cache; reports time to first token and tokens/s. Takes a causal LM's "
                        "model.onnx, or a seq2seq encoder_model.onnx with its decoder_model_merged.onnx beside it")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--samples", action="store_true", help="with --json: include every per-call time (ns)")


def run(args: argparse.Namespace) -> int:
    from toolkit.eval.backends import runtime_for
    from toolkit.eval.latency import benchmark

    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1 (got {args.threads})")
    threads, runtime, target_name = args.threads, args.runtime, None
    if args.target:
        target = _load_target(args.target)
        target_name = target.name
        threads = threads or target.threads
        if runtime is None:
            try:
                runtime = runtime_for(args.model)
            except UserError:
                runtime = _TARGET_RUNTIME.get(target.runtime, target.runtime)
        if target.name != "host":
            print(f"note: measured on this machine with target '{target.name}''s threads ({threads}); "
                  "measuring on the device itself comes with remote runners", file=sys.stderr)
    if args.new_tokens is not None:
        return _run_generation(args, threads or os.cpu_count() or 1, target_name)
    options: dict[str, Any] = {}
    if args.provider:
        from toolkit.onnxrt import check_providers, provider_chain

        if (runtime or runtime_for(args.model)) != "onnxruntime":
            raise UserError(f"--provider {args.provider}: execution providers are ONNX Runtime's; "
                            f"{args.model} runs in {runtime or runtime_for(args.model)}")
        check_providers(provider_chain(args.provider))  # a missing provider: one line, before loading anything
        options["provider"] = args.provider
    result = benchmark(
        args.model, runtime=runtime, threads=threads, batch=args.batch, seq_len=args.seq_len, warmup=args.warmup,
        runs=args.runs, seconds=args.seconds, affinity=_parse_cpus(args.affinity) if args.affinity else None,
        options=options, seed=args.seed, vocab_size=args.vocab_size, target=target_name,
    )
    if args.json:
        print(json.dumps(result.to_dict(samples=args.samples), indent=2))
    else:
        _print_table(result)
    return 0


def _run_generation(args: argparse.Namespace, threads: int, target_name: str | None) -> int:
    """``--new-tokens``: time to first token and tokens/s of an ONNX language model or seq2seq pair."""
    import numpy as np

    from toolkit import decode_steps as gs
    from toolkit.eval.backends import _onnx_vocab_sizes, first_line, require_file
    from toolkit.eval.latency_generation import time_generation
    from toolkit.eval.onnx_eval import read_config
    from toolkit.variants import encoder_decoder_graphs

    if args.new_tokens < 1:
        raise UserError(f"--new-tokens must be at least 1 (got {args.new_tokens})")
    path = require_file(args.model)
    if path.suffix.lower() != ".onnx":
        raise UserError(f"{path}: --new-tokens times ONNX graphs (.onnx); evaluate other formats with "
                        "`python -m toolkit eval`")
    seq_len = args.seq_len or 64
    if seq_len < 1:
        raise UserError(f"--seq-len must be at least 1 (got {seq_len})")
    vocab = args.vocab_size or _onnx_vocab_sizes(path).get("input_ids") or 100
    prompt = np.random.default_rng(args.seed).integers(1, max(vocab, 2), size=seq_len, dtype=np.int64)
    if path.name.startswith("encoder_model"):
        decoder = encoder_decoder_graphs(path.parent, path).get("decoder")
        if decoder is None:
            raise UserError(f"{path}: an encoder; generation needs decoder_model_merged.onnx beside it")
        start = read_config(path.parent).get("decoder_start_token_id")
        if not isinstance(start, int):
            raise UserError(f"{path.parent / 'config.json'}: no decoder_start_token_id; put the model's "
                            "config.json beside the graphs")
        step = gs.onnx_seq2seq_step(path, decoder, threads, start)
    else:
        step = gs.onnx_decoder_step(path, threads)
    runs = args.runs or 5
    try:
        timing = time_generation(step, prompt, args.new_tokens, warmup=1, runs=runs)
    except UserError:
        raise
    except Exception as e:  # a graph that is not a decoder (wrong inputs/outputs) fails inside onnxruntime
        raise UserError(f"{path}: cannot run it as a decoder ({first_line(e)})") from e
    result = {"model": str(path), "runtime": "onnxruntime", "threads": threads, "target": target_name,
              "seq_len": seq_len, "batch": 1, "inputs": "synthetic", "source": "measured",
              "generation": {k: v for k, v in timing.to_dict().items() if k != "tokens"}}
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        g = timing
        tps = f"{g.tokens_per_s:.1f}" if g.tokens_per_s is not None else "-"
        print(f"{path}\n  onnxruntime, {threads} thread{'s' if threads != 1 else ''}; prompt {g.prompt_tokens} "
              f"tokens, {g.new_tokens} new (greedy, EOS ignored), {g.runs} runs after 1 warm-up\n"
              f"  time to first token  {g.ttft_ms:.3f} ms\n  decode               {tps} tokens/s\n"
              f"  end to end           {g.e2e_tokens_per_s:.1f} tokens/s ({g.total_ms:.2f} ms)")
    return 0


def _load_target(name: str) -> Any:
    try:
        from toolkit.targets import load_target
    except ImportError:  # profiles not built yet: only the host is known
        if name != "host":
            raise UserError(f"unknown target '{name}'; known: host") from None
        return SimpleNamespace(name="host", threads=os.cpu_count() or 1, runtime="onnxruntime")
    return load_target(name)


def _parse_cpus(text: str) -> list[int]:
    """'0-3,6' → [0, 1, 2, 3, 6]."""
    cpus: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-")
                cpus.extend(range(int(lo), int(hi) + 1))
            elif part:
                cpus.append(int(part))
    except ValueError:
        raise UserError(f"--affinity {text}: give CPU ids like 0-3 or 0,2") from None
    if not cpus:
        raise UserError(f"--affinity {text}: give CPU ids like 0-3 or 0,2")
    return cpus


def _print_table(r: Any) -> None:
    from rich.console import Console
    from rich.table import Table

    size = f"{r.model_size_bytes / 2**20:.2f} MiB" if r.model_size_bytes is not None else "-"
    seq = f" × {r.seq_len}" if r.seq_len else ""
    table = Table(title=f"{r.model}", show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    rows = [
        ("runtime", f"{r.runtime}, {r.threads} thread{'s' if r.threads != 1 else ''}"
                    + (f", target {r.target}" if r.target else "")),
        ("inputs", f"{r.inputs}, batch {r.batch}{seq}"),
        ("runs", f"{r.runs} timed ({r.duration_s:.3g} s) after {r.warmup} warm-up"),
        ("p50 / p90 / p99", f"{r.p50_ms:.3f} / {r.p90_ms:.3f} / {r.p99_ms:.3f} ms"),
        ("mean ± std", f"{r.mean_ms:.3f} ± {r.std_ms:.3f} ms (min {r.min_ms:.3f}, max {r.max_ms:.3f})"),
        ("throughput", f"{r.throughput:.1f} samples/s"),
        ("first inference", f"{r.first_inference_ms:.1f} ms (load {r.load_ms:.1f} + first run {r.first_run_ms:.1f})"),
        ("peak RSS", f"{r.peak_rss_mb:.1f} MiB (process peak, ru_maxrss)"),
        ("model size", size),
    ]
    nodes = r.details.get("node_assignment")
    if nodes and (len(nodes) > 1 or "CPUExecutionProvider" not in nodes):
        rows.insert(1, ("providers", ", ".join(f"{ep.removesuffix('ExecutionProvider')} {f:.0%} of nodes"
                                               for ep, f in nodes.items())))
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)
