"""Encoder-decoder families of other shapes than BART: T5 (relative position buckets, no biases, RMS norm, decoder
starting from the pad token) and Marian (sinusoidal positions), tiny and random, each with its own byte-level BPE
tokenizer. Their float graphs' teacher-forced logits through both graphs equal PyTorch's, and the whole INT8 flow
(compress -> export -> eval with generation timing) runs on them, the KV-cache decode included.
"""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from toolkit import onnxrt
from toolkit.config import recipe_from_dict
from toolkit.events import null_emitter
from toolkit.rundir import RunDir

_spec = importlib.util.spec_from_file_location("s2s_kit", Path(__file__).with_name("test_int8_seq2seq.py"))
kit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kit)  # the BART module's independent greedy loop and words

FAMILIES = ("bart", "t5", "marian")


def tokenizer(texts: list[str]):
    from tokenizers import (
        Tokenizer,
        decoders,
        models,
        pre_tokenizers,
        processors,
        trainers,
    )
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=320, special_tokens=["<pad>", "<s>", "</s>", "<unk>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def model(family: str, vocab: int):
    from transformers import (
        BartConfig,
        BartForConditionalGeneration,
        MarianConfig,
        MarianMTModel,
        T5Config,
        T5ForConditionalGeneration,
    )

    torch.manual_seed(0)
    layers = {"encoder_layers": 2, "decoder_layers": 2, "encoder_attention_heads": 2, "decoder_attention_heads": 2,
              "encoder_ffn_dim": 64, "decoder_ffn_dim": 64, "max_position_embeddings": 64}
    if family == "bart":
        return BartForConditionalGeneration(BartConfig(vocab_size=vocab, d_model=32, pad_token_id=0, bos_token_id=1,
                                                       eos_token_id=2, decoder_start_token_id=2, **layers))
    if family == "t5":
        return T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=32, d_kv=16, d_ff=64, num_layers=2,
                                                   num_decoder_layers=2, num_heads=2, pad_token_id=0, eos_token_id=2,
                                                   decoder_start_token_id=0))
    return MarianMTModel(MarianConfig(vocab_size=vocab, d_model=32, pad_token_id=0, eos_token_id=2,
                                      decoder_start_token_id=0, forced_eos_token_id=2, **layers))


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> tuple[Path, list[str]]:
    root = tmp_path_factory.mktemp("families")
    rng = np.random.default_rng(2)
    lines = [" ".join(rng.choice(kit.WORDS, size=int(rng.integers(4, 8)))) for _ in range(60)]
    (root / "train.src").write_text("\n".join(lines) + "\n")
    (root / "train.tgt").write_text("\n".join(" ".join(reversed(s.split())) for s in lines) + "\n")
    return root, lines


@pytest.fixture(scope="module", params=FAMILIES)
def family(request, data) -> tuple[str, Path]:
    root, lines = data
    folder = root / request.param
    tok = tokenizer(lines)
    m = model(request.param, len(tok)).eval()
    m.save_pretrained(folder)
    tok.save_pretrained(folder)
    return request.param, folder


def test_teacher_forced_logits_through_both_graphs_equal_pytorch(family, data, tmp_path):
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer

    from toolkit.export.onnx import export_onnx

    _, folder = family
    export_onnx(folder, tmp_path, "seq2seq")
    m = AutoModelForSeq2SeqLM.from_pretrained(folder).eval()
    tok = AutoTokenizer.from_pretrained(folder)
    lines = data[1][:6]
    enc = tok(lines, text_target=[" ".join(reversed(s.split())) for s in lines], padding=True, return_tensors="pt")
    labels = enc["labels"].masked_fill(enc["labels"] == tok.pad_token_id, -100)
    with torch.no_grad():  # PyTorch builds its decoder inputs from the labels itself
        want = m(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"], labels=labels).logits.numpy()
    got = onnxrt.seq2seq_logits(onnxrt.open_session(tmp_path / "encoder_model.onnx"),
                                onnxrt.open_session(tmp_path / "decoder_model_merged.onnx"),
                                {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                                 "labels": labels}, m.config.decoder_start_token_id, m.config.pad_token_id)
    valid = labels.numpy() != -100
    assert got.shape == want.shape
    np.testing.assert_allclose(got[valid], want[valid], atol=1e-4, rtol=0)


def _branches(path: Path) -> dict[str, dict[str, int]]:
    graph = onnx.load(str(path)).graph
    out = {"top": {}}
    for n in graph.node:
        out["top"][n.op_type] = out["top"].get(n.op_type, 0) + 1
        for a in n.attribute:
            if a.type == onnx.AttributeProto.GRAPH:
                out[a.name] = {}
                for m in a.g.node:
                    out[a.name][m.op_type] = out[a.name].get(m.op_type, 0) + 1
    return out


@pytest.mark.parametrize("name", ["t5", "marian"])
def test_int8_flow_on_the_family(name, data, tmp_path):
    from toolkit.compress.stage import run_compress
    from toolkit import decode_steps as gs
    from toolkit.eval.latency_generation import time_generation
    from toolkit.eval.stage import run_eval
    from toolkit.export.stage import run_export
    from toolkit.train.stage import prepare_run_dir, run_train

    root, lines = data
    folder = tmp_path / name
    tok = tokenizer(lines)
    model(name, len(tok)).save_pretrained(folder)
    tok.save_pretrained(folder)
    recipe = recipe_from_dict({
        "name": f"int8-{name}", "task": "seq2seq", "seed": 0,
        "data": {"train": [str(root / "train.src"), str(root / "train.tgt")], "split": [0.8, 0.1, 0.1],
                 "max_length": 16},
        "model": {"source": str(folder)},
        "train": {"max_steps": 2, "batch_size": 8, "lr": 1e-3, "checkpoint_every": 0, "threads": 1},
        "export": {"formats": ["onnx"]},
        "eval": {"max_new_tokens": 6, "latency": {"warmup": 1, "runs": 2, "seq_len": 8, "threads": 1,
                                                   "new_tokens": 4, "generation_runs": 1}},
        "compress": [{"method": "quantize", "name": "int8"}]}, str(tmp_path / "recipe.toml"))
    run = RunDir(tmp_path / "run")
    prepare_run_dir(recipe, run, force=True)
    run_train(recipe, run, null_emitter("train"))
    variants = run_compress(recipe, run, null_emitter("compress"))
    int8 = run.variant("int8")
    assert variants["int8"].onnx == int8 / "encoder_model.onnx"
    enc, dec = _branches(int8 / "encoder_model.onnx"), _branches(int8 / "decoder_model_merged.onnx")
    assert enc["top"].get("MatMulInteger", 0) == 12  # q, k, v, o + two FFN matrices in 2 layers
    assert dec["else_branch"].get("MatMulInteger", 0) > dec["then_branch"].get("MatMulInteger", 0) > 0
    assert variants["int8"].info["validation"]["metric"] == "perplexity"

    exported = run_export(recipe, run, null_emitter("export"))
    checks = {Path(f["path"]).name: f for f in exported["int8"] if f["format"] == "onnx"}
    assert set(checks) == {"encoder_model.onnx", "decoder_model_merged.onnx"}
    decoder, encoder = checks["decoder_model_merged.onnx"], checks["encoder_model.onnx"]
    assert decoder["verified"] is True and decoder["check"]["mode"] == "lossy", decoder
    # the encoder's output is hidden states: verify.py also scores the argmax of their features ("agreement"),
    # which flips on near-ties of a random model (Marian: 0.90 at cosine 0.99999); the cosine is what holds
    assert encoder["check"]["mode"] == "lossy" and encoder["check"]["cosine"] >= 0.98, encoder

    run_eval(recipe, run, null_emitter("eval"), variants=["int8"])
    record = json.loads((int8 / "eval.json").read_text())
    assert record["evaluated_with"] == "onnxruntime" and record["metrics"]["bleu"] is not None
    g = record["latency"]["host"]["by_runtime"]["onnxruntime"]["generation"]
    assert g["new_tokens"] == 4 and g["ttft_ms"] > 0 and g["tokens_per_s"] > 0

    # the timed decode (toolkit.decode_steps) chooses the tokens of the loop written here, on the INT8
    # graphs, cache and all
    config = json.loads((int8 / "config.json").read_text())
    prompt = [int(t) for t in tok(lines[0])["input_ids"]]
    step = gs.onnx_seq2seq_step(int8 / "encoder_model.onnx", int8 / "decoder_model_merged.onnx", 1,
                                config["decoder_start_token_id"])
    ids = np.array([prompt], np.int64)
    want = kit.greedy(int8, ids, np.ones_like(ids), config["decoder_start_token_id"], -1, config["pad_token_id"], 8,
                      None)[0, 1:]
    assert time_generation(step, prompt, 8, warmup=0, runs=1).tokens == [int(t) for t in want]
