"""The family matrix: one tiny random model of every family a user may bring, through every stage, each cell checked
for what it says it did (the claims are in ``support.py``; the README's support matrix is made from them).

Per family: a session (train → distil by dropping layers and fresh → structured and unstructured pruning → INT8 →
FP16, every variant exported to ONNX and verified → eval with latency and generation timing → report), the base
exported to every format and verified, and a LoRA run. A step the family cannot do is checked to be refused before
any work, with its reason. Data: a few hundred rows of the shared data sets (SST-2, Tiny Shakespeare, Multi30k) and
scikit-learn's digits as 32x32 PNG folders; the test skips when the shared data are absent.
"""
from __future__ import annotations

import json
import math
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

import support  # noqa: E402
import zoo  # noqa: E402

from toolkit.compress.stage import check_steps  # noqa: E402
from toolkit.config import recipe_from_dict  # noqa: E402
from toolkit.errors import UserError  # noqa: E402
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
CNN_STEPS = {  # convolutions quantize with calibration; a CNN student is set by widths (default: half)
    "int8": {"name": "int8", "method": "quantize", "scheme": "int8-static", "calibration_samples": 16,
             "max_accuracy_drop": 1.0},
    "distill-fresh": {"name": "fresh", "method": "distill", "max_steps": 2},
}


TRAIN_STEPS = {zoo.IMAGES: 60}
"""an image model trained a few epochs: an untrained CNN's logits differ by less than INT8's rounding, so comparing
its INT8 graph's labels with the float ones would measure noise"""


def is_cnn(name: str) -> bool:
    return support.SUPPORT[name]["lora"] == support.CNN_LORA


def step_for(name: str, cell: str) -> dict:
    if cell in CNN_STEPS and is_cnn(name):
        return dict(CNN_STEPS[cell], **{"from": "base"})
    return dict(STEPS[cell], **{"from": "base"})


def recipe_for(name: str, data: dict, folder: Path, steps: list | None = None, **extra: dict) -> object:
    fam = FAMILIES[name]
    cells = support.SUPPORT[name]
    if steps is None:
        steps = [step_for(name, cell) for cell in STEPS if support.status(cells[cell]) != "no"]
    table = {"name": name, "task": fam.task, "data": data, "model": {"source": str(folder)},
             "train": {"max_steps": TRAIN_STEPS.get(fam.task, 4), "batch_size": 16, "threads": 1,
                       "checkpoint_every": 0, "lr": 5e-3 if fam.task == zoo.IMAGES else 1e-3},
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
            for task in ("text-classification", "language-modeling", "seq2seq", zoo.IMAGES)}


def weight_bytes(variant: object, task: object) -> int:
    """Bytes of the initializers (weights, scales, zero points) of a variant's graphs, subgraphs included."""
    import onnx
    from onnx import numpy_helper

    from toolkit.compress._shared.graphs import subgraphs
    from toolkit.variants import graph_files

    total = 0
    for path in graph_files(Path(variant.path), task.graphs, variant.onnx).values():
        pending = [onnx.load(str(path)).graph]
        while pending:
            graph = pending.pop()
            total += sum(numpy_helper.to_array(t).nbytes for t in graph.initializer)
            pending.extend(subgraphs(graph))
    return total


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
    # distillation: a student keeping layer (block) 0 of each stack (stage); a fresh one 16 wide (CNNs: half as wide)
    teacher = load(base, task)
    ad = adapter_for(teacher)
    if "layers" in variants:
        s = variants["layers"]
        cell("distill-layers", s.info["student"] == "layer-drop" and s.info["layers_kept"] == [0]
             and all(len(st.layers) == 1 for st in ad.stacks(load(s, task)))
             and s.info["params_after"] < s.info["params_before"], str(s.info))
    s = variants["fresh"]
    if is_cnn(name):
        student = load(s, task)
        cell("distill-fresh", s.info["student"] == "cnn-widths" and type(student) is type(teacher)
             and s.info["params_after"] < 0.6 * s.info["params_before"], str(s.info))
    else:
        cell("distill-fresh", s.info["student"] == "config" and ad.width(load(s, task)) == 16
             and ad.layer_count(load(s, task)) == 1, str(s.info))
    # structured pruning: FFN neurons halved in every layer; heads halved unless the family keeps them; CNNs: the
    # channels of every coupled group
    p = variants["pruned"].info
    halved = p.get("ffn_per_layer") and all(n * 2 == b for n, b in zip(p["ffn_per_layer"], p["ffn_per_layer_before"]))
    fewer = p["params_after"] < p["params_before"] and p["macs_after"] < p["macs_before"]
    if is_cnn(name):
        cell("prune-structured", fewer and p["params_after"] < 0.8 * p["params_before"]
             and sum(p["channels"]) < 0.7 * sum(p["channels_before"]), str(p))
    elif cells["prune-structured"] == support.OK:
        heads = p.get("heads_per_layer") and all(n * 2 == b for n, b in zip(p["heads_per_layer"],
                                                                            p["heads_per_layer_before"]))
        cell("prune-structured", bool(halved and heads and fewer), str(p))
    else:
        cell("prune-structured", bool(halved and fewer and "heads_per_layer" not in p
                                      and any("heads are kept" in n for n in p["notes"])), str(p))
    cell("prune-unstructured", variants["sparse"].info["sparsity_global"] >= 0.45)
    # INT8 / FP16 through ONNX Runtime: INT8 nodes / float16 weights present, and the weights (read from the
    # graphs here) a fraction of the float ones. At these widths a graph's structure weighs as much as its weights
    # (a small CNN's padding arithmetic, a decoder's casts), so the files shrink less than the weights do; the
    # text families' INT8 files are checked too
    for key, has, weights in (("int8", "quantized_nodes", 0.5), ("fp16", "float16_initializers", 0.6)):
        if support.status(cells[key]) == "no":
            continue
        info = variants[key].info
        ratio = weight_bytes(variants[key], task) / weight_bytes(variants["base"], task)
        small = fam.task == zoo.IMAGES or key == "fp16" or info["size_ratio"] < 0.9
        cell(key, info[has] > 0 and ratio < weights and small, f"weights {ratio:.2f}x, file {info['size_ratio']}")
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
    if isinstance(cells["lora"], support.No):
        with pytest.raises(UserError, match=re.escape(support.REFUSED_WITH[cells["lora"]])) as refused:
            run_train(lora_recipe, lora_run, null_emitter("train"))
        cell("lora", "\n" not in str(refused.value) and not (lora_run.train / "adapter").exists(), str(refused.value))
    else:
        run_train(lora_recipe, lora_run, null_emitter("train"))
        lora = load_manifest(lora_run)["lora"]
        cell("lora", lora["merge"]["changed_modules"] > 0 and lora["trainable_fraction"] < 1
             and (lora_run.train / "adapter").is_dir(), str(lora))

    # a compression step the family cannot do is refused by the pre-flight check, before any work
    for key in STEPS:
        if isinstance(cells[key], support.No):
            refused_recipe = recipe_for(name, data[fam.task], folder, steps=[step_for(name, key)])
            with pytest.raises(UserError, match=re.escape(support.REFUSED_WITH[cells[key]])) as refused:
                check_steps(refused_recipe)
            cell(key, "\n" not in str(refused.value), str(refused.value))

    # every claim of support.py for this family was checked here (a step the family cannot do is not run)
    claimed = {c for c in support.CELLS if cells[c] != support.NA}
    assert set(seen) == claimed, sorted(claimed - set(seen))
