"""Image folders, builtin:digits, constant images, and seeded augmentation."""
from __future__ import annotations


import numpy as np
import pytest
import torch

from toolkit.data import load_splits
from toolkit.data.images import augment_image
from toolkit.errors import UserError


def gradient(h: int, w: int, offset: int = 0) -> np.ndarray:
    return (np.arange(h * w).reshape(h, w) * 7 + offset) % 256


def all_splits(path) -> dict:
    return {"train": path, "validation": path, "eval": path}


def test_grayscale_and_colour_folders(make_recipe, write_images, tmp_path):
    gray = write_images(tmp_path / "gray", {"cat": [gradient(6, 5)], "dog": [gradient(6, 5, 3)]})
    s = load_splits(make_recipe(task="image-classification", **all_splits(gray)))
    img = s.train[0]["image"]
    assert img.shape == (6, 5) and img.dtype == np.float32
    np.testing.assert_allclose(img, gradient(6, 5) / 255.0, atol=1e-7)
    assert [e["label"] for e in s.train] == ["cat", "dog"] and s.labels == ["cat", "dog"]

    rgb = np.stack([gradient(4, 4), gradient(4, 4, 1), gradient(4, 4, 2)], axis=-1)
    colour = write_images(tmp_path / "colour", {"a": [rgb], "b": [255 - rgb]})
    s = load_splits(make_recipe(task="image-classification", **all_splits(colour)))
    assert s.train[0]["image"].shape == (4, 4, 3)
    assert 0.0 <= s.train[1]["image"].min() and s.train[1]["image"].max() <= 1.0


def test_images_keep_their_own_size_and_mode(make_recipe, write_images, tmp_path):
    rgb = np.stack([gradient(5, 7), gradient(5, 7, 1), gradient(5, 7, 2)], axis=-1)
    root = write_images(tmp_path / "imgs", {"a": [gradient(8, 8), gradient(8, 8, 1)], "b": [rgb, gradient(4, 6)]})
    s = load_splits(make_recipe(task="image-classification", **all_splits(root)))
    assert sorted(e["image"].shape for e in s.train) == [(4, 6), (5, 7, 3), (8, 8), (8, 8)]
    np.testing.assert_allclose(s.train[3]["image"], gradient(4, 6) / 255.0, atol=1e-7)  # b/1.png, untouched
    assert (f"{root}: images come in 3 sizes/modes (most common 8x8 L); each is kept as it is and the model's "
            f"preprocessing converts it") in s.notes


def test_constant_images_are_dropped_and_named(make_recipe, write_images, tmp_path):
    black, white = np.zeros((5, 5)), np.full((5, 5), 255)
    root = write_images(tmp_path / "imgs", {"a": [gradient(5, 5), black, gradient(5, 5, 9)], "b": [white, gradient(5, 5, 4)]})
    s = load_splits(make_recipe(task="image-classification", **all_splits(root)))
    assert len(s.train) == 3
    assert all(e["image"].min() < e["image"].max() for e in s.train)
    message = (f"{root}: dropped 2 constant images (every pixel the same value, e.g. all black): a/1.png, b/0.png")
    assert message in s.notes
    kept = load_splits(make_recipe(task="image-classification", flag_constant_images=False, **all_splits(root)))
    assert len(kept.train) == 5


def test_unknown_class_in_eval_folder(make_recipe, write_images, tmp_path):
    train = write_images(tmp_path / "train", {"a": [gradient(4, 4)], "b": [gradient(4, 4, 1)]})
    eval_ = write_images(tmp_path / "eval", {"a": [gradient(4, 4)], "c": [gradient(4, 4, 1)]})
    with pytest.raises(UserError, match=r"eval: unknown label 'c' in eval data \(c/0.png\); the training data's labels are: a, b"):
        load_splits(make_recipe(task="image-classification", train=train, validation=train, eval=eval_))


def test_folder_without_class_subfolders(make_recipe, data_dir):
    with pytest.raises(UserError, match=r"images_flat: no class subfolders; put the images of each class in a subfolder"):
        load_splits(make_recipe(task="image-classification", train=data_dir / "images_flat"))


def test_unreadable_image_is_named(make_recipe, data_dir):
    with pytest.raises(UserError) as info:
        load_splits(make_recipe(task="image-classification", train=data_dir / "images_broken"))
    assert str(info.value).startswith(f"{data_dir / 'images_broken' / 'dog' / '2.png'}: not a readable image")
    assert "replace or remove the file" in str(info.value)


def test_image_task_refuses_a_table(make_recipe, data_dir):
    with pytest.raises(UserError, match="image-classification reads an image folder"):
        load_splits(make_recipe(task="image-classification", train=data_dir / "reviews.csv"))


def test_builtin_digits(make_recipe):
    s = load_splits(make_recipe(task="image-classification", train="builtin:digits"))
    assert s.sizes() == {"train": 1258, "validation": 359, "eval": 180}  # 1,797 images at 0.7 / 0.2 / 0.1
    assert s.labels == [str(d) for d in range(10)]
    img = s.train[0]["image"]
    assert img.shape == (8, 8) and img.dtype == np.float32
    assert img.min() >= 0.0 and img.max() == 1.0  # 0..16 scaled by 1/16
    assert s.sources == {"train": "builtin:digits", "validation": "carved from train", "eval": "carved from train"}


def test_augment_is_seeded_pure_and_in_range():
    img = (gradient(16, 16) / 255.0).astype(np.float32)
    before = img.copy()
    steps = ["shift", "rotate", "noise"]
    a = augment_image(img, steps, torch.Generator().manual_seed(0))
    b = augment_image(img, steps, torch.Generator().manual_seed(0))
    c = augment_image(img, steps, torch.Generator().manual_seed(1))
    np.testing.assert_array_equal(a, b)  # bit-identical for the same generator state
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(img, before)  # the input is untouched
    assert a.shape == img.shape and a.dtype == np.float32 and 0.0 <= a.min() and a.max() <= 1.0
    colour = np.stack([img, img, img], axis=-1)
    assert augment_image(colour, steps, torch.Generator().manual_seed(0)).shape == (16, 16, 3)


def test_augment_draws_only_from_the_given_generator():
    img = (gradient(8, 8) / 255.0).astype(np.float32)
    g = torch.Generator().manual_seed(5)
    state = g.get_state()
    torch.manual_seed(123)
    a = augment_image(img, ["shift", "noise"], g)
    torch.manual_seed(456)  # the global RNG plays no part
    g.set_state(state)
    np.testing.assert_array_equal(a, augment_image(img, ["shift", "noise"], g))


def test_shift_moves_by_at_most_one_pixel_on_small_images():
    img = np.zeros((8, 8), np.float32)
    img[4, 4] = 1.0
    for seed in range(10):
        out = augment_image(img, ["shift"], torch.Generator().manual_seed(seed))
        (y,), (x,) = np.nonzero(out)
        assert abs(y - 4) <= 1 and abs(x - 4) <= 1


def test_missing_image_folder(make_recipe, tmp_path):
    with pytest.raises(UserError, match=r"nowhere: no such folder; check data.eval in the recipe"):
        load_splits(make_recipe(task="image-classification", train="builtin:digits", eval=tmp_path / "nowhere"))


def test_eval_folder_follows_the_builtin_training_images(make_recipe, write_images, tmp_path):
    rgb = np.stack([gradient(16, 16)] * 3, axis=-1)
    eval_ = write_images(tmp_path / "eval", {"3": [rgb], "7": [gradient(16, 16, 5)]})
    s = load_splits(make_recipe(task="image-classification", train="builtin:digits", eval=eval_))
    assert [e["image"].shape for e in s.eval] == [(8, 8), (8, 8)]
    assert any("converted 2 images to 8x8 L" in n for n in s.notes)
