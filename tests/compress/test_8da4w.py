"""8da4w (torchao int8 dynamic activations + int4 weights) lowered to ExecuTorch with the KV cache inside the program:
the program, its cache, its perplexity and generation through every front end, refusals."""
from __future__ import annotations

import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit.config import recipe_from_dict
from toolkit.rundir import RunDir
from toolkit.session import run_session
from toolkit.variants import load_variants

pytest.importorskip("executorch", reason="8da4w needs the executorch extra")

RECIPE = {
    "name": "a8w4", "task": "language-modeling",
    "model": {"source": "builtin:llama-small", "hidden_size": 128, "layers": 2, "heads": 4, "vocab_size": 200},
    "train": {"max_steps": 60, "batch_size": 16, "lr": 3e-3, "threads": 1, "checkpoint_every": 0},
    "compress": [{"name": "8da4w", "method": "quantize", "scheme": "8da4w", "block_size": 32,
                  "max_accuracy_drop": 0.05}],
    # the text is words drawn uniformly at random, so the next token is a near-tie among ~20 words by construction:
    # next-token agreement says little here, the cosine of the logits checks the program
    "export": {"formats": ["pte"], "min_agreement": 0.3},
    "eval": {"limit": 16, "targets": ["host"],
             "latency": {"rounds": 2, "budget_s": 0, "warmup": 1, "runs": 2, "new_tokens": 6, "generation_runs": 1}},
}


def _text(path: Path) -> Path:
    rng = random.Random(1)
    words = "the cat sat on a mat and then it ran to see the dog who sat by the door".split()
    path.write_text("\n".join(" ".join(rng.choice(words) for _ in range(14)) for _ in range(400)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> RunDir:
    root = tmp_path_factory.mktemp("a8w4")
    text = _text(root / "text.txt")
    recipe = recipe_from_dict({**RECIPE, "data": {"train": str(text), "max_length": 32, "split": [0.8, 0.1, 0.1]}},
                              str(root / "recipe.toml"))
    r = RunDir(root / "run")
    run_session(recipe, r)
    return r


def _greedy(path: Path, prompt: list[int], n: int) -> list[int]:
    from toolkit.decode_steps import pte_decoder_step

    step = pte_decoder_step(path, 1)
    logits, state = step(np.array(prompt, dtype=np.int64), None)
    out = []
    for _ in range(n):
        out.append(int(np.argmax(logits)))
        logits, state = step(np.array(out[-1:], dtype=np.int64), state)
    return out


def _greedy_without_cache(path: Path, prompt: list[int], n: int) -> list[int]:
    """The same program run on the whole sequence from position 0 each step: nothing from an earlier step is read."""
    from toolkit.pte_decoder import PteDecoder

    program = PteDecoder(path)
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(np.argmax(program(np.array(seq), 0)[-1])))
    return seq[len(prompt):]


@pytest.mark.slow
def test_8da4w_program_is_4_bit_and_decodes_with_its_cache(run):
    v = load_variants(run.variants)["8da4w"]
    info = v.info
    assert v.pte is not None and v.onnx is None and not v.has_pytorch
    # every Linear of the 2 layers (q, k, v, o, gate, up, down) and the LM head: their widths divide by 32
    assert info["quantized_linears"] == 2 * 7 + 1 and info["indivisible_by_block"] == []
    # 4-bit weights with a float embedding: well under half of the float weights
    assert info["size_bytes"] < 0.5 * info["size_bytes_float"], info
    prompt = [5, 17, 9, 33, 5, 60]
    assert _greedy(v.pte, prompt, 12) == _greedy_without_cache(v.pte, prompt, 12)
    # the program's numerics against the float model: logits of a real window nearly parallel
    import torch
    from transformers import AutoModelForCausalLM

    from toolkit.pte_decoder import PteDecoder

    model = AutoModelForCausalLM.from_pretrained(run.variants / "base" / "model").eval()
    ids = np.array(prompt * 4)
    with torch.no_grad():
        ref = model(torch.from_numpy(ids)[None]).logits[0].numpy()
    got = PteDecoder(v.pte)(ids, 0)
    cos = (ref * got).sum(-1) / np.linalg.norm(ref, axis=-1) / np.linalg.norm(got, axis=-1)
    assert cos.min() > 0.98, cos


@pytest.mark.slow
def test_8da4w_is_evaluated_timed_and_verified_in_executorch(run):
    import json

    variants = load_variants(run.variants)
    base = json.loads((run.variants / "base" / "eval.json").read_text())
    q = json.loads((run.variants / "8da4w" / "eval.json").read_text())
    assert q["evaluated_with"] == "executorch"
    rise = q["metrics"]["perplexity"] / base["metrics"]["perplexity"] - 1
    assert -0.05 < rise < 0.05, (q["metrics"], base["metrics"])
    # the guard measured torchao's reference numerics; the program's own perplexity is recorded beside it
    val = variants["8da4w"].info["validation"]
    assert abs(val["variant_program"] / val["variant"] - 1) < 0.02, val
    gen = q["latency"]["host"]["by_runtime"]["executorch"]["generation"]
    assert gen["new_tokens"] == 6 and gen["tokens_per_s"] > 0 and gen["ttft_ms"] > 0
    # the report sizes an ExecuTorch-only variant by its program (it has no ONNX file)
    row = next(v for v in json.loads((run.path / "report.json").read_text())["variants"] if v["name"] == "8da4w")
    assert row["size_bytes"] == variants["8da4w"].pte.stat().st_size
    export = json.loads((run.variants / "8da4w" / "export.json").read_text())
    pte = next(f for f in export["files"] if f["format"] == "pte")
    assert pte["verified"] is True and pte["check"]["cosine"] > 0.98, pte


@pytest.mark.slow
def test_generate_streams_the_programs_greedy_tokens(run):
    from transformers import AutoTokenizer

    from toolkit.eval.generation import _prompt_ids

    tokenizer = AutoTokenizer.from_pretrained(run.variants / "base" / "model")
    prompt = "the cat sat"
    tokens = _greedy(load_variants(run.variants)["8da4w"].pte, _prompt_ids(tokenizer, prompt, None, 0), 8)
    eos = tokenizer.eos_token_id
    lines, current = [], []
    for t in tokens:  # training put EOS after every line: generate shows it as a line break
        if t == eos:
            lines.append(current)
            current = []
        else:
            current.append(t)
    expected = "\n".join(tokenizer.decode(line, skip_special_tokens=True) for line in lines + [current])
    p = subprocess.run([sys.executable, "-m", "toolkit", "generate", str(run.path), "--variant", "8da4w",
                        "--prompt", prompt, "--max-new-tokens", "8", "--threads", "1"],
                       capture_output=True, text=True, timeout=180)
    assert p.returncode == 0, p.stderr
    assert p.stdout[:-1] == expected
    assert "[8da4w, executorch]" in p.stderr


def test_a_logits_only_program_is_refused_by_generate(tmp_path):
    """A .pte without the cache (the export stage's logits-only program) cannot drive generation: one line."""
    from toolkit.errors import UserError
    from toolkit.pte_decoder import PteDecoder, is_kv_program

    fake = tmp_path / "model.pte"
    fake.write_bytes(b"not a program")
    assert not is_kv_program(fake)
    with pytest.raises(UserError, match="ExecuTorch cannot load it"):
        PteDecoder(fake)


@pytest.mark.parametrize("body, message", [
    ('task = "language-modeling"\n[data]\ntrain = "t.txt"\n[[compress]]\nmethod = "quantize"\nscheme = "8da4w"\n'
     'block_size = 16\n', "block_size = 16: scheme = '8da4w' lowers to XNNPACK"),
    ('task = "language-modeling"\n[data]\ntrain = "t.txt"\n[[compress]]\nmethod = "quantize"\nscheme = "8da4x"\n',
     "scheme = '8da4x' is not a scheme; did you mean '8da4w'?"),
])
def test_bad_8da4w_settings_exit_2_naming_the_key(tmp_path, body, message):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('name = "bad"\n' + body, encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "toolkit", "compress", str(recipe), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and message in p.stderr and len(p.stderr.strip().splitlines()) == 1, p.stderr


@pytest.mark.parametrize("body, message", [
    ('task = "image-classification"\n[data]\ntrain = "builtin:digits"\nlimit = 80\n',
     "scheme = '8da4w' exports decoder-only language models with their KV cache to ExecuTorch; for "
     "image-classification use scheme = 'pt2e'"),
])
def test_8da4w_on_a_classifier_is_refused_before_training(tmp_path, body, message):
    recipe = tmp_path / "cls.toml"
    recipe.write_text('name = "cls"\n' + body + '[train]\nmax_steps = 2\n[[compress]]\nmethod = "quantize"\n'
                      'scheme = "8da4w"\n', encoding="utf-8")
    p = subprocess.run([sys.executable, "-m", "toolkit", "run", str(recipe), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 2 and message in p.stderr, p.stderr
    assert not (tmp_path / "r" / "train").exists()


def test_a_variant_without_an_onnx_file_is_not_sized_zero():
    """export.json lists onnx as not made (no path, size 0) for a .pte-only variant: the size is the measured one."""
    from toolkit.report import _size_bytes

    export = {"files": [{"format": "onnx", "path": None, "size_bytes": 0},
                        {"format": "pte", "path": "variants/a/model.pte", "size_bytes": 1234}]}
    assert _size_bytes({"info": {"size_bytes": 1234}}, export, {"size_bytes": 1234}) == 1234
    made = {"files": [{"format": "onnx", "path": "variants/b/model.onnx", "size_bytes": 99}]}
    assert _size_bytes({"info": {}}, made, {"size_bytes": 5}) == 99
