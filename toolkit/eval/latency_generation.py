"""Generation timing: time to first token and tokens/s of a greedy decode loop driven by any step function.

The loop is the model-agnostic part; a runtime supplies ``step_fn`` (an ONNX decoder with a KV cache, a torch
module, an ExecuTorch program), so the same numbers mean the same thing whatever runs the model.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from toolkit.errors import UserError


@dataclass
class GenerationTiming:
    """Greedy-decode timing: medians over ``runs`` timed decodes."""

    ttft_ms: float  # prompt in → first new token chosen (prefill + argmax)
    tokens_per_s: float | None  # decode speed after the first token: (new_tokens - 1) / decode time
    e2e_tokens_per_s: float  # new_tokens / total time
    total_ms: float
    new_tokens: int
    prompt_tokens: int
    runs: int
    warmup: int
    tokens: list[int]
    conventions: dict = field(default_factory=lambda: {
        "ttft": "perf_counter_ns from the prefill call to the first greedy token; median over runs",
        "tokens_per_s": "(new_tokens - 1) / time after the first token (decode only); median over runs",
        "e2e_tokens_per_s": "new_tokens / total time including prefill; median over runs",
    })

    def to_dict(self) -> dict:
        return asdict(self)


def time_generation(
    step_fn: Callable[[np.ndarray, Any], tuple[Any, Any]],
    prompt: Sequence[int] | np.ndarray,
    max_new_tokens: int,
    *,
    eos_id: int | None = None,
    warmup: int = 1,
    runs: int = 3,
) -> GenerationTiming:
    """Time a greedy decode loop driven by ``step_fn``.

    Args:
        step_fn: ``step_fn(new_ids, state) -> (logits, state)``. The first call gets the whole prompt (int64,
            shape (P,)) and ``state=None``; each later call gets only the last chosen token (shape (1,)) and
            the state it returned (a KV cache, or the full sequence for a model without one). ``logits``:
            (vocab,) or (positions, vocab); the last row is used.
        prompt: token ids of one prompt (batch 1).
        max_new_tokens: tokens to generate at most (fewer when ``eos_id`` comes).
        eos_id: stop after this token.
        warmup: untimed decodes first; runs: timed decodes (medians reported).
    """
    prompt_ids = np.asarray(prompt, dtype=np.int64).reshape(-1)
    if prompt_ids.size == 0:
        raise UserError("the prompt is empty")
    if max_new_tokens < 1 or runs < 1 or warmup < 0:
        raise UserError("max_new_tokens and runs must be at least 1, warmup 0 or more")
    clock = time.perf_counter_ns
    ttfts, decode_speeds, e2e, totals = [], [], [], []
    tokens: list[int] = []
    for r in range(warmup + runs):
        t0 = clock()
        logits, state = step_fn(prompt_ids, None)
        tok = int(np.asarray(logits).reshape(-1, np.shape(logits)[-1])[-1].argmax())
        t_first = clock()
        out = [tok]
        while len(out) < max_new_tokens and tok != eos_id:
            logits, state = step_fn(np.array([tok], dtype=np.int64), state)
            tok = int(np.asarray(logits).reshape(-1, np.shape(logits)[-1])[-1].argmax())
            out.append(tok)
        t_end = clock()
        if r < warmup:
            continue
        tokens = out
        ttfts.append((t_first - t0) / 1e6)
        totals.append((t_end - t0) / 1e6)
        e2e.append(len(out) * 1e9 / (t_end - t0))
        if len(out) > 1:
            decode_speeds.append((len(out) - 1) * 1e9 / max(t_end - t_first, 1))
    return GenerationTiming(
        ttft_ms=float(np.median(ttfts)),
        tokens_per_s=float(np.median(decode_speeds)) if decode_speeds else None,
        e2e_tokens_per_s=float(np.median(e2e)), total_ms=float(np.median(totals)),
        new_tokens=len(tokens), prompt_tokens=int(prompt_ids.size), runs=runs, warmup=warmup, tokens=tokens,
    )
