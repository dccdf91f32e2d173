"""generate(): greedy and beam search for causal LMs and seq2seq models, tiny random models on CPU.

Batched (padded) generation must equal one-at-a-time generation, and greedy must equal a hand-written argmax
loop, so padding and prompt stripping are right.
"""
from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

from toolkit.errors import UserError
from toolkit.eval.generation import generate

WORDS = "a man dog cat runs sits on the mat street park in red blue big small".split()
SOURCES = ["a man runs", "the dog sits on the mat in the park", "a cat", "big red dog runs in the street"]


def _tokenizer(eos_only: bool = False) -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[BOS]", "[EOS]"]
    vocab = {w: i for i, w in enumerate(specials + WORDS)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if eos_only:  # GPT-2 style: no pad token
        return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]",
                                       bos_token="[BOS]")
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", eos_token="[EOS]", bos_token="[BOS]",
                                   pad_token="[PAD]")


def _gpt2() -> GPT2LMHeadModel:
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=4 + len(WORDS), n_positions=64, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=2, eos_token_id=3)
    return GPT2LMHeadModel(cfg).eval()


def _t5() -> T5ForConditionalGeneration:
    torch.manual_seed(2)
    # a larger init than T5's default, so the random model emits words rather than only EOS
    cfg = T5Config(vocab_size=4 + len(WORDS), d_model=32, d_ff=64, d_kv=16, num_layers=2, num_heads=2,
                   pad_token_id=0, eos_token_id=3, decoder_start_token_id=0, initializer_factor=5.0)
    return T5ForConditionalGeneration(cfg).eval()


def _greedy_causal(model, tok, prompt: str, n: int) -> str:
    ids = tok(prompt, return_tensors="pt")["input_ids"]
    start = ids.shape[1]
    with torch.no_grad():
        for _ in range(n):
            nxt = model(ids).logits[:, -1].argmax(-1, keepdim=True)
            ids = torch.cat([ids, nxt], dim=1)
            if nxt.item() == tok.eos_token_id:
                break
    return tok.decode(ids[0, start:], skip_special_tokens=True).strip()


def _greedy_seq2seq(model, tok, source: str, n: int) -> str:
    enc = tok(source, return_tensors="pt")["input_ids"]
    dec = torch.tensor([[model.config.decoder_start_token_id]])
    with torch.no_grad():
        for _ in range(n):
            nxt = model(input_ids=enc, decoder_input_ids=dec).logits[:, -1].argmax(-1, keepdim=True)
            dec = torch.cat([dec, nxt], dim=1)
            if nxt.item() == tok.eos_token_id:
                break
    return tok.decode(dec[0], skip_special_tokens=True).strip()


@pytest.mark.parametrize("eos_only", [False, True])
def test_causal_greedy_equals_an_argmax_loop_and_is_batch_independent(eos_only: bool) -> None:
    model, tok = _gpt2(), _tokenizer(eos_only)
    batched = generate(model, tok, SOURCES, max_new_tokens=6, batch_size=4)
    single = generate(model, tok, SOURCES, max_new_tokens=6, batch_size=1)
    assert batched == single  # left padding + attention mask change nothing
    assert batched == [_greedy_causal(model, tok, s, 6) for s in SOURCES]  # the prompt is not in the output
    assert tok.pad_token is None if eos_only else tok.pad_token == "[PAD]"  # the tokenizer is not modified
    assert any(batched)


def test_seq2seq_greedy_equals_an_argmax_loop_and_is_batch_independent() -> None:
    model, tok = _t5(), _tokenizer()
    batched = generate(model, tok, SOURCES, max_new_tokens=5, batch_size=3)
    assert batched == generate(model, tok, SOURCES, max_new_tokens=5, batch_size=1)
    assert batched == [_greedy_seq2seq(model, tok, s, 5) for s in SOURCES]
    assert len(set(batched)) > 1


@pytest.mark.parametrize("builder", [_gpt2, _t5])
def test_beam_search(builder) -> None:
    model, tok = builder(), _tokenizer()
    beams = generate(model, tok, SOURCES, max_new_tokens=5, num_beams=3, batch_size=2)
    assert len(beams) == len(SOURCES) and all(isinstance(b, str) for b in beams)
    assert beams == generate(model, tok, SOURCES, max_new_tokens=5, num_beams=3, batch_size=4)
    assert all(len(b.split()) <= 5 for b in beams)


def test_bad_arguments() -> None:
    with pytest.raises(UserError, match="max_new_tokens"):
        generate(_gpt2(), _tokenizer(), SOURCES, max_new_tokens=0)
    with pytest.raises(UserError, match="num_beams = 0"):
        generate(_gpt2(), _tokenizer(), SOURCES, max_new_tokens=2, num_beams=0)
    with pytest.raises(UserError, match="no room for a prompt"):
        generate(_gpt2(), _tokenizer(), SOURCES, max_new_tokens=64)
