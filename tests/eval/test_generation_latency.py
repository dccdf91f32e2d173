"""Generation timing in each runtime (toolkit.decode_steps): the cached decode steps must choose exactly the
tokens an independent, cache-free greedy loop chooses (so the timed work is the real work), and the eval stage and
`bench --new-tokens` report time to first token and tokens/s."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.errors import UserError
from toolkit import decode_steps as gs
from toolkit.eval.latency_generation import time_generation

REPO = Path(__file__).resolve().parents[2]
PROMPT = [5, 17, 42, 8, 99, 3]
NEW = 10


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A 2-layer GPT-2 and a 2-layer BART with large random weights (so greedy tokens vary), saved and exported."""
    from transformers import BartConfig, BartForConditionalGeneration, GPT2Config, GPT2LMHeadModel

    from toolkit.export.onnx import export_onnx

    root = tmp_path_factory.mktemp("gen")
    torch.manual_seed(0)
    lm = GPT2LMHeadModel(GPT2Config(vocab_size=128, n_positions=64, n_embd=32, n_layer=2, n_head=2,
                                    initializer_range=0.5)).eval()
    s2s = BartForConditionalGeneration(BartConfig(
        vocab_size=128, d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=2,
        decoder_attention_heads=2, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=64,
        init_std=0.5, decoder_start_token_id=2, pad_token_id=1, bos_token_id=0, eos_token_id=2)).eval()
    for name, model, task in (("lm", lm, "language-modeling"), ("s2s", s2s, "seq2seq")):
        model.save_pretrained(root / name)
        export_onnx(root / name, root / name, task)
    return {"lm": (lm, root / "lm"), "s2s": (s2s, root / "s2s")}


@torch.no_grad()
def greedy_without_cache(model, prompt: list[int], n: int) -> list[int]:
    """The reference: the whole sequence through the model at every step, argmax of the last position."""
    if model.config.is_encoder_decoder:
        src, dec = torch.tensor([prompt]), [model.config.decoder_start_token_id]
        for _ in range(n):
            dec.append(int(model(input_ids=src, decoder_input_ids=torch.tensor([dec])).logits[0, -1].argmax()))
        return dec[1:]
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(model(torch.tensor([seq])).logits[0, -1].argmax()))
    return seq[len(prompt):]


def test_causal_lm_steps_choose_the_reference_tokens(models):
    model, folder = models["lm"]
    want = greedy_without_cache(model, PROMPT, NEW)
    assert len(set(want)) > 2  # a sequence that tests something
    for step in (gs.onnx_decoder_step(folder / "model.onnx", 1), gs.torch_step(model, 1)):
        g = time_generation(step, PROMPT, NEW, warmup=1, runs=2)
        assert g.tokens == want
        assert g.new_tokens == NEW and g.prompt_tokens == len(PROMPT)
        assert g.ttft_ms > 0 and g.tokens_per_s > 0 and g.total_ms >= g.ttft_ms


def test_seq2seq_steps_choose_the_reference_tokens(models):
    model, folder = models["s2s"]
    want = greedy_without_cache(model, PROMPT, NEW)
    assert len(set(want)) > 2
    onnx = gs.onnx_seq2seq_step(folder / "encoder_model.onnx", folder / "decoder_model_merged.onnx", 1,
                                model.config.decoder_start_token_id)
    for step in (onnx, gs.torch_step(model, 1)):
        assert time_generation(step, PROMPT, NEW, warmup=0, runs=2).tokens == want


def test_a_graph_without_a_cache_reruns_the_sequence(models, tmp_path):
    from optimum.exporters.onnx import main_export

    model, folder = models["lm"]
    main_export(str(folder), output=tmp_path, task="text-generation", opset=18, device="cpu",
                library_name="transformers", do_validation=False)  # no past_key_values inputs
    g = time_generation(gs.onnx_decoder_step(tmp_path / "model.onnx", 1), PROMPT, NEW, warmup=0, runs=1)
    assert g.tokens == greedy_without_cache(model, PROMPT, NEW)


def test_a_seq2seq_decoder_alone_is_a_clear_error(models):
    with pytest.raises(UserError, match="a seq2seq decoder; give its encoder_model.onnx"):
        gs.onnx_decoder_step(models["s2s"][1] / "decoder_model_merged.onnx", 1)


def bench(*args) -> subprocess.CompletedProcess:
    env = {**os.environ, "TOOLKIT_DEBUG": "0"}
    return subprocess.run([sys.executable, "-m", "toolkit", "bench", *map(str, args)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120)


def test_bench_new_tokens_reports_ttft_and_tokens_per_s(models):
    for path in (models["lm"][1] / "model.onnx", models["s2s"][1] / "encoder_model.onnx"):
        p = bench(path, "--new-tokens", 6, "--seq-len", 8, "--runs", 3, "--threads", 1, "--json")
        assert p.returncode == 0, p.stderr
        d = json.loads(p.stdout)
        g = d["generation"]
        assert (g["new_tokens"], g["prompt_tokens"], g["runs"], d["threads"]) == (6, 8, 3, 1)
        assert g["ttft_ms"] > 0 and g["tokens_per_s"] > 0
        # over an odd number of runs the median decode is one run: its rate is new_tokens over its total time
        # (with an even number, medians of rates and of times average different runs and differ under load)
        assert g["e2e_tokens_per_s"] == pytest.approx(6 * 1000 / g["total_ms"], rel=1e-6)
    p = bench(models["lm"][1] / "model.onnx", "--new-tokens", 4, "--seq-len", 8, "--runs", 1)
    assert p.returncode == 0 and "time to first token" in p.stdout and "tokens/s" in p.stdout


def test_bench_times_a_cached_decoder_as_a_prefill_without_new_tokens(models):
    """The plain latency mode feeds a KV-cache graph an empty cache: the timed call is the prompt's forward."""
    p = bench(models["lm"][1] / "model.onnx", "--seq-len", 16, "--runs", 5, "--warmup", 1, "--threads", 1, "--json")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["seq_len"] == 16


FIXTURES = REPO / "tests" / "fixtures" / "eval"


@pytest.mark.parametrize("args, message", [
    (["{lm}", "--new-tokens", "0"], "--new-tokens must be at least 1"),
    (["{s2s_decoder}", "--new-tokens", "4"], "a seq2seq decoder; give its encoder_model.onnx"),
    ([FIXTURES / "bench_garbage.pte", "--new-tokens", "4"], "--new-tokens times ONNX graphs"),
    ([FIXTURES / "bench_not_onnx.onnx", "--new-tokens", "4"], "bench_not_onnx.onnx: not an ONNX model"),
], ids=["zero", "decoder-alone", "pte", "not-onnx"])
def test_bench_new_tokens_bad_input_exits_2(models, args, message):
    subs = {"{lm}": models["lm"][1] / "model.onnx", "{s2s_decoder}": models["s2s"][1] / "decoder_model_merged.onnx"}
    p = bench(*[subs.get(a, a) for a in args])
    assert p.returncode == 2, (p.stdout, p.stderr)
    lines = p.stderr.splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in p.stderr


def test_an_empty_cache_keeps_a_symbolic_head_axis_at_the_head_size(tmp_path):
    """onnxruntime-genai's GroupQueryAttention graphs name the head axis (kv_cache_dim) and check it on an empty
    cache: only the sequence axis is 0, the head axis is the head size read beside the graph."""
    from types import SimpleNamespace

    spec = SimpleNamespace(shape=["batch_size", 3, "past_sequence_length", "kv_cache_dim"], type="tensor(float)")
    (tmp_path / "genai_config.json").write_text(json.dumps({"model": {"decoder": {"head_size": 64}}}))
    head = gs._head_size(tmp_path / "model.onnx")
    assert head == 64 and gs._empty(spec, head_size=head).shape == (1, 3, 0, 64)
    (tmp_path / "genai_config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 576, "num_attention_heads": 9}))
    assert gs._head_size(tmp_path / "model.onnx") == 64
    # optimum's graphs: the past axis is named past_sequence_length, the head axis fixed: nothing changes
    optimum = SimpleNamespace(shape=["batch_size", 2, "past_sequence_length", 16], type="tensor(float16)")
    empty = gs._empty(optimum, head_size=64)
    assert empty.shape == (1, 2, 0, 16) and empty.dtype == np.float16
