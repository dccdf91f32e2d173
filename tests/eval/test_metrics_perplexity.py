"""Sliding-window perplexity: uniform logits give the vocabulary size; stride == window equals the hand-computed
non-overlapping value; overlapping windows equal the guide's loop and score every token after the first once."""
from __future__ import annotations

import math

import pytest
import torch
from transformers import GPT2Config, GPT2LMHeadModel

from toolkit.errors import UserError
from toolkit.eval.perplexity import perplexity

V = 37


def _gpt2(seed: int = 0, n_positions: int = 32) -> GPT2LMHeadModel:
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=V, n_positions=n_positions, n_embd=16, n_layer=2, n_head=2,
                     tie_word_embeddings=False)
    return GPT2LMHeadModel(cfg).eval()


def _ids(n: int, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, V, (n,), generator=torch.Generator().manual_seed(seed))


def test_uniform_logits_give_the_vocabulary_size() -> None:
    model = _gpt2()
    with torch.no_grad():
        model.lm_head.weight.zero_()  # GPT-2's head has no bias: every logit is 0
    for window, stride in [(16, 16), (16, 5), (32, 32), (8, 1)]:
        r = perplexity(model, None, _ids(70), window=window, stride=stride)
        assert r["perplexity"] == pytest.approx(V, rel=1e-4)


def test_stride_equal_to_window_is_the_non_overlapping_computation() -> None:
    model, ids, w = _gpt2(), _ids(50), 16
    nll, count = 0.0, 0
    with torch.no_grad():
        for start in range(0, len(ids), w):  # chunks 16, 16, 16, 2; each chunk's first token is not predicted
            chunk = ids[start:start + w].unsqueeze(0)
            out = model(chunk, labels=chunk)  # HF's own loss: the mean over the chunk's len - 1 predictions
            nll += out.loss.item() * (chunk.shape[1] - 1)
            count += chunk.shape[1] - 1
    r = perplexity(model, None, ids, window=w, stride=w)
    assert r["tokens"] == count == 50 - 4
    assert r["perplexity"] == pytest.approx(math.exp(nll / count), rel=1e-5)


def test_one_window_over_everything_is_the_models_loss() -> None:
    model, ids = _gpt2(), _ids(30)
    with torch.no_grad():
        loss = model(ids.unsqueeze(0), labels=ids.unsqueeze(0)).loss.item()
    r = perplexity(model, None, ids, window=32, stride=32)
    assert r["tokens"] == 29 and r["perplexity"] == pytest.approx(math.exp(loss), rel=1e-5)


def test_overlapping_windows_follow_the_guide() -> None:
    """The HF guide's loop, with the model's own .loss, weighted by the predicted tokens of each window."""
    model, ids, max_length, stride = _gpt2(), _ids(61), 16, 6
    seq_len = ids.numel()
    nll_sum, n_tokens, prev_end_loc = 0.0, 0, 0
    with torch.no_grad():
        for begin_loc in range(0, seq_len, stride):
            end_loc = min(begin_loc + max_length, seq_len)
            trg_len = end_loc - prev_end_loc
            input_ids = ids[begin_loc:end_loc].unsqueeze(0)
            target_ids = input_ids.clone()
            target_ids[:, :-trg_len] = -100
            loss = model(input_ids, labels=target_ids).loss
            predicted = int((target_ids[:, 1:] != -100).sum())  # labels are shifted inside the model
            nll_sum += loss.item() * predicted
            n_tokens += predicted
            prev_end_loc = end_loc
            if end_loc == seq_len:
                break
    r = perplexity(model, None, ids, window=max_length, stride=stride)
    assert n_tokens == seq_len - 1 == r["tokens"]  # every token after the first, once
    assert r["perplexity"] == pytest.approx(math.exp(nll_sum / n_tokens), rel=1e-5)
    assert r["convention"].startswith(f"token-weighted, window={max_length}, stride={stride}, tokenizer=none")


def test_more_context_helps_a_model_that_copies() -> None:
    """A model that predicts 'the token `period` back' is perfect once a window holds a period of context."""
    period = 5

    class Copier(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor):
            logits = torch.zeros(*input_ids.shape, V)
            logits[:, period - 1:, :] = -30.0
            nxt = input_ids[:, : input_ids.shape[1] - period + 1]  # position t predicts token t+1 = token t+1-period
            logits[:, period - 1:].scatter_(2, nxt.unsqueeze(-1), 30.0)
            return (logits,)

    ids = _ids(period).repeat(12)  # 60 tokens, periodic
    overlapping = perplexity(Copier(), None, ids, window=12, stride=4)["perplexity"]
    chunked = perplexity(Copier(), None, ids, window=12, stride=12)["perplexity"]
    assert overlapping < chunked  # overlap gives every scored token >= 8 tokens of context


def test_text_input_with_a_tokenizer_names_it() -> None:
    class CharTok:  # the tokenizer protocol perplexity needs: __call__ -> {"input_ids"}, a name
        name_or_path = "char-test"

        def __call__(self, text: str):
            return {"input_ids": [ord(c) % V for c in text]}

        def __len__(self) -> int:
            return V

    r = perplexity(_gpt2(), CharTok(), ["first text", "second text"], window=8, stride=4)
    assert r["tokens"] == len("first text\n\nsecond text") - 1
    assert "tokenizer=char-test (CharTok, vocab 37)" in r["convention"]


@pytest.mark.parametrize("kw, match", [
    ({"window": 16, "stride": 17}, "stride = 17"),
    ({"window": 16, "stride": 0}, "stride = 0"),
    ({"window": 64, "stride": 8}, "longer than the model's 32 positions"),
    ({"window": 1, "stride": 1}, "at least 2 tokens"),
])
def test_bad_window_or_stride(kw: dict, match: str) -> None:
    with pytest.raises(UserError, match=match):
        perplexity(_gpt2(), None, _ids(40), **kw)


def test_defaults_and_too_short_text() -> None:
    r = perplexity(_gpt2(), None, _ids(40))
    assert (r["window"], r["stride"]) == (32, 16)
    with pytest.raises(UserError, match="1 token"):
        perplexity(_gpt2(), None, [3], window=8, stride=8)
