"""INT8 and FP16 on tiny trained models: size, closeness to float, the target's format, calibration, the guard."""
from __future__ import annotations

import json
import math
import random
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from toolkit import onnxrt
from toolkit.compress._shared import data as common
from toolkit.compress._shared.graphs import parent_onnx
from toolkit.compress._shared.guard import degradation, guard, within
from toolkit.compress.stage import run_compress
from toolkit.config import load_recipe, recipe_from_dict
from toolkit.errors import UserError
from toolkit.events import Emitter
from toolkit.rundir import RunDir
from toolkit.train.stage import prepare_run_dir, run_train

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "compress"


# ---- builders -------------------------------------------------------------------------------------------------

def sentiment_tsv(path: Path, n: int = 320, seed: int = 0) -> Path:
    """A learnable two-class sentiment set: filler words plus two words that carry the label."""
    rng = random.Random(seed)
    pos, neg = "good great lovely superb moving funny".split(), "bad awful dull boring weak messy".split()
    filler = "the film plot was and a it is this movie story acting very so".split()
    lines = ["sentence\tlabel"]
    for i in range(n):
        y = i % 2
        words = [rng.choice(filler) for _ in range(rng.randint(3, 9))] + [rng.choice(pos if y else neg) for _ in range(2)]
        rng.shuffle(words)
        lines.append(" ".join(words) + f"\t{y}")
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def trained_run(root: Path, recipe: dict) -> tuple[RunDir, object]:
    rec = recipe_from_dict(recipe, str(root / "recipe.toml"))
    rec.source_path = str(root / "recipe.toml")
    run = RunDir(root / "run")
    prepare_run_dir(rec, run, force=True)
    run_train(rec, run, Emitter(None, rec.name).for_stage("train"))
    return run, rec


def compress(run_root: Path, base_run: RunDir, recipe, steps: list[dict], name: str) -> tuple[dict, list[dict]]:
    """Copy a trained run and run ``steps`` on it; returns (variants, events)."""
    run = RunDir(run_root / name)
    shutil.copytree(base_run.path, run.path)
    events: list[dict] = []
    rec = recipe_from_dict({**_as_dict(recipe), "compress": steps}, recipe.source_path)
    rec.source_path = recipe.source_path
    return run_compress(rec, run, Emitter(None, rec.name, [events.append]).for_stage("compress")), events


def _as_dict(recipe) -> dict:
    from toolkit.config import to_dict

    d = to_dict(recipe)
    d.pop("compress", None)
    return d


TEXT = {"name": "text", "task": "text-classification", "seed": 0,
        "data": {"train": "reviews.tsv", "text_column": "sentence", "max_length": 32, "split": [0.6, 0.3, 0.1]},
        "model": {"source": "builtin:bert-tiny", "vocab_size": 300},
        "train": {"max_steps": 60, "batch_size": 32, "lr": 2e-3, "threads": 1, "checkpoint_every": 0}}
DIGITS = {"name": "digits", "task": "image-classification", "seed": 0,
          "data": {"train": "builtin:digits", "limit": 600},
          "model": {"source": "builtin:cnn-small"},
          "train": {"max_steps": 150, "batch_size": 32, "lr": 3e-3, "threads": 1, "checkpoint_every": 0}}


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("text")
    sentiment_tsv(root / "reviews.tsv")
    return trained_run(root, TEXT)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    return trained_run(tmp_path_factory.mktemp("digits"), DIGITS)


def float_and_data(run: RunDir, recipe, variants) -> tuple[Path, common.SplitData, object]:
    """The base's float ONNX export and the encoded splits (the reference every INT8 variant is held to)."""
    from toolkit.compress.context import Context
    from toolkit.events import null_emitter

    ctx = Context(recipe=recipe, run=run, emit=null_emitter("compress"))
    ctx.cache["variants"] = variants
    path = parent_onnx(variants["base"], ctx, run.path / "float-ref")
    return path, common.split_data(ctx, variants["base"]), ctx


def logits(path: Path, data: common.SplitData) -> np.ndarray:
    session = onnxrt.open_session(path)
    return np.concatenate([onnxrt.logits(session, b) for b in common.batches(data.validation, data.collate)])


def weights(path: Path) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in onnx.load(str(path)).graph.initializer}


# ---- dynamic INT8 of a transformer ---------------------------------------------------------------------------

def test_dynamic_int8_is_4x_smaller_and_close_to_float(text_run, tmp_path):
    run, rec = text_run
    variants, events = compress(tmp_path, run, rec, [{"method": "quantize", "target": "x86-avx2"}], "dyn")
    v = variants["quantize"]
    ref_path, data, _ = float_and_data(RunDir(tmp_path / "dyn"), rec, variants)
    ratio = v.onnx.stat().st_size / ref_path.stat().st_size
    # bert-tiny is Linear/embedding-heavy: INT8 weights are a quarter of float32, plus scales and graph overhead
    assert ratio < 0.30, ratio
    assert v.info["size_bytes"] == v.onnx.stat().st_size
    a, b = logits(ref_path, data), logits(v.onnx, data)
    assert len(a) == len(data.validation) >= 90
    assert common.cosine_similarity(a, b) > 0.99
    assert (a.argmax(-1) == b.argmax(-1)).mean() >= 0.95
    # the guard's verdict is the validation accuracy measured independently here
    acc_q = float((b.argmax(-1) == np.array([it["labels"] for it in data.validation])).mean())
    assert v.info["validation"]["variant"] == pytest.approx(acc_q)
    assert v.info["optimized"]["fusions"]["Attention"] == 2  # ORT's fusions ran before quantizing
    assert v.info["quantized_op_types"]["Attention"] == 2
    # bundle files beside the graph, so the folder works alone
    for name in ("tokenizer.json", "labels.json", "preprocess.json"):
        assert (v.path / name).is_file()


@pytest.mark.parametrize("target,reduce_range,qmax", [("x86-avx2", True, 64), ("raspberry-pi-4", False, 127)])
def test_dynamic_weights_follow_the_target(text_run, tmp_path, target, reduce_range, qmax):
    run, rec = text_run
    variants, _ = compress(tmp_path, run, rec, [{"method": "quantize", "target": target, "optimize": False}], target)
    v = variants["quantize"]
    model = onnx.load(str(v.onnx))
    ops = {n.op_type for n in model.graph.node}
    assert "MatMulInteger" in ops and "DynamicQuantizeLinear" in ops
    int8 = [w for w in weights(v.onnx).values() if w.dtype == np.int8 and w.size > 64]
    assert int8, "no int8 weight tensors"
    top = max(int(np.abs(w.astype(np.int32)).max()) for w in int8)
    # reduce_range: 7-bit weights ([-64, 63]); without it the per-channel max reaches 127
    assert top <= 64 if reduce_range else top > 64
    assert top <= qmax
    assert v.info["reduce_range"] is reduce_range


# ---- static INT8 of a CNN -------------------------------------------------------------------------------------

@pytest.mark.parametrize("target", ["x86-avx2", "raspberry-pi-4"])
def test_static_int8_format_per_target(digits_run, tmp_path, target):
    run, rec = digits_run
    step = {"method": "quantize", "scheme": "int8-static", "target": target, "calibration_samples": 64}
    variants, events = compress(tmp_path, run, rec, [step], target)
    v = variants["quantize"]
    model = onnx.load(str(v.onnx))
    ops = [n.op_type for n in model.graph.node]
    inits = weights(v.onnx)
    conv_w = [inits[n.input[3]] for n in model.graph.node if n.op_type == "QLinearConv"]
    if target == "x86-avx2":  # U8S8 QOperator reduce_range
        assert "QLinearConv" in ops and "Conv" not in ops
        zps = [inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert zps and all(z.dtype == np.uint8 for z in zps)
        assert conv_w and all(w.dtype == np.int8 and np.abs(w.astype(int)).max() <= 64 for w in conv_w)
    else:  # S8S8 QDQ: float Conv nodes fed by DequantizeLinear, int8 activations and full-range int8 weights
        assert "QLinearConv" not in ops and "Conv" in ops
        dq = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
        q = [n for n in model.graph.node if n.op_type == "QuantizeLinear"]
        assert q and all(inits[n.input[2]].dtype == np.int8 for n in q)
        wts = [inits[n.input[0]] for n in dq if n.input[0] in inits and inits[n.input[0]].ndim == 4]
        assert wts and all(w.dtype == np.int8 for w in wts) and max(np.abs(w.astype(int)).max() for w in wts) > 64
    assert v.info["calibration"] == {"method": "MinMax", "samples": 64, "split": "train"}
    ref_path, data, _ = float_and_data(RunDir(tmp_path / target), rec, variants)
    a, b = logits(ref_path, data), logits(v.onnx, data)
    assert common.cosine_similarity(a, b) > 0.98
    assert v.info["validation"]["parent"] > 0.6  # a trained CNN, so the comparison means something
    # the global average pool (ReduceMean) has no INT8 kernel: the step says so
    assert v.info["float_op_types"].get("ReduceMean") == 1
    assert any(e["kind"] == "log" and "ReduceMean" in e["message"] and "stay in float" in e["message"] for e in events)


def test_static_calibration_methods_differ(digits_run, tmp_path):
    run, rec = digits_run
    steps = [{"name": m.lower(), "from": "base", "method": "quantize", "scheme": "int8-static", "calibration_method": m,
              "calibration_samples": 64, "target": "x86-avx2"} for m in ("MinMax", "Percentile")]
    variants, _ = compress(tmp_path, run, rec, steps, "calib")
    scales = [{k: v for k, v in weights(variants[s["name"]].onnx).items() if k.endswith("_scale") and v.ndim == 0}
              for s in steps]
    common_keys = sorted(set(scales[0]) & set(scales[1]))
    assert common_keys
    # Percentile (99.999 %) drops the extreme tail of each activation histogram: never a wider range than
    # MinMax's, and narrower where the tail is not a hard bound (ReLU6 outputs are clipped at 6 either way)
    assert all(scales[1][k] <= scales[0][k] * (1 + 1e-6) for k in common_keys)
    assert any(scales[1][k] < scales[0][k] * (1 - 1e-5) for k in common_keys)
    assert scales[0]["pixel_values_scale"] == pytest.approx(1 / 255)  # digits scaled to [0, 1]: MinMax sees 0..1


def test_fp16_halves_the_file(text_run, tmp_path):
    run, rec = text_run
    variants, _ = compress(tmp_path, run, rec, [{"method": "fp16"}], "fp16")
    v = variants["fp16"]
    ref_path, data, _ = float_and_data(RunDir(tmp_path / "fp16"), rec, variants)
    assert 0.45 < v.onnx.stat().st_size / ref_path.stat().st_size < 0.6
    model = onnx.load(str(v.onnx))
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.INT64  # io types kept
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert common.cosine_similarity(logits(ref_path, data), logits(v.onnx, data)) > 0.999


# ---- the accuracy guard ----------------------------------------------------------------------------------------

def outlier_mlp(path: Path, input_outlier: bool = False) -> Path:
    """An MLP on 8x8 digits with one hidden unit scaled by 1000 (and its outgoing weights by 1/1000): the same
    function in float, but per-tensor INT8 activations of fc2's input lose every other unit. ``input_outlier``
    does the same to one pixel of fc1's input, so keeping either layer alone in float cannot save the model."""
    import torch
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    y = torch.tensor(y)
    torch.manual_seed(0)

    class MLP(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2 = torch.nn.Linear(64, 32), torch.nn.Linear(32, 10)

            self.register_buffer("gain", torch.ones(64))

        def forward(self, pixel_values):
            x = (pixel_values.flatten(1) * self.gain).unsqueeze(1)  # (B, 1, 64)
            h = torch.relu(self.fc1(x))  # (B, 1, 32): a 3-D input exports as MatMul, which dynamic INT8 covers
            return self.fc2(h).squeeze(1)

    m = MLP()
    opt = torch.optim.Adam(m.parameters(), 1e-2)
    for _ in range(300):
        idx = torch.randint(0, len(x), (64,))
        loss = torch.nn.functional.cross_entropy(m(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.no_grad():
        k = int(torch.relu(m.fc1(x.flatten(1))).mean(0).argmax())  # a unit that is active
        before = m(x)
        m.fc1.weight[k] *= 1000
        m.fc1.bias[k] *= 1000
        m.fc2.weight[:, k] /= 1000
        if input_outlier:
            p = int(x.flatten(1).mean(0).argmax())  # a pixel that is usually bright
            m.gain[p] = 1000.0
            m.fc1.weight[:, p] /= 1000
        assert torch.allclose(m(x), before, atol=1e-3)
        torch.onnx.export(m, (x[:2],), str(path), input_names=["pixel_values"], output_names=["logits"],
                          dynamic_axes={"pixel_values": {0: "batch"}, "logits": {0: "batch"}}, opset_version=18,
                          dynamo=False)
    return path


@pytest.mark.parametrize("budget", [0.0, 0.02])
def test_guard_keeps_the_sensitive_layer_in_float(tmp_path, budget):
    outlier_mlp(tmp_path / "mlp.onnx")
    rec = recipe_from_dict({"name": "guard", "task": "image-classification", "data": {"train": "builtin:digits"},
                            "model": {"source": "mlp.onnx"}, "train": {"enabled": False},
                            "compress": [{"method": "quantize", "max_accuracy_drop": budget}]}, str(tmp_path / "r.toml"))
    rec.source_path = str(tmp_path / "r.toml")
    run = RunDir(tmp_path / "run")
    prepare_run_dir(rec, run, force=True)
    run_train(rec, run, Emitter(None, "guard").for_stage("train"))
    events: list[dict] = []
    v = run_compress(rec, run, Emitter(None, "guard", [events.append]).for_stage("compress"))["quantize"]
    g = v.info["guard"]
    assert g["baseline"] - g["compressed"] > 0.3  # INT8 everywhere breaks this model...
    assert v.info["layers_in_float"] == ["fc2"]  # ...and fc2, whose input has the outlier, is the layer to keep
    assert g["sensitivity"]["fc2"] > 0.3 > g["sensitivity"]["fc1"]
    assert v.within_budget is True and g["baseline"] - g["kept"] <= budget + 1e-9
    # fc2 really runs in float: its MatMul is still there, fc1's is not
    names = {n.name: n.op_type for n in onnx.load(str(v.onnx)).graph.node}
    assert names.get("/fc2/MatMul") == "MatMul" and "/fc1/MatMul" not in names
    assert any("guard" in e.get("message", "") and "sensitivity" in e.get("message", "") for e in events)


def test_over_budget_variant_is_kept_flagged_and_explained(tmp_path):
    outlier_mlp(tmp_path / "mlp.onnx", input_outlier=True)
    rec = recipe_from_dict({"name": "guard", "task": "image-classification", "data": {"train": "builtin:digits"},
                            "model": {"source": "mlp.onnx"}, "train": {"enabled": False},
                            "compress": [{"method": "quantize", "max_accuracy_drop": 0.01}]}, str(tmp_path / "r.toml"))
    rec.source_path = str(tmp_path / "r.toml")
    run = RunDir(tmp_path / "run")
    prepare_run_dir(rec, run, force=True)
    run_train(rec, run, Emitter(None, "guard").for_stage("train"))
    events: list[dict] = []
    v = run_compress(rec, run, Emitter(None, "guard", [events.append]).for_stage("compress"))["quantize"]
    assert v.within_budget is False and v.info["layers_in_float"] == []  # INT8 kept, flagged
    assert v.info["guard"]["sensitivity"].keys() == {"fc1", "fc2"}
    assert "lost more than the budget of 0.01" in v.info["note"] and "kept and flagged" in v.info["note"]
    warnings = [e["message"] for e in events if e["kind"] == "log" and e["level"] == "warning"]
    assert any("over its accuracy budget" in m for m in warnings)
    assert any("no setting met the budget" in m for m in warnings)
    assert events[-1]["kind"] == "done"  # the run goes on
    assert json.loads((run.variant("quantize") / "variant.json").read_text())["within_budget"] is False


def test_guard_search_order_and_evaluations():
    # the metric a setting gets: layer "b" matters most, "c" a little, "a" not at all
    effect = {"a": 0.0, "b": 0.05, "c": 0.02}
    calls: list[set[str]] = []

    def evaluate(kept: set[str]) -> float:
        calls.append(set(kept))
        return 0.80 + sum(effect[k] for k in kept)

    r = guard(evaluate, baseline=0.88, candidates=["a", "b", "c"], budget=0.015)
    assert r.within_budget and r.kept_in_float == ["b", "c"] and r.metric == pytest.approx(0.87)
    assert r.sensitivity == pytest.approx({"a": 0.0, "b": 0.05, "c": 0.02})
    assert calls == [set(), {"a"}, {"b"}, {"c"}, {"b", "c"}] and r.evaluations == 5


def test_guard_within_budget_needs_one_evaluation():
    calls = []
    r = guard(lambda kept: calls.append(kept) or 0.875, 0.88, ["a", "b"], 0.01)
    assert r.within_budget and r.kept_in_float == [] and r.sensitivity == {} and len(calls) == 1


def test_guard_unreachable_budget_keeps_int8_and_flags_it():
    r = guard(lambda kept: 0.5 + 0.01 * len(kept), 0.9, ["a", "b", "c"], 0.01)
    assert not r.within_budget and r.kept_in_float == [] and r.metric == 0.5
    # the best partial setting tried is reported; keeping *every* group in float (the parent) is never tried
    assert r.best_partial["kept_in_float"] == ["a", "b"] and r.best_partial["metric"] == pytest.approx(0.52)


def test_guard_budget_for_lower_is_better_metrics_is_relative():
    assert within(10.09, 10.0, 0.01, higher_is_better=False)
    assert not within(10.2, 10.0, 0.01, higher_is_better=False)
    assert degradation(0.87, 0.88) == pytest.approx(0.01)
    assert degradation(math.nan, 0.88) == math.inf
    r = guard(lambda kept: 12.0 - 2.0 * ("x" in kept), 10.0, ["x", "y"], 0.05, higher_is_better=False)
    assert r.within_budget and r.kept_in_float == ["x"]


# ---- bad input ---------------------------------------------------------------------------------------------------

def test_model_with_nothing_to_quantize_names_the_float_ops(tmp_path):
    shutil.copy(FIXTURES / "no_weights.onnx", tmp_path / "no_weights.onnx")
    shutil.copy(FIXTURES / "no_weights.toml", tmp_path / "no_weights.toml")
    rec = load_recipe(tmp_path / "no_weights.toml")
    run = RunDir(tmp_path / "run")
    prepare_run_dir(rec, run, force=True)
    run_train(rec, run, Emitter(None, "x").for_stage("train"))
    with pytest.raises(UserError, match=r"nothing to quantize.*stay in float: .*Tanh 1") as e:
        run_compress(rec, run, Emitter(None, "x").for_stage("compress"))
    assert "\n" not in str(e.value) and "int8-static" in str(e.value)
    assert not (run.variant("quantize") / "variant.json").exists()


def test_pt2e_needs_a_pytorch_parent(tmp_path):
    shutil.copy(FIXTURES / "no_weights.onnx", tmp_path / "no_weights.onnx")
    shutil.copy(FIXTURES / "pt2e_onnx_parent.toml", tmp_path / "r.toml")
    rec = load_recipe(tmp_path / "r.toml")
    run = RunDir(tmp_path / "run")
    prepare_run_dir(rec, run, force=True)
    run_train(rec, run, Emitter(None, "x").for_stage("train"))
    with pytest.raises(UserError, match="pt2e.*PyTorch model.*'base'"):
        run_compress(rec, run, Emitter(None, "x").for_stage("compress"))


def test_nodes_to_exclude_must_exist(digits_run, tmp_path):
    run, rec = digits_run
    with pytest.raises(UserError, match="nodes_to_exclude: no node '/classifer/Gemm'.*did you mean '/model/classifier/Gemm'"):
        compress(tmp_path, run, rec, [{"method": "quantize", "nodes_to_exclude": ["/classifer/Gemm"]}], "x")


def test_unknown_op_type_is_named(digits_run, tmp_path):
    run, rec = digits_run
    with pytest.raises(UserError, match="op_types: .*cannot quantize 'Matmul'.*did you mean 'MatMul'"):
        compress(tmp_path, run, rec, [{"method": "quantize", "op_types": ["Matmul"]}], "x")


@pytest.mark.parametrize("fixture,pattern", [
    ("unknown_method.toml", r"unknown method 'quantise'; did you mean 'quantize'\?"),
    ("empty_calibration.toml", r"calibration_samples = 0: an empty calibration set"),
    ("unknown_key.toml", r"unknown key 'calibration_sample'.*did you mean 'calibration_samples'\?"),
    ("bad_scheme.toml", r"scheme = 'int8-dynamc' is not a scheme; did you mean 'int8-dynamic'\?"),
    ("unknown_target.toml", r"target: unknown target 'raspbery-pi-4'.*did you mean 'raspberry-pi-4'\?"),
    ("bad_from.toml", r"from = 'student' is not an earlier variant"),
    ("bad_sparsity.toml", r"sparsity"),
])
def test_bad_steps_are_one_line_user_errors(fixture, pattern):
    from toolkit.registry import METHODS

    if fixture == "bad_sparsity.toml" and "prune" not in METHODS:
        pytest.skip("the prune method is not in this build")
    with pytest.raises(UserError, match=pattern) as e:
        load_recipe(FIXTURES / fixture)
    assert "\n" not in str(e.value) and fixture in str(e.value)
