"""image-classification with Hugging Face models a user brings as a folder: every family through prepare, a few
training steps, structured and unstructured pruning, static INT8, ONNX export verified against PyTorch on real
samples, and quality; preprocessing exactly as the folder's image processor says.

The data are scikit-learn's 8x8 digits written as PNG class folders, half grey and half RGB, at three sizes.
"""
from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from toolkit.config import Recipe
from toolkit.data import load_splits
from toolkit.errors import UserError
from toolkit.tasks import get_task

ROOT = Path(__file__).resolve().parents[2]


def _load(name: str, path: Path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


V = _load("vision_families", ROOT / "tests" / "arch" / "vision_families.py")
kit = _load("compress_kit", ROOT / "tests" / "compress" / "test_distill.py")  # runs, steps, contexts
TASK = get_task("image-classification")
CPU = torch.device("cpu")
CLASSES = ["0", "1", "2"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> Path:
    """90 digits of classes 0-2 as PNGs: every other one RGB, sizes 16, 24 and 40 px (nearest upscaling)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    root = tmp_path_factory.mktemp("digits")
    picked = [(img, y) for img, y in zip(d.images, d.target) if y < 3][:90]
    for i, (img, y) in enumerate(picked):
        side = (16, 24, 40)[i % 3]
        im = Image.fromarray((img * 255 / 16).astype(np.uint8)).resize((side, side), Image.Resampling.NEAREST)
        (root / str(y)).mkdir(exist_ok=True)
        (im.convert("RGB") if i % 2 else im).save(root / str(y) / f"{i}.png")
    return root


def recipe_for(source: Path, data: Path, steps: int = 4) -> Recipe:
    r = Recipe(task="image-classification", name="hf", seed=0)
    r.model.source, r.data.train = str(source), str(data)
    t = r.train
    t.dropout, t.batch_size, t.lr, t.max_steps, t.warmup, t.log_every, t.checkpoint_every = 0.0, 8, 3e-3, steps, 0, 5, 0
    return r


def base_run(tmp_path: Path, family: str, digits: Path, steps: int = 4):
    """A run whose base variant is ``family`` fine-tuned ``steps`` steps on the digits: (ctx, base)."""
    recipe = recipe_for(V.save_folder(family, tmp_path / "src", num_labels=5), digits, steps)
    splits = load_splits(recipe)
    original = kit.tiny_recipe
    kit.tiny_recipe = lambda task, **_: recipe
    try:
        return kit.make_base(tmp_path / "run", "image-classification", train_steps=steps, splits=splits)
    finally:
        kit.tiny_recipe = original


def params(model) -> int:
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("family", sorted(V.FAMILIES))
def test_every_stage_works_for_the_family(tmp_path, digits, family):
    from toolkit.export.onnx import export_onnx
    from toolkit.export.verify import verify

    ctx, base = base_run(tmp_path, family, digits)
    model = TASK.load(base.model_dir).eval()
    assert model.config.model_type == family and model.config.num_labels == 3  # head fitted to the 3 classes

    pruned = kit.run_step(ctx, base, {"method": "prune", "kind": "structured", "sparsity": 0.5, "max_steps": 2,
                                      "importance": "taylor" if family == "resnet" else "l1"})
    info = pruned.info
    small = TASK.load(pruned.model_dir).eval()  # from_pretrained rebuilds the pruned shapes
    assert params(small) == info["params_after"] < 0.8 * info["params_before"] == 0.8 * params(model)
    assert info["macs_after"] < 0.8 * info["macs_before"]

    sparse = kit.run_step(ctx, base, {"method": "prune", "kind": "unstructured", "sparsity": 0.5, "max_steps": 2,
                                      "name": "sparse"})
    assert 0.45 < sparse.info["sparsity_global"] < 0.55
    weights = [m.weight for n, m in TASK.load(sparse.model_dir).named_modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) and not n.startswith("classifier")]
    assert 0.4 < sum(int((w == 0).sum()) for w in weights) / sum(w.numel() for w in weights) < 0.6

    int8 = kit.run_step(ctx, pruned, {"method": "quantize", "scheme": "int8-static", "calibration_samples": 16,
                                      "max_accuracy_drop": 1.0, "name": "int8"})  # no guard search
    import onnx

    ops = {n.op_type for n in onnx.load(str(Path(int8.path) / "model.onnx")).graph.node}
    assert ops & {"QLinearConv", "QLinearMatMul", "QuantizeLinear", "ConvInteger", "MatMulInteger"}, ops

    prepared = ctx.prepare(pruned.model_dir)  # real eval samples, preprocessed by the task
    batch = {k: np.asarray(v) for k, v in prepared.collate(prepared.eval_set).items()}
    exported = export_onnx(pruned.model_dir, tmp_path / "onnx", TASK)
    check = verify(exported, pruned.model_dir, [batch])[0]
    assert check["verified"] and check["samples"] == len(prepared.eval_set)

    quality = TASK.evaluate(small, prepared, prepared.eval_set, 16, CPU)
    assert quality["examples"] == len(prepared.eval_set) and 0 <= quality["accuracy"] <= 1
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported.files[0]), providers=["CPUExecutionProvider"])
    onnx_pred = session.run(None, {"pixel_values": batch["pixel_values"]})[0].argmax(-1)
    with torch.no_grad():
        logits = small(pixel_values=torch.from_numpy(batch["pixel_values"])).logits
    assert float(logits.std(0).mean()) > 1e-4  # outputs depend on the image: the verification above means something
    np.testing.assert_array_equal(onnx_pred, logits.argmax(-1).numpy())


@pytest.mark.parametrize("family,key", [("resnet", "hidden_sizes"), ("mobilenet_v2", "depth_multiplier")])
def test_distillation_and_fp16(tmp_path, digits, family, key):
    """A fresh, narrower student of the teacher's own family (stage widths halved, or the width multiplier),
    distilled and saved; and a float16 ONNX graph of the teacher."""
    ctx, base = base_run(tmp_path, family, digits)
    teacher = TASK.load(base.model_dir)
    v = kit.run_step(ctx, base, {"method": "distill", "max_steps": 3, "name": "kd"})
    student = TASK.load(v.model_dir)
    assert type(student) is type(teacher) and student.config.num_labels == 3
    want = ([w // 2 for w in teacher.config.hidden_sizes] if key == "hidden_sizes" else
            teacher.config.depth_multiplier / 2)
    assert getattr(student.config, key) == want
    assert v.info["params_after"] == params(student) < params(teacher) == v.info["params_before"]
    half = kit.run_step(ctx, base, {"method": "fp16", "name": "half"})
    import onnx

    graph = onnx.load(str(Path(half.path) / "model.onnx")).graph
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in graph.initializer)


def test_lora_is_refused_for_a_cnn_with_one_line(tmp_path, digits):
    from toolkit.train.lora import apply_lora

    recipe = recipe_for(V.save_folder("efficientnet", tmp_path / "src"), digits)
    recipe.train.lora.r = 4
    model = TASK.prepare(recipe, load_splits(recipe), tmp_path / "work").model
    with pytest.raises(UserError) as e:
        apply_lora(recipe, model)
    assert str(e.value) == ("LoRA by default does not apply to 'efficientnet' models (EfficientNetForImageClassification):"
                            " a CNN's weights are convolutions (depthwise ones cannot take a low-rank update) and its "
                            "parameters are few; train it fully (leave [train.lora] out) or name its plain convolutions "
                            "or linear layers in train.lora.target_modules")


def test_pixels_are_the_processors_and_preprocess_json_says_how(tmp_path, digits):
    from transformers import AutoImageProcessor

    src = V.save_folder("mobilevit", tmp_path / "src", num_labels=5)
    recipe = recipe_for(src, digits)
    splits = load_splits(recipe)
    assert {e["image"].shape for e in splits.train} >= {(16, 16), (24, 24, 3), (40, 40)}  # sizes and modes mixed
    p = TASK.prepare(recipe, splits, tmp_path / "work")
    assert p.info["mismatched"] == ["classifier.bias", "classifier.weight"]  # 5 classes -> the data's 3
    proc = AutoImageProcessor.from_pretrained(src)
    for i in (0, 1, 2):  # a 16 px grey, a 24 px RGB, a 40 px grey image
        img = (splits.train[i]["image"] * 255).round().astype(np.uint8)
        want = proc(images=np.asarray(Image.fromarray(img).convert("RGB")), return_tensors="np")["pixel_values"][0]
        got = p.collate([p.train_set[i]])["pixel_values"][0].numpy()
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
    p.save(p.model, tmp_path / "out")
    pre = json.loads((tmp_path / "out" / "preprocess.json").read_text())
    assert pre["processor"] == "MobileViTImageProcessor" and pre["channels"] == 3 and pre["image_size"] == [32, 32]
    assert [s["op"] for s in pre["steps"]] == ["convert", "resize", "center_crop", "rescale", "flip_channels"]
    assert (tmp_path / "out" / "preprocessor_config.json").is_file()
    assert p.info["channels"] == 3 and p.info["image_size"] == [32, 32]


def test_latency_samples_follow_preprocess_json(tmp_path, digits):
    recipe = recipe_for(V.save_folder("deit", tmp_path / "src"), digits)
    splits = load_splits(recipe)
    p = TASK.prepare(recipe, splits, tmp_path / "work")
    rows = TASK.latency_samples(None, splits.eval, 5, 0, 0, preprocess=p.preprocess)["pixel_values"]
    assert rows.shape == (5, 3, 32, 32)  # what the model takes, whatever the images' own sizes
    np.testing.assert_array_equal(rows, p.collate(p.eval_set[:5])["pixel_values"].numpy())
    raw = TASK.latency_samples(None, splits.eval, 6, 0, 0)["pixel_values"]  # no preprocess.json: as the data are
    assert raw.shape[0] == 6 and raw.shape[1:] in {(1, 16, 16), (3, 24, 24), (1, 40, 40), (3, 16, 16)}


def test_augmentation_applies_to_training_batches_only(tmp_path, digits):
    recipe = recipe_for(V.save_folder("resnet", tmp_path / "src"), digits)
    recipe.data.augment = ["shift", "noise"]
    p = TASK.prepare(recipe, load_splits(recipe), tmp_path / "work")
    assert p.train_set[0]["pixels"].dtype == np.uint8  # the size steps ran once, at encoding
    torch.manual_seed(3)
    a = p.collate(p.train_set[:4])["pixel_values"]
    torch.manual_seed(3)  # a checkpoint restores the global RNG: the same augmentations follow
    assert torch.equal(p.collate(p.train_set[:4])["pixel_values"], a)
    assert not torch.equal(p.collate(p.train_set[:4])["pixel_values"], a)
    assert torch.equal(p.collate(p.val_set[:4])["pixel_values"], p.collate(p.val_set[:4])["pixel_values"])


def test_a_folder_without_preprocessor_config_is_one_line(tmp_path, digits):
    src = tmp_path / "src"
    V.build("convnext").save_pretrained(src)
    with pytest.raises(UserError) as e:
        TASK.prepare(recipe_for(src, digits), load_splits(recipe_for(src, digits)), tmp_path)
    assert str(e.value) == (f"{src} has no preprocessor_config.json, which says how images are resized and "
                            f"normalised for this model: save the image processor it was trained with beside it "
                            f"(AutoImageProcessor.from_pretrained(<its hub name>).save_pretrained(folder))")


def test_a_processor_the_steps_cannot_replay_is_refused(tmp_path, digits):
    import transformers as T

    src = tmp_path / "src"
    V.build("resnet").save_pretrained(src)
    T.PoolFormerImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(src)
    with pytest.raises(UserError, match=r"preprocessor_config.json \(PoolFormerImageProcessor\): its pixel values "
                                        r"differ from the steps' by up to [0-9.]+; image-classification replays "
                                        r"resize / centre crop / rescale / normalise / channel flip"):
        TASK.prepare(recipe_for(src, digits), load_splits(recipe_for(src, digits)), tmp_path)


def test_a_pruned_resnet_learns_the_digits(tmp_path, digits):
    """Quality, not just plumbing: 300 steps take the tiny ResNet far past chance (1/3) on 18 validation digits,
    and a quarter of its channels removed plus 30 recovery steps keep most of it (measured: 1.000 -> 0.944)."""
    ctx, base = base_run(tmp_path, "resnet", digits, steps=300)
    prepared = ctx.prepare(base.model_dir)
    before = TASK.evaluate(TASK.load(base.model_dir), prepared, prepared.val_set, 32, CPU)
    pruned = kit.run_step(ctx, base, {"method": "prune", "kind": "structured", "sparsity": 0.25, "max_steps": 30})
    small = ctx.prepare(pruned.model_dir)
    after = TASK.evaluate(small.model, small, small.val_set, 32, CPU)
    print(f"validation accuracy {before['accuracy']:.3f} -> pruned {after['accuracy']:.3f} on {after['examples']}")
    assert before["accuracy"] > 0.9 and after["accuracy"] > 0.8


def _run_example(program: str, bundle: Path, given: str) -> tuple[str, float]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the examples must not need the toolkit
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / program), str(bundle), given], capture_output=True,
                          text=True, cwd=bundle, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-1500:]
    label, prob = proc.stdout.strip().splitlines()[-1].split("\t")
    return label, float(prob)


@pytest.mark.parametrize("family", ["mobilenet_v2", "deit"])
def test_the_device_example_preprocesses_as_training_did(tmp_path, digits, family):
    from toolkit.export.bundle import copy_bundle_files
    from toolkit.export.onnx import export_onnx
    from toolkit.export.ort import export_ort

    ctx, base = base_run(tmp_path, family, digits)
    bundle = tmp_path / "bundle"
    export_ort(export_onnx(base.model_dir, bundle, TASK))
    copy_bundle_files(base.model_dir, bundle)
    png = sorted((digits / "2").iterdir())[1]  # an RGB one
    image = np.asarray(Image.open(png), dtype=np.float32) / 255.0  # as the data stage reads it
    encoded = TASK.encode_bundle(base.model_dir, 0, CLASSES, {"x": [{"image": image, "label": "2"}]})
    pixels = encoded.collate(encoded.sets["x"])["pixel_values"]  # the toolkit's preprocessing of that file
    with torch.no_grad():
        probs = torch.softmax(TASK.load(base.model_dir)(pixel_values=pixels).logits[0], -1)
    labels = json.loads((bundle / "labels.json").read_text())
    for program in ("onnxruntime_classify.py", "ort_mobile_classify.py"):
        label, prob = _run_example(program, bundle, str(png))
        assert label == labels[int(probs.argmax())] and prob == pytest.approx(float(probs.max()), abs=1e-4)


def test_a_classifier_without_a_loss_is_refused(tmp_path, digits):
    import transformers as T

    src = tmp_path / "src"
    config = V.FAMILIES["deit"][0]()
    config.architectures = ["DeiTForImageClassificationWithTeacher"]  # distilled DeiT: inference heads only
    T.DeiTForImageClassificationWithTeacher(config).save_pretrained(src)
    V.processor("deit").save_pretrained(src)
    with pytest.raises(UserError, match="DeiTForImageClassificationWithTeacher computes no loss from labels, so it "
                                        "cannot be trained here"):
        TASK.prepare(recipe_for(src, digits), load_splits(recipe_for(src, digits)), tmp_path)


@pytest.mark.slow
def test_a_pruned_model_exports_to_executorch_and_torchscript(tmp_path, digits):
    pytest.importorskip("executorch.exir", reason="ExecuTorch is an optional extra")
    from toolkit.export.executorch import export_pte
    from toolkit.export.torchscript import export_torchscript
    from toolkit.export.verify import verify

    ctx, base = base_run(tmp_path, "convnext", digits)
    pruned = kit.run_step(ctx, base, {"method": "prune", "kind": "structured", "sparsity": 0.5, "max_steps": 1})
    prepared = ctx.prepare(pruned.model_dir)
    batch = {k: np.asarray(v) for k, v in prepared.collate(prepared.eval_set[:4]).items()}
    example = {"pixel_values": torch.from_numpy(batch["pixel_values"][:2])}
    for result in (export_pte(pruned.model_dir, tmp_path / "pte", TASK, example),
                   export_torchscript(pruned.model_dir, tmp_path / "ts", TASK, example)):
        assert result.lowered, result.reason
        assert all(c["verified"] for c in verify(result, pruned.model_dir, [batch])), result.format
    from toolkit.export.bundle import copy_bundle_files

    copy_bundle_files(pruned.model_dir, tmp_path / "pte")  # the device bundle: the .pte and its preprocessing
    png = sorted((digits / "1").iterdir())[0]  # a grey one, for a model that takes RGB
    image = np.asarray(Image.open(png), dtype=np.float32) / 255.0
    encoded = TASK.encode_bundle(pruned.model_dir, 0, CLASSES, {"x": [{"image": image, "label": "1"}]})
    with torch.no_grad():
        logits = TASK.load(pruned.model_dir)(pixel_values=encoded.collate(encoded.sets["x"])["pixel_values"]).logits
    probs = torch.softmax(logits[0], -1)
    label, prob = _run_example("executorch_classify.py", tmp_path / "pte", str(png))
    assert label == CLASSES[int(probs.argmax())] and prob == pytest.approx(float(probs.max()), abs=1e-4)
