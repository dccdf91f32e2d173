"""Token-weighted corpus perplexity with a strided sliding window, the method of Hugging Face's perplexity guide
(https://huggingface.co/docs/transformers/perplexity).

The corpus is one token sequence (texts joined with "\\n\\n", as the guide does). Windows of ``window`` tokens
start every ``stride`` tokens; in each window only the tokens not scored by an earlier window are targets, the
overlap before them is context only (its labels are -100). The per-window negative log-likelihoods are summed and
divided by the number of predicted tokens: a token-weighted mean, so a short last window weighs what it holds.

Counting: a causal LM predicts token t from the tokens before it, so the labels are shifted by one inside the
model and a window's first token is never predicted. The number of predicted tokens is therefore the number of
shifted labels that are not -100: ``(labels[:, 1:] != -100).sum()``. That equals the guide's
``num_valid_tokens - batch_size`` for the first window (and for every window when stride == window); for later
overlapping windows, whose first position is already masked, it is the full target length, which keeps the count
exact (every token after the first is then predicted exactly once). The NLL is summed from the logits in float32,
the same number as the guide's ``outputs.loss`` times that count.
"""
from __future__ import annotations

import inspect
import math
from typing import Any, Sequence

import torch
import torch.nn.functional as F

from toolkit.errors import UserError


def _model_positions(model: Any) -> int | None:
    cfg = getattr(model, "config", None)
    for key in ("n_positions", "max_position_embeddings", "n_ctx"):
        v = getattr(cfg, key, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


def _tokenizer_name(tokenizer: Any) -> str:
    name = getattr(tokenizer, "name_or_path", "") or ""
    desc = type(tokenizer).__name__
    if hasattr(tokenizer, "__len__"):
        desc += f", vocab {len(tokenizer)}"
    return f"{name} ({desc})" if name else desc


def _as_ids(tokenizer: Any, text_or_ids: Any) -> torch.Tensor:
    if tokenizer is None:
        ids = torch.as_tensor(text_or_ids, dtype=torch.long)
        if ids.dim() == 2 and ids.shape[0] == 1:
            ids = ids[0]
        if ids.dim() != 1:
            raise ValueError(f"token ids must be one sequence, got shape {tuple(ids.shape)}")
        return ids
    if isinstance(text_or_ids, str):
        text = text_or_ids
    elif isinstance(text_or_ids, Sequence) and all(isinstance(t, str) for t in text_or_ids):
        text = "\n\n".join(text_or_ids)  # the guide's concatenation
    else:
        raise TypeError("text_or_ids must be a string or a list of strings when a tokenizer is given")
    # a corpus is longer than model_max_length by design: HF tokenizers' warning about it is noise here
    kwargs = {"verbose": False} if "verbose" in inspect.signature(tokenizer.__call__).parameters else {}
    return torch.as_tensor(tokenizer(text, **kwargs)["input_ids"], dtype=torch.long)


@torch.no_grad()
def perplexity(model: Any, tokenizer: Any, text_or_ids: str | Sequence[str] | Sequence[int] | torch.Tensor,
               window: int | None = None, stride: int | None = None, device: torch.device | str | None = None,
               tokenizer_name: str | None = None) -> dict[str, Any]:
    """Corpus perplexity of a causal LM with a strided sliding window.

    Args:
        model: called as ``model(input_ids)`` and returning ``.logits`` (B, T, V) (or a tuple whose first item is
            the logits).
        tokenizer: the model's tokenizer, or None when ``text_or_ids`` already holds token ids.
        text_or_ids: a text, a list of texts (joined with "\\n\\n"), or token ids (with ``tokenizer=None``).
        window: tokens per forward pass; None: the model's positions (``n_positions``/``max_position_embeddings``).
        stride: how far each window moves; None: ``window // 2`` (the guide uses 512 for a 1024 window).
            ``stride == window`` scores non-overlapping chunks (each chunk's first token unpredicted).
        device: where the inputs go; None: the device of the model's parameters.
        tokenizer_name: how the convention names the tokenizer; None: its name_or_path and class.

    Returns:
        ``{"perplexity", "nll" (mean per token, nats), "tokens" (predicted), "window", "stride", "tokenizer",
        "convention": "token-weighted, window=…, stride=…, tokenizer=…"}``.

    Raises:
        UserError: a window under 2 or over the model's positions, a stride outside [1, window], a text of
            fewer than 2 tokens.
    """
    positions = _model_positions(model)
    window = int(window if window is not None else (positions or 0))
    if window < 2:
        raise UserError(f"perplexity window = {window}; it must be at least 2 tokens (set window explicitly)")
    if positions is not None and window > positions:
        raise UserError(f"perplexity window = {window} is longer than the model's {positions} positions")
    stride = int(stride if stride is not None else max(1, window // 2))
    if not 1 <= stride <= window:
        raise UserError(f"perplexity stride = {stride}; it must be between 1 and the window ({window})")
    ids = _as_ids(tokenizer, text_or_ids)
    n = int(ids.numel())
    if n < 2:
        raise UserError(f"the text has {n} token(s); perplexity needs at least 2")
    if device is None:
        param = next(iter(model.parameters()), None) if hasattr(model, "parameters") else None
        device = param.device if param is not None else torch.device("cpu")
    if tokenizer_name is None:
        tokenizer_name = _tokenizer_name(tokenizer) if tokenizer is not None else "none (token ids given)"

    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    nll_sum, count, prev_end = 0.0, 0, 0
    try:
        for begin in range(0, n, stride):
            end = min(begin + window, n)
            trg_len = end - prev_end  # the tokens no earlier window scored; may be < stride at the end
            input_ids = ids[begin:end].unsqueeze(0).to(device)  # (1, T)
            labels = input_ids.clone()
            labels[:, :-trg_len] = -100  # the overlap is context only
            out = model(input_ids)
            logits = out[0] if isinstance(out, (tuple, list)) else out.logits  # (1, T, V)
            shift_logits = logits[:, :-1, :].float()  # position t predicts token t+1
            shift_labels = labels[:, 1:]
            nll_sum += float(F.cross_entropy(shift_logits.reshape(-1, shift_logits.shape[-1]),
                                             shift_labels.reshape(-1), ignore_index=-100, reduction="sum"))
            count += int((shift_labels != -100).sum())
            prev_end = end
            if end == n:
                break
    finally:
        if hasattr(model, "train"):
            model.train(was_training)
    nll = nll_sum / count
    return {
        "perplexity": math.exp(nll),
        "nll": nll,
        "tokens": count,
        "window": window,
        "stride": stride,
        "tokenizer": tokenizer_name,
        "convention": (f"token-weighted, window={window}, stride={stride}, tokenizer={tokenizer_name}; "
                       f"exp(sum of NLL / predicted tokens), HF perplexity guide sliding window"),
    }
