"""The family matrix: one tiny random model of every family a user may bring, through every stage, each cell checked
for what it says it did (the claims are in ``support.py``; the README's support matrix is made from them).

Per family: a session (train → distil by dropping layers and fresh → structured and unstructured pruning → INT8 →
FP16, every variant exported to ONNX and verified → eval with latency and generation timing → report), the base
exported to every format and verified, and a LoRA run. Data: a few hundred rows of the shared data sets (SST-2,
Tiny Shakespeare, Multi30k); the test skips when they are absent.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import support  # noqa: E402
import zoo  # noqa: E402

from toolkit.config import recipe_from_dict  # noqa: E402
from toolkit.rundir import RunDir, load_manifest  # noqa: E402
from toolkit.variants import load_variants  # noqa: E402

pytestmark = [pytest.mark.slow,
              pytest.mark.skipif(not zoo.SHARED.is_dir(), reason=f"the shared data sets are not at {zoo.SHARED}")]

FAMILIES = zoo.families()
STEPS = {
    "distill-layers": {"name": "layers", "method": "distill", "layers": [0], "max_steps": 2},
    "distill-fresh": {"name": "fresh", "method": "distill", "layers": 1, "hidden_size": 16, "heads": 2,
                      "max_steps": 2},
    "prune-structured": {"name": "pruned", "method": "prune", "kind": "structured", "sparsity": 0.5, "max_steps": 2},
    "prune-unstructured": {"name": "sparse", "method": "prune", "kind": "unstructured", "sparsity": 0.5,
                           "max_steps": 2},
    "int8": {"name": "int8", "method": "quantize", "max_accuracy_drop": 1.0},
    "fp16": {"name": "fp16", "method": "fp16", "max_accuracy_drop": 1.0},
}


def recipe_for(name: str, data: dict, folder: Path, **extra: dict) -> object:
    fam = FAMILIES[name]
    cells = support.SUPPORT[name]
    steps = [dict(step, **{"from": "base"}) for cell, step in STEPS.items() if support.status(cells[cell]) != "no"]
    table = {"name": name, "task": fam.task, "data": data, "model": {"source": str(folder)},
             "train": {"max_steps": 4, "batch_size": 16, "threads": 1, "checkpoint_every": 0, "lr": 1e-3},
             "compress": steps, "export": {"formats": ["onnx"]},
             "eval": {"limit": 40, "max_new_tokens": 8,
                      "latency": {"warmup": 1, "runs": 3, "seq_len": 16, "new_tokens": 4, "generation_runs": 1}}}
    for key, value in extra.items():
        table[key] = {**table.get(key, {}), **value}
    return recipe_from_dict(table, f"{name}.toml")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, dict]:
    root = tmp_path_factory.mktemp("data")
    return {task: zoo.data_files(root / task.replace("-", "_"), task)
            for task in ("text-classification", "language-modeling", "seq2seq")}


def load(v: object, task: object) -> object:
    return task.load(v.model_dir).eval()


@pytest.mark.parametrize("name", list(support.SUPPORT))
def test_family_through_every_stage(name, tmp_path, data):
    from toolkit.arch import adapter_for
    from toolkit.export.stage import run_export
    from toolkit.events import null_emitter
    from toolkit.session import run_session
    from toolkit.tasks import get_task
    from toolkit.train.stage import prepare_run_dir, run_train

    fam, cells = FAMILIES[name], support.SUPPORT[name]
    task = get_task(fam.task)
    folder = zoo.build(fam, tmp_path / "model", data[fam.task])
    recipe = recipe_for(name, data[fam.task], folder)
    run = RunDir(tmp_path / "run")
    run_session(recipe, run)
    variants = load_variants(run.variants)
    report = json.loads(run.report_json.read_text())
    rows = {v["name"]: v for v in report["variants"]}
    seen: dict[str, str] = {}

    def cell(key: str, ok: bool, detail: str = "") -> None:
        assert ok, f"{name}: {key}: {detail}"
        seen[key] = support.status(cells[key])

    # train
    base = variants["base"]
    cell("train", base.has_pytorch and math.isfinite(load_manifest(run)["train"]["validation"]["loss"]))
    # distillation: a student keeping layer 0, a fresh one 16 wide
    ad = adapter_for(load(base, task))
    s = variants["layers"]
    cell("distill-layers", s.info["student"] == "layer-drop" and s.info["layers_kept"] == [0]
         and ad.layer_count(load(s, task)) == 1 and s.info["params_after"] < s.info["params_before"], str(s.info))
    s = variants["fresh"]
    cell("distill-fresh", s.info["student"] == "config" and ad.width(load(s, task)) == 16
         and ad.layer_count(load(s, task)) == 1, str(s.info))
    # structured pruning: FFN neurons halved in every layer; heads halved unless the family keeps them
    p = variants["pruned"].info
    halved = p.get("ffn_per_layer") and all(n * 2 == b for n, b in zip(p["ffn_per_layer"], p["ffn_per_layer_before"]))
    fewer = p["params_after"] < p["params_before"] and p["macs_after"] < p["macs_before"]
    if cells["prune-structured"] == support.OK:
        heads = p.get("heads_per_layer") and all(n * 2 == b for n, b in zip(p["heads_per_layer"],
                                                                            p["heads_per_layer_before"]))
        cell("prune-structured", bool(halved and heads and fewer), str(p))
    else:
        cell("prune-structured", bool(halved and fewer and "heads_per_layer" not in p
                                      and any("heads are kept" in n for n in p["notes"])), str(p))
    cell("prune-unstructured", variants["sparse"].info["sparsity_global"] >= 0.45)
    # INT8 / FP16 through ONNX Runtime
    # (a tiny model's embeddings weigh most; INT8 shrinks its matrices, which is what the ratio shows)
    for key, check in (("int8", lambda i: i["quantized_nodes"] > 0 and i["size_ratio"] < 0.9
                        and i["quantized_op_types"].get("MatMul", 0) + i["quantized_op_types"].get("Attention", 0)),
                       ("fp16", lambda i: i["float16_initializers"] > 0 and i["size_ratio"] < 0.7)):
        if support.status(cells[key]) != "no":
            cell(key, check(variants[key].info), str(variants[key].info.get("size_ratio")))
    # every variant of the session exported to ONNX and verified (lossy ones against their PyTorch parent)
    onnx = {v: [f for f in rows[v]["files"] if f["format"] == "onnx"] for v in rows}
    cell("onnx", all(files and all(f["verified"] for f in files) for files in onnx.values()), str(onnx))
    # eval: the main metric and host latency for every variant; generation timing where the task generates
    main = report["main_metric"]["name"]
    cell("eval", all(isinstance(r["metrics"].get(main), (int, float)) and r["latency"]["host"]["p50_ms"] > 0
                     for r in rows.values()), str({v: r["metrics"] for v, r in rows.items()}))
    if cells["generation"] != support.NA:
        gen = json.loads((run.variant("base") / "eval.json").read_text())["latency"]["host"]["by_runtime"]
        cell("generation", all(gen[rt]["generation"]["ttft_ms"] > 0 and gen[rt]["generation"]["new_tokens"] == 4
                               for rt in ("onnxruntime", "torch")), str(gen))
    cell("report", run.report_md.is_file() and main == task.main_metric.name and "host" in report["recommendation"])

    # the base in every export format, each file verified on real samples
    every = RunDir(tmp_path / "exports")
    every_recipe = recipe_for(name, data[fam.task], folder, export={"formats": ["onnx", "ort", "pte", "torchscript"]})
    prepare_run_dir(every_recipe, every, False)
    shutil.copytree(run.variant("base"), every.variant("base"))
    files = {r["format"]: r for r in run_export(every_recipe, every, null_emitter("export"))["base"]}
    for fmt in ("ort", "pte", "torchscript"):
        expect = cells[fmt]
        if isinstance(expect, support.No):
            cell(fmt, files[fmt]["verified"] is None and files[fmt]["path"] is None and files[fmt].get("reason"),
                 str(files[fmt]))
        else:
            cell(fmt, files[fmt]["verified"] is True, str(files[fmt]))

    # LoRA: adapters train, merge back into a plain model, the merge verified
    lora_run = RunDir(tmp_path / "lora")
    lora_recipe = recipe_for(name, data[fam.task], folder, train={"lora": {"r": 4}})
    prepare_run_dir(lora_recipe, lora_run, False)
    run_train(lora_recipe, lora_run, null_emitter("train"))
    lora = load_manifest(lora_run)["lora"]
    cell("lora", lora["merge"]["changed_modules"] > 0 and lora["trainable_fraction"] < 1
         and (lora_run.train / "adapter").is_dir(), str(lora))

    # every claim of support.py for this family was checked here (a step the family cannot do is not run)
    claimed = {c for c in support.CELLS if cells[c] != support.NA and not (c in STEPS and
                                                                           support.status(cells[c]) == "no")}
    assert set(seen) == claimed, sorted(claimed - set(seen))
