"""BLEU, chrF and ROUGE: equal to sacrebleu's and rouge-score's own output, plus hand-checked cases."""
from __future__ import annotations

import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sacrebleu.metrics import BLEU, CHRF

from toolkit.errors import UserError
from toolkit.eval.metrics import bleu, chrf, rouge

HYPS = ["A man is riding a bicycle down the street.", "Two dogs are playing in the snow.",
        "The children run along the beach at sunset.", "A woman in a red coat is reading a newspaper."]
REFS = ["A man rides a bike down the street.", "Two dogs play in the snow.",
        "Children are running on the beach at sunset.", "A woman wearing a red coat reads the newspaper."]
REFS2 = ["A man cycles down the road.", "Two dogs are playing in snow.",
         "The kids run on the beach at sunset.", "A lady in a red coat is reading a paper."]


@pytest.mark.parametrize("tokenize", ["13a", "intl", "char", "none"])
def test_bleu_equals_sacrebleu(tokenize: str) -> None:
    r = bleu(HYPS, REFS, tokenize=tokenize)
    ref = BLEU(tokenize=tokenize)
    assert r["bleu"] == ref.corpus_score(HYPS, [REFS]).score
    assert r["signature"] == str(ref.get_signature())
    assert f"tok:{tokenize}" in r["signature"] and "0-100" in r["convention"]


def test_bleu_default_is_13a_and_matches_corpus_bleu() -> None:
    r = bleu(HYPS, REFS)
    assert r["bleu"] == sacrebleu.corpus_bleu(HYPS, [REFS]).score
    assert r["signature"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")


def test_bleu_multiple_references() -> None:
    r = bleu(HYPS, [[a, b] for a, b in zip(REFS, REFS2)])
    assert r["bleu"] == sacrebleu.corpus_bleu(HYPS, [REFS, REFS2]).score
    assert "nrefs:2" in r["signature"]


def test_identical_texts_give_bleu_100_and_rouge_1() -> None:
    assert bleu(REFS, REFS)["bleu"] == pytest.approx(100.0, abs=1e-9)  # sacrebleu: exp(mean log p) = 100 + 4e-14
    assert chrf(REFS, REFS)["chrf"] == pytest.approx(100.0, abs=1e-9)
    r = rouge(REFS, REFS)
    for t in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert r[t] == 1.0


def test_unknown_tokenizer_is_a_user_error() -> None:
    with pytest.raises(UserError, match="did you mean '13a'"):
        bleu(HYPS, REFS, tokenize="13")


def test_chrf_equals_sacrebleu() -> None:
    for word_order in (0, 2):
        r = chrf(HYPS, REFS, word_order=word_order)
        ref = CHRF(word_order=word_order)
        assert r["chrf"] == ref.corpus_score(HYPS, [REFS]).score
        assert r["signature"] == str(ref.get_signature())


@pytest.mark.parametrize("use_stemmer", [True, False])
def test_rouge_equals_rouge_score_mean_fmeasure(use_stemmer: bool) -> None:
    r = rouge(HYPS, REFS, use_stemmer=use_stemmer)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=use_stemmer)
    scores = [scorer.score(ref, hyp) for hyp, ref in zip(HYPS, REFS)]
    for t in ("rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert r[t] == pytest.approx(sum(s[t].fmeasure for s in scores) / len(scores), abs=1e-15)
        assert 0.0 <= r[t] <= 1.0
    assert r["use_stemmer"] is use_stemmer
    assert f"stemmer={'on' if use_stemmer else 'off'}" in r["convention"]


def test_stemming_changes_rouge() -> None:
    # "running"/"run" and "rides"/"ride" match only when stemmed
    assert rouge(["he was running"], ["he runs"], use_stemmer=True)["rouge1"] > \
        rouge(["he was running"], ["he runs"], use_stemmer=False)["rouge1"]


def test_rouge_lsum_splits_sentences_on_newlines() -> None:
    hyp = ["the cat sat on the mat\nit was happy"]
    ref = ["it was happy\nthe cat sat on the mat"]
    r = rouge(hyp, ref)
    scorer = rouge_scorer.RougeScorer(["rougeL", "rougeLsum"], use_stemmer=True)
    s = scorer.score(ref[0], hyp[0])
    assert r["rougeLsum"] == s["rougeLsum"].fmeasure == 1.0  # summary-level LCS over sentences
    assert r["rougeL"] == s["rougeL"].fmeasure < 1.0  # one sequence: order matters
    assert "newlines" in r["convention"]


def test_rouge_multiple_references_takes_the_best() -> None:
    r = rouge(HYPS, [[a, b] for a, b in zip(REFS, REFS2)])
    scorer = rouge_scorer.RougeScorer(["rouge1"], use_stemmer=True)
    want = sum(scorer.score_multi([a, b], h)["rouge1"].fmeasure for h, a, b in zip(HYPS, REFS, REFS2)) / 4
    assert r["rouge1"] == pytest.approx(want, abs=1e-15)


def test_length_mismatch_and_empty_raise() -> None:
    with pytest.raises(ValueError, match="4 hypotheses but 3 references"):
        bleu(HYPS, REFS[:3])
    with pytest.raises(ValueError, match="no examples"):
        rouge([], [])
    with pytest.raises(UserError, match="not a ROUGE type"):
        rouge(HYPS, REFS, rouge_types=("rougeX",))
