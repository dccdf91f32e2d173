"""``python -m toolkit generate RUN_DIR --prompt TEXT``: stream a language model's (or a translator's) output to the
terminal, through the decode steps eval times (the graph's KV cache in ONNX Runtime, or PyTorch's).

Greedy by default, as eval decodes; ``--temperature`` (with ``--top-k`` / ``--top-p`` / ``--seed``) samples. The
variant is the report's pick for ``host`` unless ``--variant`` names one. Time to first token and decode tokens/s
go to stderr at the end.
"""
from __future__ import annotations

import argparse
import sys
import time

from toolkit.errors import UserError

HELP = "stream text from a run's language model or translator (greedy, or sampled)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run directory of a language-modeling or seq2seq recipe")
    p.add_argument("--prompt", required=True, help="the text to continue (seq2seq: the text to translate)")
    p.add_argument("--variant", metavar="NAME", help="the variant (default: the report's pick for host)")
    p.add_argument("--runtime", metavar="NAME", help="onnxruntime | executorch | pytorch (default: ONNX Runtime when it has one)")
    p.add_argument("--max-new-tokens", type=int, default=64, metavar="N", help="tokens to generate at most (64)")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy (default); > 0 samples")
    p.add_argument("--top-k", type=int, metavar="K", help="sample from the K likeliest tokens")
    p.add_argument("--top-p", type=float, metavar="P", help="nucleus sampling: the smallest set with mass P")
    p.add_argument("--seed", type=int, help="seed of the sampler")
    p.add_argument("--threads", type=int, metavar="N", help="runtime threads (default: this machine's usable CPUs)")


def run(args: argparse.Namespace) -> int:
    if args.max_new_tokens < 1:
        raise UserError(f"--max-new-tokens must be at least 1 (got {args.max_new_tokens})")
    if args.temperature < 0 or (args.top_k is not None and args.top_k < 1) or \
            (args.top_p is not None and not 0 < args.top_p <= 1):
        raise UserError("--temperature must be ≥ 0, --top-k ≥ 1 and --top-p in (0, 1]")
    if args.threads is not None and args.threads < 1:
        raise UserError(f"--threads must be at least 1 (got {args.threads})")
    from toolkit.serve.batcher import Stream, advance
    from toolkit.serve.model import load_served

    served = load_served(args.run_dir, args.variant, args.runtime, args.threads)
    if served.endpoint == "predict":
        raise UserError(f"{args.run_dir}: the {served.task.name} run classifies, it does not generate; classify with "
                        f"`python -m toolkit serve {args.run_dir}` (POST /v1/predict)")
    prompt = served.encode_prompt(args.prompt)
    tokens: list[int] = []
    shown = ""

    def emit(token: int | None, finish: str | None) -> None:
        nonlocal shown
        if token is None:
            return
        tokens.append(token)
        text = served.detokenize(tokens)
        sys.stdout.write(text[len(shown):])
        sys.stdout.flush()
        shown = text

    stream = Stream(prompt=list(prompt), max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                    top_k=args.top_k, top_p=args.top_p, seed=args.seed, stop_ids=set(served.stop_ids),
                    forced_first=served.forced_first, forced_last=served.forced_last, emit=emit)
    started = time.perf_counter()
    first = None
    finish = None
    while finish is None:
        finish = advance(served.step, stream)
        if first is None:
            first = time.perf_counter() - started
    total = time.perf_counter() - started
    sys.stdout.write("\n")
    sys.stdout.flush()
    if finish.startswith("error"):
        raise UserError(f"generation stopped: {finish}")
    speed = (f", decode {(stream.produced - 1) / (total - first):.1f} tokens/s" if stream.produced > 1 else "")
    print(f"[{served.variant}, {served.runtime}] {stream.produced} tokens ({finish}); time to first token "
          f"{first * 1e3:.1f} ms{speed}", file=sys.stderr)
    return 0
