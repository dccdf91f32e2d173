"""Every text recipe in recipes/ end to end (`python -m toolkit run RECIPE`) on small slices of the real data in
../shared/data: train → compress → export → eval → report, about a minute each."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.resources import recipes_dir

# One training thread: these models are small, and on a shared machine more threads mostly wait on each other.
COMMON = ["train.threads=1", "eval.targets=[\"host\", \"raspberry-pi-4\"]", "eval.latency.warmup=2",
          "eval.latency.runs=10", "export.formats=[\"onnx\", \"ort\"]", "train.checkpoint_every=0"]


def _session(recipe: str, out: Path, settings: list[str]) -> dict:
    cmd = [sys.executable, "-m", "toolkit", "run", str(recipes_dir() / recipe), "--out", str(out), "--quiet"]
    for s in COMMON + settings:
        cmd += ["--set", s]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"report: {out / 'report.md'}" in p.stdout
    return json.loads((out / "report.json").read_text())


def _check(report: dict, variants: list[str], metric: str) -> None:
    assert [v["name"] for v in report["variants"]] == variants
    for v in report["variants"]:
        assert isinstance(v["metrics"].get(metric), float), (v["name"], v["metrics"])
        assert v["latency"]["host"]["source"] == "measured"
        if v.get("evaluated_with") != "executorch":  # the estimator reads ONNX graphs; a .pte-only variant has none
            assert v["latency"]["raspberry-pi-4"]["source"] == "estimated"
        assert v["latency"]["host"]["p50_ms"] > 0
    assert set(report["recommendation"]) == {"host", "raspberry-pi-4"}
    assert report["main_metric"]["name"] == metric


@pytest.mark.slow
def test_text_classification_sst2(shared_data, tmp_path):
    report = _session("text-classification.toml", tmp_path / "run", [
        f"data.train={shared_data / 'sst2' / 'train.tsv'}", f"data.eval={shared_data / 'sst2' / 'test.tsv'}",
        "data.limit=3000", "train.max_steps=150", "train.batch_size=32", "train.lr=1e-3", "eval.limit=300"])
    _check(report, ["base", "int8", "student", "pruned", "pruned-int8"], "accuracy")  # the recipe's own [[compress]] steps
    base = report["variants"][0]["metrics"]["accuracy"]
    assert base > 0.55, f"150 steps on 3,000 SST-2 sentences should beat chance (0.5): {base}"


@pytest.mark.slow
def test_language_modeling_tinyshakespeare(shared_data, tmp_path):
    report = _session("language-modeling.toml", tmp_path / "run", [
        f"data.train={shared_data / 'tinyshakespeare' / 'input.txt'}", "data.limit=2000", "data.max_length=64",
        "model.vocab_size=500", "train.max_steps=60", "eval.limit=20", "eval.max_new_tokens=8",
        "eval.latency.new_tokens=8"])
    _check(report, ["base", "student", "int8", "int4"], "perplexity")
    assert report["variants"][0]["latency"]["host"]["generation"]["new_tokens"] == 8
    int4 = next(v for v in report["variants"] if v["name"] == "int4")
    assert int4["parent"] == "student" and int4["size_bytes"] < next(
        v for v in report["variants"] if v["name"] == "student")["size_bytes"]
    base = report["variants"][0]["metrics"]["perplexity"]
    assert 1 < base < 500, f"perplexity after 60 steps with a 500-token vocabulary: {base}"


@pytest.mark.slow
def test_small_lm_llama_int4_tinyshakespeare(shared_data, tmp_path):
    report = _session("small-lm.toml", tmp_path / "run", [
        f"data.train={shared_data / 'tinyshakespeare' / 'input.txt'}", "data.limit=2000", "data.max_length=64",
        "model.vocab_size=500", "model.hidden_size=128", "model.layers=2", "train.max_steps=60", "eval.limit=20",
        "eval.max_new_tokens=8", "eval.latency.new_tokens=8"])
    _check(report, ["base", "int4", "int4-hqq", "8da4w"], "perplexity")
    base = next(v for v in report["variants"] if v["name"] == "base")
    a8w4 = next(v for v in report["variants"] if v["name"] == "8da4w")
    # the ExecuTorch program with its cache: evaluated and timed in ExecuTorch, 4-bit weights
    assert a8w4["evaluated_with"] == "executorch" and a8w4["size_bytes"] < 0.5 * base["size_bytes"], a8w4
    assert a8w4["latency"]["host"]["by_runtime"]["executorch"]["generation"]["new_tokens"] == 8
    assert abs(a8w4["metrics"]["perplexity"] / base["metrics"]["perplexity"] - 1) < 0.05
    assert base["params"] > 0 and 1 < base["metrics"]["perplexity"] < 500
    for name in ("int4", "int4-hqq"):
        v = next(x for x in report["variants"] if x["name"] == name)
        assert v["size_bytes"] < 0.5 * base["size_bytes"], (name, v["size_bytes"], base["size_bytes"])
        files = {f["format"]: f for f in v["files"]}
        assert files["onnx"]["verified"] is True, files["onnx"]  # within the recipe's export bounds
        assert files["ort"]["verified"] is None  # skipped with its reason: the ORT format has no 4-bit tensors


@pytest.mark.slow
def test_translation_multi30k(shared_data, tmp_path):
    m = shared_data / "multi30k"
    report = _session("translation.toml", tmp_path / "run", [
        f"data.train=[\"{m / 'train.en'}\", \"{m / 'train.de'}\"]",
        f"data.validation=[\"{m / 'val.en'}\", \"{m / 'val.de'}\"]",
        f"data.eval=[\"{m / 'test_2016_flickr.en'}\", \"{m / 'test_2016_flickr.de'}\"]",
        "data.limit=2000", "model.vocab_size=1000", "train.max_steps=60", "eval.limit=30", "eval.max_new_tokens=16",
        "eval.latency.new_tokens=8"])
    _check(report, ["base", "student", "int8"], "bleu")
    int8 = report["variants"][2]
    # the student's encoder and merged decoder quantized, generation timed through them
    assert int8["parent"] == "student" and int8["info"]["quantized_nodes"] > 0
    assert int8["latency"]["host"]["generation"]["new_tokens"] == 8
