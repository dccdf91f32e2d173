"""INT4 weight-only quantization (MatMulNBits) of small decoders: the graph, its KV cache, its perplexity, refusals."""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from toolkit.config import recipe_from_dict
from toolkit.rundir import RunDir
from toolkit.session import run_session
from toolkit.variants import load_variants

COMMON = {"export": {"formats": ["onnx"]},
          "eval": {"limit": 16, "targets": ["host"], "max_new_tokens": 4,
                   "latency": {"rounds": 2, "budget_s": 0, "warmup": 1, "runs": 2, "new_tokens": 4,
                               "generation_runs": 1}},
          "train": {"max_steps": 40, "batch_size": 16, "lr": 3e-3, "threads": 1, "checkpoint_every": 0}}
STEPS = [{"name": "int4", "from": "base", "method": "quantize", "scheme": "int4", "max_accuracy_drop": 0.05},
         {"name": "int4-hqq", "from": "base", "method": "quantize", "scheme": "int4", "algorithm": "hqq",
          "block_size": 16, "accuracy_level": 4, "max_accuracy_drop": 0.05}]


def _text(path: Path) -> Path:
    rng = random.Random(1)
    words = "the cat sat on a mat and then it ran to see the dog who sat by the door".split()
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(14)) for _ in range(400)), encoding="utf-8")
    return path


def _llama(root: Path, text: Path) -> Path:
    from tests.families import zoo

    return zoo.build(zoo.families()["llama"], root / "llama", {"train": str(text)}, vocab=200)


@pytest.fixture(scope="module", params=["gpt2", "llama"])
def lm_run(request, tmp_path_factory) -> RunDir:
    root = tmp_path_factory.mktemp(f"int4-{request.param}")
    text = _text(root / "text.txt")
    source = "builtin:gpt2-tiny" if request.param == "gpt2" else str(_llama(root, text))
    recipe = recipe_from_dict({**COMMON, "name": f"int4-{request.param}", "task": "language-modeling",
                               "data": {"train": str(text), "max_length": 32, "split": [0.8, 0.1, 0.1]},
                               "model": {"source": source, "vocab_size": 200}, "compress": STEPS},
                              str(root / "recipe.toml"))
    run = RunDir(root / "run")
    run_session(recipe, run)
    return run


def _ops(path: Path) -> dict[str, int]:
    from toolkit.compress._shared.graphs import op_counts

    return op_counts(onnx.load(str(path), load_external_data=False))


def _weight_bytes(path: Path) -> int:
    from onnx import numpy_helper

    return sum(numpy_helper.to_array(t).nbytes for t in onnx.load(str(path)).graph.initializer)


def _greedy_with_cache(path: Path, prompt: list[int], n: int) -> list[int]:
    from toolkit.decode_steps import onnx_decoder_step

    step = onnx_decoder_step(path, 1)
    logits, state = step(np.array(prompt, dtype=np.int64), None)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits, state = step(np.array(out[-1:], dtype=np.int64), state)
    return out


def _greedy_without_cache(path: Path, prompt: list[int], n: int) -> list[int]:
    """The same graph run on the whole sequence each step with an empty cache: no state carried at all."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {i.name: i for i in session.get_inputs()}
    seq = list(prompt)
    for _ in range(n):
        ids = np.array([seq], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids)}
        if "position_ids" in inputs:
            feed["position_ids"] = np.arange(len(seq), dtype=np.int64)[None]
        for name, spec in inputs.items():
            if name.startswith("past_key_values"):
                shape = [1] + [d if isinstance(d, int) else 0 for d in spec.shape[1:]]
                feed[name] = np.zeros(shape, dtype=np.float32)
        logits = session.run(["logits"], {k: v for k, v in feed.items() if k in inputs})[0]
        seq.append(int(np.argmax(logits[0, -1])))
    return seq[len(prompt):]


def test_int4_graphs_are_4_bit_smaller_and_decode_with_their_cache(lm_run):
    variants = load_variants(lm_run.variants)
    base = variants["base"].onnx
    for name in ("int4", "int4-hqq"):
        v = variants[name]
        ops = _ops(v.onnx)
        assert ops.get("MatMulNBits", 0) >= 4, ops  # every projection of both layers and the LM head
        assert ops.get("GatherBlockQuantized", 0) >= 1  # the token embedding (GPT-2: positions too)
        graph = onnx.load(str(v.onnx), load_external_data=False).graph
        weights = {t.name for t in graph.initializer}
        assert not [n.name for n in graph.node if n.op_type in ("MatMul", "Gemm") and n.input[1] in weights]
        # at these widths the graph's structure weighs as much as its weights: compare the weights
        limit = 0.35 if name == "int4" else 0.45  # HQQ at block 16: a float scale and zero point per 16 weights
        assert _weight_bytes(v.onnx) < limit * _weight_bytes(base), (_weight_bytes(v.onnx), _weight_bytes(base))
        info = v.info
        assert info["scheme"] == "int4" and info["accuracy_level"]["chosen"] in (0, 1, 4)
        # the guard measured perplexity through the 4-bit graph: finite, and close to the float graph's
        guard = info["guard"]
        assert np.isfinite(guard["compressed"]) and guard["compressed"] < guard["baseline"] * 1.2
        prompt = [3, 7, 11, 5]
        assert _greedy_with_cache(v.onnx, prompt, 8) == _greedy_without_cache(v.onnx, prompt, 8)
    assert variants["int4-hqq"].info["accuracy_level"] == {"chosen": 4, "how": "set in the recipe"}
    report = (lm_run.path / "report.json").read_text()
    assert '"int4"' in report and '"int4-hqq"' in report


def test_the_lm_head_is_quantized_even_when_tied():
    """A tied head exported as MatMul(Transpose(embedding)) is folded to a constant the quantizer reaches."""
    from onnx import TensorProto, helper, numpy_helper

    from toolkit.compress.int4 import matmul_form

    w = np.random.default_rng(0).standard_normal((64, 32)).astype(np.float32)
    nodes = [helper.make_node("Gather", ["W", "ids"], ["h"]),
             helper.make_node("Transpose", ["W"], ["Wt"], perm=[1, 0]),
             helper.make_node("MatMul", ["h", "Wt"], ["logits"]),
             helper.make_node("Gemm", ["h2", "G", "b"], ["y"], transB=1)]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4]),
                                           helper.make_tensor_value_info("h2", TensorProto.FLOAT, [4, 32])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None),
                               helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(w, "W"), numpy_helper.from_array(w[:16], "G"),
                               numpy_helper.from_array(np.ones(16, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    import onnxruntime as ort

    feed = {"ids": np.array([[1, 5, 9, 63]]), "h2": np.ones((4, 32), np.float32)}
    before = ort.InferenceSession(model.SerializeToString()).run(None, feed)
    assert matmul_form(model) == {"gemm_rewritten": 1, "transposes_folded": 1}
    assert [n.op_type for n in model.graph.node].count("Gemm") == 0
    after = ort.InferenceSession(model.SerializeToString()).run(None, feed)
    for a, b in zip(before, after):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("step, message", [
    ({"scheme": "int4", "block_size": 24}, "block_size = 24: must be a power of two of at least 16"),
    ({"scheme": "int4", "algorithm": "awq"}, "algorithm = 'awq' is not one of rtn, hqq, gptq"),
    ({"scheme": "int4", "accuracy_level": 9}, "accuracy_level = 9"),
])
def test_bad_int4_settings_exit_2_naming_the_key(tmp_path, step, message):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('name = "bad"\ntask = "language-modeling"\n[data]\ntrain = "t.txt"\n[[compress]]\n'
                      'method = "quantize"\n' + "".join(f"{k} = {v!r}\n".replace("'", '"') for k, v in step.items()),
                      encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "toolkit", "compress", str(recipe), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


def test_int4_on_a_cnn_is_refused_before_any_work(tmp_path):
    recipe = tmp_path / "cnn.toml"
    recipe.write_text('name = "cnn"\ntask = "image-classification"\n[data]\ntrain = "builtin:digits"\nlimit = 100\n'
                      '[train]\nmax_steps = 2\n[[compress]]\nmethod = "quantize"\nscheme = "int4"\n', encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "toolkit", "run", str(recipe), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and "scheme = 'int4' is weight-only 4-bit for language models" in p.stderr, p.stderr
    assert not (tmp_path / "r" / "train").exists()  # refused before training


def test_generate_streams_the_tokens_of_evals_decode_steps(lm_run):
    """`toolkit generate` (greedy) prints what the decode step function eval times produces on the INT4 graph."""
    from transformers import AutoTokenizer

    from toolkit.eval.generation import _prompt_ids

    variants = load_variants(lm_run.variants)
    tokenizer = AutoTokenizer.from_pretrained(lm_run.variants / "base" / "model")
    prompt = "the cat sat"
    ids = _prompt_ids(tokenizer, prompt, None, 0)
    tokens = _greedy_with_cache(variants["int4"].onnx, ids, 10)
    # training put EOS after every line of the text, so generation goes through it as a line break
    eos = tokenizer.eos_token_id
    lines, current = [], []
    for t in tokens:
        if t == eos:
            lines.append(current)
            current = []
        else:
            current.append(t)
    expected = "\n".join(tokenizer.decode(line, skip_special_tokens=True) for line in lines + [current])
    p = subprocess.run([sys.executable, "-m", "toolkit", "generate", str(lm_run.path), "--variant", "int4",
                        "--prompt", prompt, "--max-new-tokens", "10", "--threads", "1"],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout[:-1] == expected  # the CLI ends the text with one newline
    assert "time to first token" in p.stderr and "[int4, onnxruntime]" in p.stderr


def test_generate_refuses_a_classifier_and_an_unknown_variant(lm_run, tmp_path):
    p = subprocess.run([sys.executable, "-m", "toolkit", "generate", str(lm_run.path), "--variant", "int9",
                        "--prompt", "x"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--variant 'int9': no such variant" in p.stderr
    recipe = tmp_path / "cls.toml"
    recipe.write_text('name = "cls"\ntask = "image-classification"\n[data]\ntrain = "builtin:digits"\nlimit = 80\n'
                      '[train]\nmax_steps = 2\nthreads = 1\ncheckpoint_every = 0\n', encoding="utf-8")
    subprocess.run([sys.executable, "-m", "toolkit", "train", str(recipe), "--out", str(tmp_path / "r"), "--quiet"],
                   check=True, capture_output=True, timeout=300)
    p = subprocess.run([sys.executable, "-m", "toolkit", "generate", str(tmp_path / "r"), "--variant", "base",
                        "--prompt", "x"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "classifies, it does not generate" in p.stderr, p.stderr


def test_int4_of_a_seq2seq_decoder_keeps_the_merged_cache(tmp_path):
    """The merged decoder (both If branches) gets 4-bit weights; the encoder stays float; translation still runs."""
    rng = random.Random(2)
    pairs = {"a": "ein", "big": "grosser", "dog": "hund", "cat": "katze", "runs": "rennt", "sleeps": "schlaeft"}
    src = [" ".join(rng.choice(list(pairs)) for _ in range(rng.randint(2, 5))) for _ in range(240)]
    (tmp_path / "train.en").write_text("\n".join(src) + "\n", encoding="utf-8")
    (tmp_path / "train.de").write_text("\n".join(" ".join(pairs[w] for w in s.split()) for s in src) + "\n",
                                       encoding="utf-8")
    recipe = recipe_from_dict({**COMMON, "name": "int4-mt", "task": "seq2seq",
                               "data": {"train": [str(tmp_path / "train.en"), str(tmp_path / "train.de")],
                                        "max_length": 16, "split": [0.8, 0.1, 0.1]},
                               "model": {"source": "builtin:bart-tiny", "vocab_size": 120},
                               "compress": [dict(STEPS[0])]}, str(tmp_path / "recipe.toml"))
    run = RunDir(tmp_path / "run")
    run_session(recipe, run)
    v = load_variants(run.variants)["int4"]
    decoder, encoder = v.path / "decoder_model_merged.onnx", v.path / "encoder_model.onnx"
    from toolkit.compress._shared.graphs import op_counts

    assert op_counts(onnx.load(str(decoder))).get("MatMulNBits", 0) >= 8  # inside both branches of the If
    assert "MatMulNBits" not in _ops(encoder) and v.info["float_graphs"] == ["encoder"]
    report = (run.path / "report.json").read_text()
    assert '"int4"' in report and '"bleu"' in report
