"""Every registered compression method (and every quantize scheme), on a tiny trained classifier: the step's output
loads and runs in its runtime, and what the step claims (size, parameters) is what is on disk."""
from __future__ import annotations

import dataclasses
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest

from toolkit.compress.stage import run_compress
from toolkit.registry import METHODS
from toolkit.steps import parse_steps, step_to_dict
from toolkit.variants import load_variants, main_file
from toolkit.config import fields_of, recipe_from_dict, to_dict
from toolkit.events import Emitter
from toolkit.rundir import RunDir, load_manifest, sha256_path
from toolkit.train.stage import prepare_run_dir, run_train

CASES = [(name, {}) for name in sorted(METHODS) if name != "quantize"]
if "quantize" in METHODS:
    CASES += [("quantize", {"scheme": s}) for s in ("int8-dynamic", "int8-static", "qat")]
    # ExecuTorch's XNNPACK lowering alone takes a minute or two here: a slow test
    CASES += [pytest.param("quantize", {"scheme": "pt2e"}, marks=pytest.mark.slow, id="quantize-pt2e")]
FAST = {"max_steps": 4, "qat_steps": 4, "calibration_samples": 16, "batch_size": 16}
"""settings that keep a training step to a few steps (applied when the method has the key)"""


def _tsv(path: Path, n: int = 200) -> None:
    rng = random.Random(1)
    pos, neg = "good great lovely superb".split(), "bad awful dull boring".split()
    filler = "the film plot was and a it is this movie".split()
    rows = ["sentence\tlabel"]
    for i in range(n):
        words = [rng.choice(filler) for _ in range(rng.randint(3, 8))] + [rng.choice(pos if i % 2 else neg)] * 2
        rng.shuffle(words)
        rows.append(" ".join(words) + f"\t{i % 2}")
    path.write_text("\n".join(rows) + "\n", encoding="utf-8")


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("registry")
    _tsv(root / "reviews.tsv")
    recipe = recipe_from_dict({
        "name": "registry", "task": "text-classification",
        "data": {"train": "reviews.tsv", "text_column": "sentence", "max_length": 24, "split": [0.6, 0.3, 0.1]},
        "model": {"source": "builtin:bert-tiny", "vocab_size": 200, "hidden_size": 64, "heads": 2},
        "train": {"max_steps": 40, "batch_size": 32, "lr": 2e-3, "threads": 1, "checkpoint_every": 0}},
        str(root / "recipe.toml"))
    recipe.source_path = str(root / "recipe.toml")
    run = RunDir(root / "run")
    prepare_run_dir(recipe, run, force=True)
    run_train(recipe, run, Emitter(None, "registry").for_stage("train"))
    return run, recipe


def _step(method: str, extra: dict) -> dict:
    keys = fields_of(METHODS[method])
    return {"method": method, **{k: v for k, v in FAST.items() if k in keys}, **extra}


def _id(case) -> str:
    if hasattr(case, "id"):
        return case.id
    method, extra = case
    return f"{method}-{extra['scheme']}" if "scheme" in extra else method


@pytest.mark.parametrize("method,extra", CASES, ids=[_id(c) for c in CASES])
def test_method_output_loads_and_runs(base, tmp_path, method, extra):
    src, recipe = base
    run = RunDir(tmp_path / "run")
    shutil.copytree(src.path, run.path)
    step = _step(method, extra)
    rec = recipe_from_dict({**{k: v for k, v in to_dict(recipe).items() if k != "compress"}, "compress": [step]},
                           recipe.source_path)
    rec.source_path = recipe.source_path
    events: list[dict] = []
    variants = run_compress(rec, run, Emitter(None, "registry", [events.append]).for_stage("compress"))
    name = parse_steps([step], "x")[0].name
    v = variants[name]
    assert v.parent == "base" and v.path == run.variant(name)
    assert load_variants(run.variants)[name].to_dict() == v.to_dict()  # variant.json says the same
    entry = next(a for a in load_manifest(run)["artifacts"] if a["name"] == name)
    path = main_file(v)
    assert entry["stage"] == "compress" and entry["kind"] == "variant" and entry["parent"] == "base"
    assert entry["sha256"] == sha256_path(path)
    # the stage's own events frame the step (training steps add their trainer's events in between)
    assert events[0]["kind"] == "start" and events[0]["steps"] == [name]
    assert events[-1]["kind"] == "done" and events[-1]["steps"] == [name]
    assert [e["variant"] for e in events if e["kind"] == "artifact" and e.get("what") == "variant"] == [name]
    if path.is_file():
        assert v.info["size_bytes"] == path.stat().st_size
    else:  # a model folder: the claim is the whole folder (DESIGN.md) or its weights file
        sizes = {sum(f.stat().st_size for f in path.rglob("*") if f.is_file()),
                 (path / "model.safetensors").stat().st_size}
        assert v.info["size_bytes"] in sizes
    batch = _batch(run, rec, variants)
    if path.suffix == ".onnx":
        from toolkit import onnxrt
        from toolkit.compress._shared.graphs import onnx_params

        out = onnxrt.logits(onnxrt.open_session(path), batch)
        if "params_after" in v.info:
            assert v.info["params_after"] == onnx_params(path)
    elif path.suffix == ".pte":
        out = _run_pte(path, batch)
    else:
        import torch

        from toolkit.models import count_params
        from toolkit.tasks import get_task

        model = get_task(rec.task).load(v.model_dir).eval()
        with torch.no_grad():
            out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()
        if "params_after" in v.info:
            assert v.info["params_after"] == count_params(model)
    assert out.shape[-1] == 2 and np.isfinite(out).all()
    # the variant's folder works alone: tokenizer and labels beside the model
    assert (v.path / "labels.json").is_file() and (v.path / "preprocess.json").is_file() or v.model_dir is not None


def _batch(run, recipe, variants) -> dict:
    from toolkit.compress._shared.data import split_data
    from toolkit.compress.context import Context
    from toolkit.events import null_emitter

    ctx = Context(recipe=recipe, run=run, emit=null_emitter())
    ctx.cache["variants"] = variants
    data = split_data(ctx, variants["base"])
    return {k: v for k, v in data.collate(list(data.validation[:4])).items()}


def _run_pte(path: Path, batch: dict) -> np.ndarray:
    import torch

    from toolkit.export.executorch import load_method

    method = load_method(path)
    meta = [method.metadata.input_tensor_meta(i) for i in range(method.metadata.num_inputs())]
    seq = list(meta[0].sizes())[1]
    rows = []
    for i in range(batch["input_ids"].shape[0]):  # static batch 1 when dynamic shapes did not export
        ids = torch.nn.functional.pad(batch["input_ids"][i:i + 1], (0, seq - batch["input_ids"].shape[1]))[:, :seq]
        mask = torch.nn.functional.pad(batch["attention_mask"][i:i + 1], (0, seq - batch["input_ids"].shape[1]))[:, :seq]
        rows.append(method.execute([ids.contiguous(), mask.contiguous()])[0].float().numpy())
    return np.concatenate(rows)


@pytest.mark.parametrize("method", sorted(METHODS))
def test_config_is_documented_and_round_trips(method):
    cls = METHODS.get(method)
    for name, f in fields_of(cls).items():
        assert f.metadata.get("doc"), f"{method}.{name} has no doc string"
    steps = parse_steps([{"method": method}, {"method": method}], "r.toml")
    assert [s.name for s in steps] == [method, f"{method}-2"]
    assert steps[0].from_ == "base" and steps[1].from_ == method  # default parent: the previous step
    again = parse_steps([step_to_dict(s) for s in steps], "r.toml")
    assert [dataclasses.asdict(s) for s in again] == [dataclasses.asdict(s) for s in steps]


def test_quantize_defaults_follow_the_design():
    from toolkit.compress.quantize import QuantizeConfig, int8_settings

    q = parse_steps([{"method": "quantize"}], "r.toml")[0]
    assert isinstance(q, QuantizeConfig)
    assert (q.scheme, q.target, q.calibration_samples, q.optimize, q.qat_steps, q.qat_lr) == \
        ("int8-dynamic", "host", 128, True, 200, 1e-5)
    avx2 = int8_settings(dataclasses.replace(q, target="x86-avx2"))
    assert avx2["label"] == "U8S8 QOperator reduce_range" and avx2["per_channel"]
    pi = int8_settings(dataclasses.replace(q, target="raspberry-pi-4"))
    assert pi["label"] == "S8S8 QDQ" and pi["activation"] == "int8"
    assert int8_settings(dataclasses.replace(q, target="x86-avx2", reduce_range=False))["reduce_range"] is False
    assert json.dumps(step_to_dict(q))  # a step serialises (the manifest records it)
