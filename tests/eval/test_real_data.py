"""The eval stage on real data (../shared/data), each about a minute: a small translation model must beat copying
the source, and a small GPT must beat a unigram model — baselines computed here, independently of the eval code."""
from __future__ import annotations

import collections
import math

import pytest

from toolkit.config import recipe_from_dict
from toolkit.events import null_emitter
from toolkit.rundir import RunDir


def train_and_eval(recipe, out):
    from toolkit.eval.stage import run_eval
    from toolkit.train.stage import prepare_run_dir, run_train

    run = RunDir(out)
    prepare_run_dir(recipe, run, force=True)
    run_train(recipe, run, null_emitter("train"))
    return run, run_eval(recipe, run, null_emitter("eval"))["base"]


@pytest.mark.slow
def test_translation_model_beats_copying_the_source(shared_data, tmp_path):
    from sacrebleu.metrics import BLEU

    from toolkit.data import load_splits
    from toolkit.eval.metrics import bleu, rouge

    d = shared_data / "multi30k"
    recipe = recipe_from_dict({
        "name": "real-multi30k", "task": "seq2seq", "seed": 0,
        # 3,000 training pairs (validation carved from them), the official test set for eval
        "data": {"train": [str(d / "train.en"), str(d / "train.de")],
                 "eval": [str(d / "test_2016_flickr.en"), str(d / "test_2016_flickr.de")],
                 "limit": 3000, "max_length": 32},
        "model": {"source": "builtin:bart-tiny", "vocab_size": 1000},
        "train": {"max_steps": 300, "batch_size": 32, "lr": 3e-3, "warmup": 0.05, "checkpoint_every": 0, "threads": 1,
                  "log_every": 50},
        "eval": {"limit": 100, "max_new_tokens": 24, "latency": {"warmup": 2, "runs": 10, "seq_len": 32}},
    })
    run, record = train_and_eval(recipe, tmp_path / "run")
    m = record["metrics"]
    assert record["examples"] == 100 and record["evaluated_with"] == "pytorch"
    # the baseline: the English source offered as the German translation, scored the same way
    examples = load_splits(recipe).eval[:100]
    sources, refs = [ex["source"] for ex in examples], [ex["target"] for ex in examples]
    copy_bleu, copy_rouge = bleu(sources, refs)["bleu"], rouge(sources, refs)
    print(f"multi30k en-de, 100 test sentences: model BLEU {m['bleu']:.2f} rouge1 {m['rouge1']:.3f} rougeL "
          f"{m['rougeL']:.3f}; copying the source: BLEU {copy_bleu:.2f} rouge1 {copy_rouge['rouge1']:.3f} rougeL "
          f"{copy_rouge['rougeL']:.3f}")
    assert m["bleu"] > copy_bleu, (m["bleu"], copy_bleu)
    for key in ("rouge1", "rougeL"):
        assert m[key] > copy_rouge[key], (key, m[key], copy_rouge[key])
    # the signature is sacrebleu's own for corpus BLEU with its defaults (tokenizer 13a), one reference
    reference = BLEU()
    reference.corpus_score(sources, [refs])
    assert record["conventions"]["bleu"] == str(reference.get_signature())
    assert "stemmer=on" in record["conventions"]["rouge"]
    assert 0 <= m["rouge1"] <= 1 and 0 <= m["chrf"] <= 100
    assert record["latency"]["host"]["source"] == "measured"


@pytest.mark.slow
def test_small_gpt_beats_a_unigram_model(shared_data, tmp_path):
    from toolkit.data import load_splits
    from toolkit.models.pretrained import load_tokenizer

    recipe = recipe_from_dict({
        "name": "real-shakespeare", "task": "language-modeling", "seed": 0,
        # the first 4,000 lines; train/validation/eval carved 90/5/5 (eval = the last lines)
        "data": {"train": str(shared_data / "tinyshakespeare" / "input.txt"), "limit": 4000,
                 "split": [0.9, 0.05, 0.05], "max_length": 64},
        "model": {"source": "builtin:gpt2-tiny", "vocab_size": 1000},
        "train": {"max_steps": 300, "batch_size": 16, "lr": 2e-3, "warmup": 0.05, "dropout": 0.0,
                  "checkpoint_every": 0, "log_every": 50, "threads": 1},
        "eval": {"latency": {"warmup": 2, "runs": 10}},
    })
    run, record = train_and_eval(recipe, tmp_path / "run")
    tok = load_tokenizer(run.variant("base") / "model")
    splits = load_splits(recipe)

    def stream(examples):  # the LM task's layout: each line, then EOS
        ids = []
        for ex in examples:
            ids += tok(ex["text"], add_special_tokens=False)["input_ids"] + [tok.eos_token_id]
        return ids

    train_ids, eval_ids = stream(splits.train), stream(splits.eval)
    counts, n, vocab = collections.Counter(train_ids), len(train_ids), len(tok)
    # add-one smoothed unigram over the tokens the GPT predicts (all but the first)
    nll = -sum(math.log((counts[t] + 1) / (n + vocab)) for t in eval_ids[1:]) / (len(eval_ids) - 1)
    unigram = math.exp(nll)
    ppl = record["metrics"]["perplexity"]
    print(f"tinyshakespeare: GPT perplexity {ppl:.1f}, add-one unigram {unigram:.1f} over {len(eval_ids) - 1} tokens")
    assert record["details"]["tokens"] == len(eval_ids) - 1
    assert ppl < unigram, (ppl, unigram)
    assert record["metrics"]["loss"] == pytest.approx(math.log(ppl))
    assert "window=64, stride=32" in record["conventions"]["perplexity"]
