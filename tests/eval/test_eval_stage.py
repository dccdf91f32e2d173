"""The eval stage (toolkit.eval.stage.run_eval) on tiny runs trained here: eval.json's content checked against
numbers computed independently in the test (the model run by hand, sklearn called directly), PyTorch and ONNX
Runtime agreeing on the same variant, and bad input as one-line UserErrors."""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from toolkit.config import load_recipe, recipe_from_dict
from toolkit.errors import UserError
from toolkit.events import null_emitter
from toolkit.rundir import RunDir

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
DESIGN_LATENCY = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "threads", "runtime", "source", "by_runtime"}


def train(recipe, out: Path) -> RunDir:
    from toolkit.train.stage import prepare_run_dir, run_train

    run = RunDir(out)
    prepare_run_dir(recipe, run, force=True)
    run_train(recipe, run, null_emitter("train"))
    return run


def onnx_copy(run: RunDir, name: str = "onnx-copy") -> Path:
    """An ONNX-only child of base: its exported graph(s) and bundle files, no PyTorch folder (as an INT8 step
    leaves it, minus the quantization, so its metrics must equal the parent's)."""
    from toolkit.variants import Variant

    src, dst = run.variant("base"), run.variant(name)
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.suffix != ".json" or f.name in ("config.json", "generation_config.json"):
            shutil.copy2(f, dst / f.name)
    main = dst / "model.onnx" if (dst / "model.onnx").exists() else dst / "encoder_model.onnx"
    Variant(name=name, parent="base", method="copy", path=dst, onnx=main).save()
    return dst


# --- digits: the fast end-to-end check ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from toolkit.export.onnx import export_onnx

    recipe = load_recipe(FIXTURES / "stage_digits.toml", ["eval.robustness=true"])
    run = train(recipe, tmp_path_factory.mktemp("digits") / "run")
    export_onnx(run.variant("base") / "model", run.variant("base"), recipe.task,
                example_inputs={"pixel_values": torch.zeros(2, 1, 8, 8)})
    onnx_copy(run)
    t0 = time.perf_counter()
    results = run_eval_quietly(recipe, run)
    return recipe, run, results, time.perf_counter() - t0


def run_eval_quietly(recipe, run, **kw):
    """The eval stage, then the report stage (as a session and `toolkit eval` run them)."""
    from toolkit.eval.stage import run_eval
    from toolkit.report import write_report

    run.report_json.unlink(missing_ok=True)
    results = run_eval(recipe, run, null_emitter("eval"), **kw)
    assert not run.report_json.exists()  # the report stage alone writes the report
    write_report(recipe, run)
    return results


def by_hand(recipe, run):
    """Predictions of the base model on the eval split, computed here without the toolkit's eval code."""
    from toolkit.data import load_splits
    from toolkit.tasks import get_task

    model = get_task(recipe.task).load(run.variant("base") / "model").eval()
    labels = json.loads((run.variant("base") / "model" / "labels.json").read_text())
    examples = load_splits(recipe).eval
    x = torch.stack([torch.as_tensor(np.asarray(ex["image"], dtype=np.float32))[None] for ex in examples])
    with torch.no_grad():
        logits = model(pixel_values=x).logits  # (N, K)
    y = np.array([labels.index(ex["label"]) for ex in examples])
    return y, logits.argmax(-1).numpy(), torch.softmax(logits, -1).numpy(), model


def test_digits_eval_json_has_design_fields_and_measured_host_latency(digits):
    recipe, run, results, seconds = digits
    assert seconds < 30, f"eval of two tiny variants took {seconds:.1f} s"
    record = json.loads((run.variant("base") / "eval.json").read_text())
    assert record == json.loads(json.dumps(results["base"]))  # what run_eval returns is what it wrote
    assert (record["schema_version"], record["variant"], record["split"]) == (1, "base", "eval")
    assert record["evaluated_with"] == "pytorch"
    assert record["examples"] == 180  # 10 % of 1,797 digits, carved as in training
    m = record["metrics"]
    for key in ("accuracy", "f1_macro", "auc_roc"):
        assert 0.0 <= m[key] <= 1.0, (key, m[key])
        assert key in record["conventions"]
    assert m["accuracy"] > 0.6  # 120 steps on digits: far above the 0.1 of chance
    host = record["latency"]["host"]
    assert DESIGN_LATENCY <= set(host)
    assert (host["source"], host["runtime"], host["threads"]) == ("measured", "onnxruntime", 1)
    assert 0 < host["p50_ms"] <= host["p90_ms"] <= host["p99_ms"]
    # 30 runs in 10 interleaved rounds of 3, plus extra rounds (up to 4x) while the figure is noisy
    assert host["rounds"] >= 10 and host["runs"] == 3 * host["rounds"] <= 120 and host["inputs"] == "real"
    q1, q3 = host["spread_ms"]
    assert host["min_ms"] <= q1 <= host["median_ms"] <= q3 <= host["max_ms"]
    assert host["min_ms"] <= host["p10_ms"] <= host["p50_ms"]
    assert isinstance(host["stable"], bool) and host["interference"]["seconds"] > 0
    assert host["throughput"] == pytest.approx(1000.0 / host["mean_ms"])
    assert set(host["by_runtime"]) == {"onnxruntime", "torch"}
    assert host["by_runtime"]["onnxruntime"]["p50_ms"] == host["p50_ms"]
    assert host["file"] == "variants/base/model.onnx"
    assert record["size_bytes"] == (run.variant("base") / "model.onnx").stat().st_size
    assert "latency" in record["conventions"] and "interleaved" in record["conventions"]["host_latency"]


def test_digits_metrics_equal_an_independent_computation(digits):
    from sklearn.metrics import f1_score, roc_auc_score

    recipe, run, results, _ = digits
    y, pred, probs, model = by_hand(recipe, run)
    m = results["base"]["metrics"]
    assert m["accuracy"] == pytest.approx(float((pred == y).mean()), abs=1e-12)
    assert m["f1_macro"] == pytest.approx(f1_score(y, pred, average="macro"), abs=1e-9)
    assert m["auc_roc"] == pytest.approx(roc_auc_score(y, probs, multi_class="ovr"), abs=1e-6)
    nll = -np.log(probs[np.arange(len(y)), y]).mean()
    assert m["loss"] == pytest.approx(nll, rel=1e-5)
    assert results["base"]["params"] == sum(p.numel() for p in model.parameters())
    matrix = np.array(results["base"]["details"]["confusion_matrix"])
    assert matrix.trace() == (pred == y).sum() and matrix.sum() == len(y)


def test_onnx_only_variant_runs_in_onnxruntime_and_agrees_with_pytorch(digits):
    _, run, results, _ = digits
    onnx = results["onnx-copy"]
    assert onnx["evaluated_with"] == "onnxruntime"
    for key in ("accuracy", "f1_macro"):
        assert onnx["metrics"][key] == results["base"]["metrics"][key]  # a float graph: the same argmax
    assert onnx["metrics"]["auc_roc"] == pytest.approx(results["base"]["metrics"]["auc_roc"], abs=1e-6)
    assert set(onnx["latency"]["host"]["by_runtime"]) == {"onnxruntime"}  # no model/: no PyTorch eager
    assert onnx["params"] > 0 and onnx["size_bytes"] == (run.variant("onnx-copy") / "model.onnx").stat().st_size


def test_executorch_only_variant_is_evaluated_with_executorch(digits):
    pytest.importorskip("executorch", reason="the executorch extra is not installed")
    from toolkit.variants import Variant
    from toolkit.export.executorch import export_pte

    recipe, run, results, _ = digits
    folder = run.variant("pte-copy")  # as a PT2E step leaves its variant: model.pte and no model/
    export_pte(run.variant("base") / "model", folder, recipe.task,
               example_inputs={"pixel_values": torch.zeros(2, 1, 8, 8)})
    Variant(name="pte-copy", parent="base", method="copy", path=folder).save()
    record = run_eval_quietly(recipe, run, variants=["pte-copy"])["pte-copy"]
    assert record["evaluated_with"] == "executorch"
    assert record["metrics"]["accuracy"] == results["base"]["metrics"]["accuracy"]  # a float program
    host = record["latency"]["host"]
    assert (host["runtime"], host["preferred_runtime"], set(host["by_runtime"])) == (
        "executorch", "onnxruntime", {"executorch"})
    assert 0 < host["p50_ms"] <= host["p90_ms"] <= host["p99_ms"]


def test_other_targets_measured_where_reachable_else_estimated(digits):
    """raspberry-pi-4 has no reach: estimated. A locally reached profile: measured in a child process. An ssh
    target that does not answer: estimated, with a warning event naming it."""
    from toolkit.eval.stage import run_eval
    from toolkit.events import Emitter

    recipe, run, _, _ = digits
    local, closed = str(FIXTURES / "stage_local_box.toml"), str(FIXTURES / "stage_closed_port.toml")
    recipe = load_recipe(FIXTURES / "stage_digits.toml", [f'eval.targets=["host", "raspberry-pi-4", "{local}", '
                                                          f'"{closed}"]'])
    events: list[dict] = []
    record = run_eval(recipe, run, Emitter(None, "t", [events.append]).for_stage("eval"), variants=["base"])["base"]
    lat = record["latency"]
    assert set(lat) == {"host", "raspberry-pi-4", local, closed}
    pi = lat["raspberry-pi-4"]
    assert (pi["source"], pi["runtime"], pi["threads"]) == ("estimated", "onnxruntime", 4)
    assert pi["p50_ms"] > 0 and pi["basis"] and pi["file"] == "variants/base/model.onnx"
    assert (lat[local]["source"], lat[local]["runtime"], lat[local]["threads"]) == ("measured", "onnxruntime", 1)
    assert 0 < lat[local]["p50_ms"] <= lat[local]["p90_ms"] <= lat[local]["p99_ms"]
    assert lat[closed]["source"] == "estimated"
    warnings = [e["message"] for e in events if e["kind"] == "log" and e.get("level") == "warning"]
    assert any("127.0.0.1" in w and "estimating its latency instead" in w for w in warnings), warnings
    fit = record["fit"]
    assert set(fit) == set(lat) and all(f["fits"] for f in fit.values())  # a 10 kB model fits everywhere
    assert fit["raspberry-pi-4"]["max_model_mb"] == 1024 and fit["raspberry-pi-4"]["peak_memory_mb"] is None


def test_robustness_reports_each_perturbation_and_its_drop(digits):
    _, _, results, _ = digits
    rb = results["base"]["robustness"]
    assert rb["metric"] == "accuracy" and set(rb["perturbed"]) == {"noise", "shift"}
    assert rb["clean"] == results["base"]["metrics"]["accuracy"]
    for kind, value in rb["perturbed"].items():
        assert 0 <= value <= 1
        assert rb["drop"][kind] == pytest.approx(rb["clean"] - value)
    assert "sigma" in rb["parameters"] and "seed" in rb["perturbations"]


def test_report_is_built_from_eval_json(digits):
    _, run, _, _ = digits
    report = json.loads(run.report_json.read_text())
    names = {v["name"]: v for v in report["variants"]}
    assert names["base"]["metrics"]["accuracy"] == json.loads((run.variant("base") / "eval.json").read_text())[
        "metrics"]["accuracy"]
    assert "host" in names["onnx-copy"]["latency"]


def test_one_variant_and_one_metric(digits, tmp_path):
    recipe, run, results, _ = digits
    before = (run.variant("base") / "eval.json").read_bytes()
    out = run_eval_quietly(recipe, run, variants=["onnx-copy"], metrics=["f1"])
    assert list(out) == ["onnx-copy"]
    assert set(out["onnx-copy"]["metrics"]) == {"f1_macro"}
    assert (run.variant("base") / "eval.json").read_bytes() == before  # not evaluated again


@pytest.mark.parametrize("metrics, message", [
    (["bleu"], "bleu does not apply to image-classification; use accuracy or f1"),
    (["acuracy"], "did you mean 'accuracy'"),
])
def test_a_metric_that_does_not_fit_is_an_error(digits, metrics, message):
    recipe, run, _, _ = digits
    with pytest.raises(UserError, match=message.replace("(", r"\(")):
        run_eval_quietly(recipe, run, metrics=metrics)


def test_unknown_variant_names_the_nearest(digits):
    recipe, run, _, _ = digits
    with pytest.raises(UserError, match="--variant onnx-cpy: no such variant .*did you mean 'onnx-copy'"):
        run_eval_quietly(recipe, run, variants=["onnx-cpy"])


def test_unknown_target_fails_before_any_work(digits):
    _, run, _, _ = digits
    recipe = load_recipe(FIXTURES / "stage_unknown_target.toml")
    with pytest.raises(UserError, match="eval.targets: unknown target 'raspbery-pi-4'.*raspberry-pi-4"):
        run_eval_quietly(recipe, run)


def test_a_variant_without_files_is_skipped_with_a_warning(digits):
    from toolkit.variants import Variant
    from toolkit.eval.stage import run_eval
    from toolkit.events import Emitter

    recipe, run, _, _ = digits
    Variant(name="empty", parent="base", method="copy", path=run.variant("empty")).save()
    (run.variant("empty") / "eval.json").write_text("{}")  # from an earlier evaluation: must not survive
    events: list[dict] = []
    try:
        out = run_eval(recipe, run, Emitter(None, "t", [events.append]).for_stage("eval"),
                       variants=["onnx-copy", "empty"], metrics=["accuracy"])
        assert list(out) == ["onnx-copy"]
        assert any(e.get("level") == "warning" and e["message"].startswith("empty: not evaluated:") and
                   "neither model/ nor an .onnx graph" in e["message"] for e in events if e["kind"] == "log")
        assert not (run.variant("empty") / "eval.json").exists()
        with pytest.raises(UserError, match="variant 'empty' has neither model/ nor an .onnx graph"):
            run_eval_quietly(recipe, run, variants=["empty"])
    finally:
        shutil.rmtree(run.variant("empty"))


def test_a_run_without_variants_says_to_train_first(tmp_path):
    recipe = load_recipe(FIXTURES / "stage_digits.toml")
    with pytest.raises(UserError, match="no variants to evaluate .*train first"):
        run_eval_quietly(recipe, RunDir(tmp_path / "empty"))


# --- text classification: groups and text perturbations --------------------------------------------------------

def test_group_metrics_and_text_robustness(tmp_path):
    recipe = recipe_from_dict({
        "name": "stage-groups", "task": "text-classification", "seed": 0,
        "data": {"train": str(FIXTURES / "stage_groups.tsv"), "text_column": "sentence", "group_column": "group",
                 "split": [0.5, 0.1, 0.4], "max_length": 16},
        "model": {"source": "builtin:bert-tiny", "hidden_size": 32, "layers": 1, "vocab_size": 64},
        "train": {"max_steps": 30, "batch_size": 16, "lr": 3e-3, "checkpoint_every": 0, "threads": 1},
        "eval": {"robustness": True, "latency": {"warmup": 1, "runs": 5, "seq_len": 16, "threads": 1}},
    })
    run = train(recipe, tmp_path / "run")
    record = run_eval_quietly(recipe, run)["base"]
    groups = record["groups"]
    assert groups["column"] == "group" and set(groups["per_group"]) == {"a", "b"}
    # by hand: the base model on each group's eval examples
    from toolkit.data import load_splits
    from toolkit.models.pretrained import load_tokenizer
    from toolkit.tasks import get_task

    folder = run.variant("base") / "model"
    model, tok = get_task(recipe.task).load(folder).eval(), load_tokenizer(folder)
    labels = json.loads((folder / "labels.json").read_text())
    acc = {}
    for g in ("a", "b"):
        exs = [ex for ex in load_splits(recipe).eval if ex["group"] == g]
        enc = tok([ex["text"] for ex in exs], padding=True, truncation=True, max_length=16, return_tensors="pt",
                  return_token_type_ids=False)
        with torch.no_grad():
            pred = model(**enc).logits.argmax(-1).numpy()
        acc[g] = float((pred == np.array([labels.index(ex["label"]) for ex in exs])).mean())
        assert groups["per_group"][g]["accuracy"] == pytest.approx(acc[g], abs=1e-12)
        assert groups["per_group"][g]["n"] == len(exs)
    assert groups["max_gap"]["accuracy"] == pytest.approx(abs(acc["a"] - acc["b"]), abs=1e-12)
    rb = record["robustness"]
    assert set(rb["perturbed"]) == {"swap", "drop", "case"} and rb["parameters"]["rate"] > 0
    assert record["latency"]["host"]["seq_len"] == 16


# --- language modelling and seq2seq: ONNX Runtime equals PyTorch ------------------------------------------------

WORDS = "the cat dog sat ran on a mat far away today and then it was good bad slow fast red blue".split()


def _lines(n: int, seed: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 10)))) for _ in range(n)]


def test_language_model_perplexity_in_onnxruntime_equals_pytorch(tmp_path):
    from toolkit.export.onnx import export_onnx

    (tmp_path / "text.txt").write_text("\n".join(_lines(200, 0)) + "\n")
    recipe = recipe_from_dict({
        "name": "stage-lm", "task": "language-modeling", "seed": 0,
        "data": {"train": str(tmp_path / "text.txt"), "split": [0.8, 0.1, 0.1], "max_length": 32},
        "model": {"source": "builtin:gpt2-tiny", "hidden_size": 32, "layers": 1, "vocab_size": 100},
        "train": {"max_steps": 10, "batch_size": 8, "lr": 3e-3, "checkpoint_every": 0, "threads": 1},
        "eval": {"latency": {"warmup": 1, "runs": 5, "seq_len": 16, "threads": 1}},
    })
    run = train(recipe, tmp_path / "run")
    export_onnx(run.variant("base") / "model", run.variant("base"), recipe.task)
    onnx_copy(run)
    out = run_eval_quietly(recipe, run)
    base, onnx = out["base"], out["onnx-copy"]
    assert (base["evaluated_with"], onnx["evaluated_with"]) == ("pytorch", "onnxruntime")
    assert onnx["metrics"]["perplexity"] == pytest.approx(base["metrics"]["perplexity"], rel=1e-4)
    assert base["details"]["tokens"] == onnx["details"]["tokens"]
    assert (base["details"]["window"], base["details"]["stride"]) == (32, 16)
    assert "window=32, stride=16" in base["conventions"]["perplexity"]
    assert base["metrics"]["loss"] == pytest.approx(np.log(base["metrics"]["perplexity"]))
    from toolkit.models.pretrained import load_tokenizer

    vocab = len(load_tokenizer(run.variant("base") / "model"))
    assert 1 < base["metrics"]["perplexity"] < vocab  # a uniform model's perplexity is the vocabulary size
    assert {"onnxruntime", "torch"} <= set(base["latency"]["host"]["by_runtime"])
    # generation timing from the default [eval.latency] new_tokens = 32, in both runtimes
    for runtime, entry in base["latency"]["host"]["by_runtime"].items():
        g = entry["generation"]
        assert (g["new_tokens"], g["runs"]) == (32, 5), runtime
        assert 0 < g["ttft_ms"] < g["total_ms"] and g["tokens_per_s"] > 0
        assert g["prompt_tokens"] <= 16  # the first timed sample's real tokens
    assert onnx["latency"]["host"]["generation"]["new_tokens"] == 32
    assert "greedy decode of 32 new tokens" in base["conventions"]["generation_latency"]
    md = (run.path / "report.md").read_text()
    ttft = base["latency"]["host"]["by_runtime"]["torch"]["generation"]["ttft_ms"]
    assert "## Generation on the host" in md and f"| `base` | torch | {ttft:.3f} ms |" in md

    bad = recipe_from_dict({**_plain(recipe), "eval": {"perplexity_stride": 64}})
    with pytest.raises(UserError, match="eval.perplexity_stride = 64 is longer than the window"):
        run_eval_quietly(bad, run, variants=["base"])


def _plain(recipe) -> dict:
    from toolkit.config import to_dict

    d = to_dict(recipe)
    d.pop("compress", None)
    return d


def test_seq2seq_generation_in_onnxruntime_equals_pytorch(tmp_path):
    from toolkit.export.onnx import export_onnx

    src = _lines(120, 1)
    (tmp_path / "train.src").write_text("\n".join(src) + "\n")
    (tmp_path / "train.tgt").write_text("\n".join(" ".join(reversed(s.split())) for s in src) + "\n")
    recipe = recipe_from_dict({
        "name": "stage-s2s", "task": "seq2seq", "seed": 0,
        "data": {"train": [str(tmp_path / "train.src"), str(tmp_path / "train.tgt")], "split": [0.8, 0.1, 0.1],
                 "max_length": 16},
        "model": {"source": "builtin:bart-tiny", "hidden_size": 32, "layers": 1, "vocab_size": 100},
        "train": {"max_steps": 10, "batch_size": 8, "lr": 3e-3, "checkpoint_every": 0, "threads": 1},
        "eval": {"max_new_tokens": 8, "latency": {"warmup": 1, "runs": 5, "seq_len": 16, "threads": 1}},
    })
    run = train(recipe, tmp_path / "run")
    export_onnx(run.variant("base") / "model", run.variant("base"), recipe.task)
    onnx_copy(run)
    out = run_eval_quietly(recipe, run)
    base, onnx = out["base"], out["onnx-copy"]
    assert onnx["evaluated_with"] == "onnxruntime"
    hyps = [s["hypothesis"] for s in base["details"]["samples"]]
    assert hyps == [s["hypothesis"] for s in onnx["details"]["samples"]]  # the same greedy tokens
    for key in ("bleu", "chrf", "rouge1", "rouge2", "rougeL", "rougeLsum"):
        assert onnx["metrics"][key] == pytest.approx(base["metrics"][key], abs=1e-9), key
    assert base["conventions"]["bleu"].startswith("nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:")
    assert "stemmer=on" in base["conventions"]["rouge"]
    assert "greedy, max_new_tokens=8" in base["conventions"]["generation"]
    assert onnx["latency"]["host"]["graph"] == "encoder"
    for out_ in (base, onnx):  # generation: encoder + cached decoder steps, in every runtime the variant has
        for entry in out_["latency"]["host"]["by_runtime"].values():
            assert entry["generation"]["new_tokens"] == 32 and entry["generation"]["ttft_ms"] > 0
    assert set(base["latency"]["host"]["by_runtime"]) == {"onnxruntime", "torch"}
    # both graphs count towards the variant's size
    assert onnx["size_bytes"] == sum((run.variant("onnx-copy") / f).stat().st_size
                                     for f in ("encoder_model.onnx", "decoder_model_merged.onnx"))
