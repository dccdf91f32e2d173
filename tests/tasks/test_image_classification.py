"""image-classification: tensors, channels, augmentation on the training set only, and the digits."""
from __future__ import annotations

import json
import sys
import time
import types

import numpy as np
import pytest
import torch

from toolkit.data.types import Splits
from toolkit.tasks import get_task

TASK = get_task("image-classification")
CPU = torch.device("cpu")


def test_images_become_chw_float_tensors(tmp_path, recipe_for, splits_for):
    splits = splits_for(TASK.name)
    p = TASK.prepare(recipe_for(TASK.name), splits, tmp_path)
    item = p.train_set[0]
    assert item["pixel_values"].shape == (1, 8, 8) and item["pixel_values"].dtype == torch.float32
    assert torch.equal(item["pixel_values"][0], torch.from_numpy(splits.train[0]["image"]))
    assert p.collate(p.train_set[:5])["pixel_values"].shape == (5, 1, 8, 8)
    assert p.info["tokenizer"] is None and p.tokenizer is None


def test_rgb_images_build_a_three_channel_cnn(tmp_path, recipe_for, splits_for):
    splits = splits_for(TASK.name, channels=3)
    p = TASK.prepare(recipe_for(TASK.name), splits, tmp_path)
    assert p.model.config.in_channels == 3 and p.info["channels"] == 3
    x = p.train_set[1]["pixel_values"]
    assert x.shape == (3, 8, 8) and torch.equal(x[0], torch.from_numpy(splits.train[1]["image"][:, :, 0]))


def test_images_of_another_size_are_resized_to_the_models_input(tmp_path, recipe_for, splits_for):
    splits = splits_for(TASK.name)
    odd = np.zeros((10, 8), np.float32)
    odd[:, :4] = 1.0  # bright left half, as the "left" class
    splits.validation[1] = {"image": odd, "label": "left"}
    p = TASK.prepare(recipe_for(TASK.name), splits, tmp_path)
    x = p.val_set[1]["pixel_values"]
    assert x.shape == (1, 8, 8)  # the most common training size, as the built-in CNN was made for
    assert x[:, :, :3].min() > 0.9 and x[:, :, 5:].max() < 0.1  # resized, not cropped or padded
    assert "validation: converted 1 images to 8x8 L (the model's input)" in p.info["notes"]


def test_a_cnn_folder_with_other_channels_converts_the_images(tmp_path, recipe_for, splits_for):
    p = TASK.prepare(recipe_for(TASK.name), splits_for(TASK.name, channels=3), tmp_path)
    p.save(p.model, tmp_path / "rgb")
    grey = splits_for(TASK.name)
    q = TASK.prepare(recipe_for(TASK.name, source=str(tmp_path / "rgb")), grey, tmp_path)
    x = q.train_set[0]["pixel_values"]
    assert x.shape == (3, 8, 8)  # each grey value copied to R, G and B (within a byte's rounding)
    for c in range(3):
        assert torch.allclose(x[c], torch.from_numpy(grey.train[0]["image"]), atol=1 / 255)


def test_preprocess_json_describes_the_input(tmp_path, recipe_for, splits_for):
    splits = splits_for(TASK.name)
    splits.sources = {"train": "builtin:digits"}
    p = TASK.prepare(recipe_for(TASK.name), splits, tmp_path)
    p.save(p.model, tmp_path / "out")
    pre = json.loads((tmp_path / "out" / "preprocess.json").read_text())
    assert pre == {"schema_version": 1, "task": "image-classification", "image_size": [8, 8], "channels": 1,
                   "layout": "NCHW", "dtype": "float32", "scale": "x/16", "input_names": ["pixel_values"],
                   "labels": ["left", "right"]}


@pytest.fixture
def fake_augment(monkeypatch):
    """A stand-in for toolkit.data.images.augment_image (written elsewhere): adds generator noise."""
    calls = []

    def augment_image(img, steps, generator):
        calls.append((img.shape, list(steps)))
        noise = torch.rand(img.shape, generator=generator).numpy()
        return (img + noise).astype(np.float32)

    monkeypatch.setitem(sys.modules, "toolkit.data.images", types.SimpleNamespace(augment_image=augment_image))
    return calls


def test_augmentation_applies_to_training_batches_only_and_replays(tmp_path, recipe_for, splits_for, fake_augment):
    recipe = recipe_for(TASK.name)
    recipe.data.augment = ["noise"]
    splits = splits_for(TASK.name)
    p = TASK.prepare(recipe, splits, tmp_path)
    clean = torch.stack([it["pixel_values"] for it in p.train_set[:4]])
    assert torch.equal(p.collate(p.val_set[:4])["pixel_values"], torch.stack([it["pixel_values"] for it in p.val_set[:4]]))
    assert fake_augment == []
    torch.manual_seed(7)
    a = p.collate(p.train_set[:4])["pixel_values"]
    b = p.collate(p.train_set[:4])["pixel_values"]
    torch.manual_seed(7)  # a checkpoint restores the global RNG: the same augmentations follow
    assert torch.equal(p.collate(p.train_set[:4])["pixel_values"], a)
    assert not torch.equal(a, clean) and not torch.equal(a, b)
    assert fake_augment[0] == ((8, 8), ["noise"])  # the example's own layout: (H, W) for grey images
    assert torch.equal(p.train_set[0]["pixel_values"], clean[0])  # stored items are never changed


def test_cnn_small_learns_the_digits(tmp_path, recipe_for):
    """The 8x8 scikit-learn digits: > 90 % validation accuracy in a few seconds on one core."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    ex = [{"image": (img / 16).astype(np.float32), "label": str(y)} for img, y in zip(digits.images, digits.target)]
    order = np.random.default_rng(0).permutation(len(ex))
    splits = Splits(train=[ex[i] for i in order[:1300]], validation=[ex[i] for i in order[1300:]], eval=[],
                    labels=[str(i) for i in range(10)], sources={"train": "builtin:digits"})
    recipe = recipe_for(TASK.name)
    recipe.train.dropout = 0.1
    start = time.perf_counter()
    p = TASK.prepare(recipe, splits, tmp_path)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(p.model.parameters(), lr=1e-2)
    p.model.train()
    for _ in range(5):
        for idx in torch.randperm(len(p.train_set)).split(32):
            loss = p.model(**p.collate([p.train_set[i] for i in idx])).loss
            opt.zero_grad()
            loss.backward()
            opt.step()
    metrics = TASK.evaluate(p.model, p, p.val_set, 256, CPU)
    assert metrics["accuracy"] > 0.90, metrics
    assert time.perf_counter() - start < 30
