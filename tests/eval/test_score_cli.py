"""``python -m toolkit score`` end to end, in a subprocess: the libraries' numbers, exit 2 with one line for bad
input (each broken input is a fixture file under tests/fixtures/eval/)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
from rouge_score import rouge_scorer
from sklearn.metrics import accuracy_score, f1_score

REPO = Path(__file__).resolve().parents[2]
FIX = REPO / "tests" / "fixtures" / "eval"


def _score(*args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "toolkit", "score", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def _lines(name: str) -> list[str]:
    return (FIX / name).read_text(encoding="utf-8").splitlines()


def _one_line_error(p: subprocess.CompletedProcess) -> str:
    assert p.returncode == 2, p.stderr
    assert p.stdout == ""
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), p.stderr
    assert "Traceback" not in p.stderr
    return lines[0]


def test_bleu_readable_line() -> None:
    p = _score("--metric", "bleu", "--pred", FIX / "hyp.txt", "--ref", FIX / "ref.txt")
    assert p.returncode == 0, p.stderr
    want = sacrebleu.corpus_bleu(_lines("hyp.txt"), [_lines("ref.txt")])
    assert p.stdout == (f"BLEU = {want.score:.2f}  (nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|"
                        f"version:{sacrebleu.__version__})\n")


def test_bleu_json_with_tokenizer() -> None:
    p = _score("--metric", "bleu", "--pred", FIX / "hyp.txt", "--ref", FIX / "ref.txt", "--json", "--tokenize", "intl")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    bleu = sacrebleu.metrics.BLEU(tokenize="intl")
    assert out["metric"] == "bleu" and out["n"] == 4
    assert out["score"] == bleu.corpus_score(_lines("hyp.txt"), [_lines("ref.txt")]).score
    assert out["signature"] == str(bleu.get_signature())


def test_several_reference_files() -> None:
    p = _score("--metric", "bleu", "--pred", FIX / "hyp.txt", "--ref", FIX / "ref.txt", FIX / "ref_alt.txt", "--json")
    out = json.loads(p.stdout)
    assert out["score"] == sacrebleu.corpus_bleu(_lines("hyp.txt"), [_lines("ref.txt"), _lines("ref_alt.txt")]).score
    assert "nrefs:2" in out["signature"]


def test_chrf_json() -> None:
    out = json.loads(_score("--metric", "chrf", "--pred", FIX / "hyp.txt", "--ref", FIX / "ref.txt", "--json").stdout)
    assert out["score"] == sacrebleu.corpus_chrf(_lines("hyp.txt"), [_lines("ref.txt")]).score
    assert out["signature"].startswith("nrefs:1|case:mixed|eff:yes|nc:6|nw:0")


def test_rouge_json_and_no_stemmer(capsys: pytest.CaptureFixture[str]) -> None:
    from toolkit.__main__ import main  # in-process: rouge-score's import is the slow part of a subprocess

    assert main(["score", "--metric", "rouge", "--pred", str(FIX / "hyp.txt"), "--ref", str(FIX / "ref.txt"),
                 "--json", "--no-stemmer"]) == 0
    out = json.loads(capsys.readouterr().out)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL", "rougeLsum"], use_stemmer=False)
    scores = [scorer.score(r, h) for h, r in zip(_lines("hyp.txt"), _lines("ref.txt"))]
    for t, v in out["score"].items():
        assert v == pytest.approx(sum(s[t].fmeasure for s in scores) / 4, abs=1e-15)
    assert out["use_stemmer"] is False and "stemmer=off" in out["convention"] and out["n"] == 4


def test_identical_files_score_100() -> None:  # ROUGE 1.0 on identical texts: test_metrics_text.py, in-process
    assert _score("--metric", "bleu", "--pred", FIX / "ref.txt", "--ref", FIX / "ref.txt").stdout.startswith(
        "BLEU = 100.00  (")


def test_rouge_readable_line() -> None:
    p = _score("--metric", "rouge", "--pred", FIX / "ref.txt", "--ref", FIX / "ref.txt")
    assert p.stdout == ("ROUGE-1 = 1.0000  ROUGE-2 = 1.0000  ROUGE-L = 1.0000  ROUGE-Lsum = 1.0000  "
                        "(rouge-score F-measure, mean over 4 lines, fractions in [0, 1], stemmer=on)\n")


@pytest.mark.parametrize("metric", ["accuracy", "f1"])
def test_label_metrics(metric: str) -> None:
    p = _score("--metric", metric, "--pred", FIX / "labels_pred.txt", "--ref", FIX / "labels_ref.txt", "--json")
    assert p.returncode == 0, p.stderr
    out = json.loads(p.stdout)
    pred, ref = _lines("labels_pred.txt"), _lines("labels_ref.txt")
    want = accuracy_score(ref, pred) if metric == "accuracy" else f1_score(ref, pred, average="macro")
    assert out["score"] == pytest.approx(want, abs=1e-15) and out["n"] == 6 and 0 <= out["score"] <= 1
    assert "sklearn" in out["convention"]


@pytest.mark.parametrize("args, expected", [
    (["--metric", "bleu", "--pred", "hyp.txt", "--ref", "ref_3_lines.txt"],
     "--pred {F}/hyp.txt has 4 lines but --ref {F}/ref_3_lines.txt has 3"),
    (["--metric", "bleu", "--pred", "empty.txt", "--ref", "ref.txt"], "--pred {F}/empty.txt is empty"),
    (["--metric", "rouge", "--pred", "hyp.txt", "--ref", "blank_lines.txt"], "--ref {F}/blank_lines.txt is empty"),
    (["--metric", "blue", "--pred", "hyp.txt", "--ref", "ref.txt"], "'blue' is not a metric; did you mean 'bleu'?"),
    (["--metric", "acc", "--pred", "hyp.txt", "--ref", "ref.txt"], "did you mean 'accuracy'?"),
    (["--metric", "bleu", "--pred", "no_such_file.txt", "--ref", "ref.txt"],
     "--pred {F}/no_such_file.txt: no such file"),
    (["--metric", "chrf", "--pred", "hyp.txt", "--ref", "not_utf8.txt"],
     "--ref {F}/not_utf8.txt: line 3 is not valid UTF-8"),
    (["--metric", "bleu", "--pred", "hyp.txt", "--ref", "ref.txt", "--tokenize", "13"], "did you mean '13a'?"),
    (["--metric", "rouge", "--pred", "hyp.txt", "--ref", "ref.txt", "--tokenize", "13a"],
     "--tokenize applies to --metric bleu only"),
    (["--metric", "accuracy", "--pred", "labels_pred.txt", "--ref", "labels_ref.txt", "labels_ref.txt"],
     "--metric accuracy takes one --ref file, got 2"),
    (["--metric", "f1", "--pred", "labels_blank_line.txt", "--ref", "labels_ref.txt"],
     "--pred {F}/labels_blank_line.txt: line 2 is blank"),
])
def test_bad_input_exits_2_with_one_line(args: list[str], expected: str) -> None:
    args = [str(FIX / a) if a.endswith(".txt") else a for a in args]
    line = _one_line_error(_score(*args))
    assert expected.format(F=FIX) in line
