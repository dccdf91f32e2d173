"""Step functions for :func:`toolkit.eval.latency_generation.time_generation`: one greedy decode step in each runtime.

A step function is ``step(new_ids, state) -> (logits, state)``: the first call gets the prompt (a causal LM) or the
source (seq2seq: the encoder runs inside that call, so it counts towards time to first token) with ``state=None``;
later calls get the one token chosen last and the state returned before (the KV cache). That is how an app on the
device generates, so time to first token and tokens/s here are what its users wait for.

- ONNX Runtime: optimum's decoder graph (``model.onnx`` with ``past_key_values.*`` in, ``present.*`` out), or a
  graph without a cache (the whole sequence is run again each step, as such a graph must be), and optimum's
  encoder + merged decoder (``use_cache_branch`` False on the first step, True after it).
- PyTorch eager: the Hugging Face model with ``use_cache=True`` (seq2seq: the encoder once, then the decoder).
- ExecuTorch: a decoder program with its KV cache inside (``scheme = "8da4w"``), prompt then one call per token.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import numpy as np

from toolkit.errors import UserError

Step = Callable[[np.ndarray, Any], tuple[np.ndarray, Any]]


def _session(path: Path, threads: int) -> Any:
    """An ORT session with the latency harness's options."""
    from toolkit import onnxrt

    return onnxrt.open_session(path, threads=threads, timing=True)


def _empty(spec: Any, batch: int = 1, head_size: int | None = None) -> np.ndarray:
    """An empty cache: length 0 along its sequence axis, fixed axes as the graph declares them. A symbolic axis that
    is not a length (the ``kv_cache_dim`` of onnxruntime-genai's GroupQueryAttention graphs) is the head size,
    which such an operator checks even on an empty cache."""
    def size(d: Any) -> int:
        if isinstance(d, int) and d > 0:
            return d
        if head_size and isinstance(d, str) and not any(k in d for k in ("seq", "len", "past", "total")):
            return head_size
        return 0
    shape = [batch] + [size(d) for d in spec.shape[1:]]
    return np.zeros(shape, dtype=np.float16 if "float16" in spec.type else np.float32)


def _head_size(path: Path) -> int | None:
    """The attention head size from the files beside a graph (genai_config.json's, or config.json's head_dim or
    hidden_size / num_attention_heads), for an empty cache's symbolic head axis."""
    import json

    folder = Path(path).parent
    try:
        genai = json.loads((folder / "genai_config.json").read_text(encoding="utf-8"))
        return int(genai["model"]["decoder"]["head_size"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    try:
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if isinstance(config.get("head_dim"), int):
        return config["head_dim"]
    hidden, heads = config.get("hidden_size", config.get("n_embd")), config.get("num_attention_heads",
                                                                               config.get("n_head"))
    return hidden // heads if isinstance(hidden, int) and isinstance(heads, int) and heads else None


def onnx_decoder_step(path: Path, threads: int) -> Step:
    """A causal LM's ONNX graph. With ``past_key_values.*`` inputs the cache is carried between steps; without,
    each step runs the whole sequence so far (what such a graph costs on a device)."""
    session = _session(path, threads)
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = [o.name for o in session.get_outputs()]
    past_names = [n for n in inputs if n.startswith("past_key_values")]
    if "encoder_hidden_states" in inputs:
        raise UserError(f"{path}: a seq2seq decoder; give its encoder_model.onnx (the decoder beside it is used)")
    if "input_ids" not in inputs:
        raise UserError(f"{path}: no input_ids input; generation timing needs a language model's graph")

    def feed(ids: np.ndarray, past: dict[str, np.ndarray], start: int) -> dict[str, np.ndarray]:
        total = start + ids.size
        f: dict[str, np.ndarray] = {"input_ids": ids.reshape(1, -1)}
        if "attention_mask" in inputs:
            f["attention_mask"] = np.ones((1, total), dtype=np.int64)
        if "position_ids" in inputs:
            f["position_ids"] = np.arange(start, total, dtype=np.int64).reshape(1, -1)
        if "token_type_ids" in inputs:
            f["token_type_ids"] = np.zeros((1, ids.size), dtype=np.int64)
        f.update(past)
        return f

    if not past_names:
        def step_full(new_ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
            seq = new_ids if state is None else np.concatenate([state, new_ids])
            logits = session.run(["logits"] if "logits" in outputs else [outputs[0]], feed(seq, {}, 0))[0]
            return logits[0, -1], seq
        return step_full

    present = {n: n.replace("past_key_values", "present", 1) for n in past_names}
    head = _head_size(path)
    missing = [p for p in present.values() if p not in outputs]
    if missing:
        raise UserError(f"{path}: the graph takes past_key_values but returns no {missing[0]}")

    def step(new_ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        past, start = state if state is not None else ({n: _empty(inputs[n], head_size=head) for n in past_names}, 0)
        got = dict(zip(outputs, session.run(outputs, feed(new_ids, past, start))))
        return got["logits"][0, -1], ({n: got[p] for n, p in present.items()}, start + new_ids.size)
    return step


def onnx_seq2seq_step(encoder: Path, decoder: Path, threads: int, decoder_start_id: int) -> Step:
    """optimum's encoder graph and (merged) decoder graph: the encoder and the first decoder step run in the first
    call, then one decoder step per token with the self-attention cache growing and the cross-attention cache
    reused."""
    enc = _session(encoder, threads)
    dec = _session(decoder, threads)
    enc_in = {i.name for i in enc.get_inputs()}
    dec_in = {i.name: i for i in dec.get_inputs()}
    dec_out = [o.name for o in dec.get_outputs()]
    past_names = [n for n in dec_in if n.startswith("past_key_values")]
    merged = "use_cache_branch" in dec_in
    if past_names and not merged:
        raise UserError(f"{decoder}: a decoder that needs a cache on every step; export the merged decoder "
                        "(python -m toolkit export) to time generation")
    present = {n: n.replace("past_key_values", "present", 1) for n in past_names}

    def step(new_ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        if state is None:
            src = new_ids.reshape(1, -1)
            mask = np.ones_like(src)
            hidden = enc.run(None, {k: v for k, v in (("input_ids", src), ("attention_mask", mask)) if k in enc_in})[0]
            dec_ids = np.array([[decoder_start_id]], dtype=np.int64)
            past = {n: _empty(dec_in[n]) for n in past_names}
            seq = dec_ids
            use_cache = False
        else:
            hidden, mask, past, seq = state
            dec_ids = new_ids.reshape(1, 1)
            seq = np.concatenate([seq, dec_ids], axis=1)
            use_cache = True
        f: dict[str, np.ndarray] = {"encoder_hidden_states": hidden, "encoder_attention_mask": mask}
        if merged:
            f["input_ids"] = dec_ids
            f["use_cache_branch"] = np.array([use_cache])
            f.update(past)
        else:  # no cache: the decoder sees every token so far
            f["input_ids"] = seq
        got = dict(zip(dec_out, dec.run(dec_out, {k: v for k, v in f.items() if k in dec_in})))
        if merged:
            # with the cache, the graph's encoder outputs are placeholders: the cross-attention cache of the first
            # step is kept, only the self-attention cache grows
            past = {n: got[p] for n, p in present.items() if not use_cache or ".encoder." not in n} | \
                {n: past[n] for n in past_names if use_cache and ".encoder." in n}
        return got["logits"][0, -1], (hidden, mask, past, seq)
    return step


def torch_step(model: Any, threads: int) -> Step:
    """A Hugging Face model in eager PyTorch with its KV cache (``use_cache=True``)."""
    import torch

    torch.set_num_threads(threads)
    model.eval()
    seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
    start_id = getattr(model.config, "decoder_start_token_id", None)
    if seq2seq and start_id is None:
        raise UserError("the seq2seq model's config has no decoder_start_token_id; generation cannot start")

    @torch.inference_mode()
    def step(new_ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        ids = torch.from_numpy(np.ascontiguousarray(new_ids)).reshape(1, -1)
        if not seq2seq:
            out = model(input_ids=ids, past_key_values=state, use_cache=True)
            return out.logits[0, -1].numpy(), out.past_key_values
        if state is None:
            encoded = model.get_encoder()(input_ids=ids)
            ids, past = torch.tensor([[start_id]]), None
        else:
            encoded, past = state
        out = model(encoder_outputs=encoded, decoder_input_ids=ids, past_key_values=past, use_cache=True)
        return out.logits[0, -1].numpy(), (encoded, out.past_key_values)
    return step


def pte_decoder_step(path: Path, threads: int) -> Step:
    """A causal LM's ExecuTorch program with its KV cache inside (``scheme = "8da4w"``): the prompt fills the
    cache from position 0, then one call per token at the next position (:class:`toolkit.pte_decoder.PteDecoder`)."""
    from toolkit.pte_decoder import PteDecoder

    decoder = PteDecoder(path, threads)

    def step(new_ids: np.ndarray, state: Any) -> tuple[np.ndarray, Any]:
        start = 0 if state is None else state
        prompt = np.asarray(new_ids, dtype=np.int64).reshape(-1)
        if state is None and prompt.size > decoder.max_seq_len:
            prompt = prompt[-decoder.max_seq_len:]  # the program's longest call: keep the prompt's end
        return decoder(prompt, start)[-1], start + prompt.size
    return step
