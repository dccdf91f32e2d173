"""Quantization-aware training (toolkit/compress/qat.py), exported as INT8 QDQ ONNX and run with ONNX Runtime.

Independent checks: the INT8 graph computes what the fake-quantized PyTorch model computes (so training saw the
same rounding ORT applies), the QAT variant runs in ORT close to its float weights, and its stored tensors are
about a quarter of the float model's bytes.
"""
from __future__ import annotations

import importlib.util
import tomllib
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from toolkit.compress import qat as Q
from toolkit.variants import Variant
from toolkit.errors import UserError
from toolkit.targets import int8_format
from toolkit.tasks import get_task

_spec = importlib.util.spec_from_file_location("compress_kit", Path(__file__).with_name("test_distill.py"))
kit = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(kit)  # the tiny runs of test_distill.py (splits, recipes, a base variant)
one_thread = kit.one_thread


def ort_run(path: Path, batch: dict) -> np.ndarray:
    from toolkit import onnxrt

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, onnxrt.feed(session, batch))[0]


@pytest.mark.parametrize("task,target", [("text-classification", "x86-avx2"), ("image-classification", "android-arm64")])
def test_int8_graph_computes_what_the_fake_quantized_model_computes(tmp_path, task, target):
    """U8S8 with 7-bit weights (AVX2 without VNNI) and S8S8 (ARM): ORT's rounding is the rounding QAT trained with."""
    from toolkit.export.onnx import export_onnx

    ctx, base = kit.make_base(tmp_path / "run", task, train_steps=40)
    prepared = ctx.prepare(base.model_dir)
    model = prepared.model
    fmt = int8_format(target)
    fq = Q.FakeQuantizer(model, fmt)
    Q.calibrate(fq, prepared, 8, 4, torch.device("cpu"))
    batch = prepared.collate(prepared.val_set[:8])
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        fake = model.eval()(**inputs).logits.numpy()
    ranges = fq.ranges()
    fq.remove()
    with torch.no_grad():
        real = model(**inputs).logits.numpy()
    prepared.save(model, tmp_path / "float")
    src = export_onnx(tmp_path / "float", tmp_path / "onnx", task, example_inputs=inputs).files[0]
    overrides, float_matmuls, matched = Q.learned_overrides(src, model, ranges)
    assert matched == len(Q.quantized_layers(model))  # every layer's learned range reached its ONNX node
    reader = Q._Reader(src, prepared, 16)
    Q._quantize(src, tmp_path / "int8.onnx", reader, fmt, overrides, float_matmuls)
    got = ort_run(tmp_path / "int8.onnx", batch)
    # per example: the largest logit difference to the fake-quantized and to the float model. A value lying
    # within float rounding of a quantization step's edge may round the other way (ORT divides by the scale,
    # torch multiplies by its inverse), so a few examples differ by one step somewhere: compare medians.
    to_fake, to_float = np.median(np.abs(got - fake).max(-1)), np.median(np.abs(got - real).max(-1))
    assert to_float > 1e-4  # quantization changed the outputs...
    assert to_fake < 0.2 * to_float, (to_fake, to_float)  # ...and the change is the one QAT trained with


def test_qat_variant_runs_in_onnx_runtime_small_and_close(tmp_path):
    ctx, base = kit.make_base(tmp_path, "text-classification", train_steps=40, hidden=64)
    step = SimpleNamespace(name="qat", method="quantize", from_="base", scheme="qat", target="host", qat_steps=10,
                           qat_lr=1e-4, calibration_samples=16, max_accuracy_drop=0.0)
    v = Q.run_qat(step, base, ctx)
    assert v.model_dir is None and v.onnx == ctx.run.variant("qat") / "model.onnx"  # export keeps this INT8 graph
    for name in ("tokenizer.json", "labels.json", "preprocess.json"):
        assert (v.path / name).is_file(), name
    assert sorted(p.name for p in (v.path / "checkpoints").glob("step-*")) == ["step-000010"]
    assert "fake_quantize_per_channel_affine" in v.info["method_detail"]
    # runs in ORT on real examples, close to its own float weights
    float_model = get_task("text-classification").load(v.info["float_model_dir"]).eval()
    prepared = ctx.prepare(base.model_dir)
    batch = prepared.collate(prepared.eval_set)
    got = ort_run(v.onnx, batch)
    with torch.no_grad():
        want = float_model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.numpy()
    cosine = (got * want).sum(-1) / (np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1))
    assert cosine.min() > 0.99 and (got.argmax(-1) == want.argmax(-1)).mean() >= 0.9
    # weights stored in 8 bits: about a quarter of the float bytes
    graph = onnx.load(str(v.onnx)).graph
    quantized = [i for i in graph.initializer if i.name.endswith("_quantized") and len(i.dims) >= 2]
    assert len(quantized) == 14 + 3  # 12 in the layers, pooler, classifier + word/position/type embeddings
    assert all(i.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for i in quantized)
    stored = sum(onnx.numpy_helper.to_array(i).nbytes for i in graph.initializer)
    float_bytes = 4 * sum(p.numel() for p in float_model.parameters())
    assert stored < 0.3 * float_bytes, (stored, float_bytes)
    assert v.info["initializer_bytes"] == stored


def test_qat_needs_a_classifier_and_a_pytorch_parent(tmp_path):
    table = tomllib.loads((kit.FIXTURES / "qat_seq2seq.toml").read_text())["compress"][0]
    step = SimpleNamespace(name="qat", **{k: v for k, v in table.items() if k != "method"})
    ctx, base = kit.make_base(tmp_path / "s2s", "seq2seq", train_steps=0)
    with pytest.raises(UserError, match="for seq2seq use scheme = \"int8-dynamic\""):
        Q.run_qat(step, base, ctx)
    ctx, _ = kit.make_base(tmp_path / "tc", "text-classification", train_steps=0)
    onnx_only = Variant("int8", "base", "quantize", ctx.run.variant("int8"), onnx=ctx.run.variant("int8") / "model.onnx")
    with pytest.raises(UserError, match="needs a PyTorch model"):
        Q.run_qat(step, onnx_only, ctx)


@pytest.mark.slow
def test_qat_loses_less_than_post_training_quantization_on_digits(tmp_path):
    """scikit-learn's 8x8 digits, cnn-small, 7-bit weights (AVX2 without VNNI): post-training quantization through
    the same QDQ pipeline (calibrated ranges, no fine-tune) against QAT, on the same validation examples."""
    from toolkit.data import load_splits
    from toolkit.export.onnx import export_onnx

    recipe = kit.tiny_recipe("image-classification")
    recipe.data.train = "builtin:digits"
    ctx, base = kit.make_base(tmp_path / "run", "image-classification", train_steps=300, splits=load_splits(recipe))
    fmt = int8_format("x86-avx2")
    prepared = ctx.prepare(base.model_dir)
    probe = list(prepared.val_set)[:256]
    model = prepared.model
    fq = Q.FakeQuantizer(model, fmt)
    Q.calibrate(fq, prepared, 32, 8, torch.device("cpu"))
    ranges = fq.ranges()
    fq.remove()
    example = {k: v for k, v in prepared.collate(probe[:2]).items() if k != "labels"}
    src = export_onnx(base.model_dir, tmp_path / "onnx", "image-classification", example_inputs=example).files[0]
    overrides, float_matmuls, _ = Q.learned_overrides(src, model, ranges)
    Q._quantize(src, tmp_path / "ptq.onnx", Q._Reader(src, prepared, 128), fmt, overrides, float_matmuls)
    parent, labels = Q.onnx_logits(src, prepared, probe)
    ptq, _ = Q.onnx_logits(tmp_path / "ptq.onnx", prepared, probe)
    step = SimpleNamespace(name="qat", method="quantize", from_="base", scheme="qat", target="x86-avx2", qat_steps=100,
                           qat_lr=1e-3, calibration_samples=128, max_accuracy_drop=0.0)
    v = Q.run_qat(step, base, ctx)
    qat, _ = Q.onnx_logits(v.onnx, prepared, probe)
    acc = lambda logits: float((logits.argmax(-1) == labels).mean())  # noqa: E731
    assert v.info["accuracy_int8"] == pytest.approx(acc(qat))
    assert acc(qat) >= acc(ptq)  # the INT8 model QAT ships is at least as accurate as PTQ's...
    assert acc(qat) >= acc(parent) - 0.005  # ...and loses nothing (half a point of noise) against the parent
    # its own quantization loss (its float weights -> INT8) is no larger than PTQ's
    assert v.info["accuracy_float"] - v.info["accuracy_int8"] <= acc(parent) - acc(ptq) + 1e-9
