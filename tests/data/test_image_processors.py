"""An image processor's work as plain steps (toolkit/data/images.py) and their replay in the device examples
(examples/image_preprocess.py): both must give the pixel values the transformers processor itself gives, on images
of any size and mode; a processor doing something the steps cannot say is refused."""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import transformers as T
from PIL import Image

from toolkit.data.images import check_steps, geometry, output_size, pixel_values, processor_steps

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("vision_families", ROOT / "tests" / "arch" / "vision_families.py")
V = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(V)
_spec = importlib.util.spec_from_file_location("image_preprocess", ROOT / "examples" / "image_preprocess.py")
example = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(example)

SHAPES = [(20, 30, 3), (64, 48, 3), (33, 33), (100, 17, 3), (8, 8)]  # wider, taller, square, grey, tiny


def random_images(seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in SHAPES]


@pytest.mark.parametrize("family", sorted(V.FAMILIES))
def test_steps_give_the_processors_pixel_values(family):
    proc = V.processor(family)
    steps = processor_steps(proc, 3)
    assert output_size(steps) == [V.SIZE, V.SIZE]
    for img in random_images():
        rgb = np.asarray(Image.fromarray(img).convert("RGB"))  # the processor is given what the model needs
        want = proc(images=rgb, return_tensors="np")["pixel_values"][0]
        got = pixel_values(geometry(img, steps), steps)  # grey images are converted by the steps themselves
        assert got.shape == want.shape == (3, V.SIZE, V.SIZE)
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
        from_file = example.apply_steps(Image.fromarray(img), steps)  # the device examples, from a Pillow image
        np.testing.assert_array_equal(from_file, got)


@pytest.mark.parametrize("settings", [
    {"size": {"height": 24, "width": 40}},  # a non-square resize
    {"size": {"shortest_edge": 400}},  # ConvNeXt at >= 384: a plain square resize, no crop
    {"size": {"shortest_edge": 30}, "crop_size": {"height": 40, "width": 40}, "do_center_crop": True},  # pads
    {"rescale_factor": 1 / 127.5, "rescale_offset": True, "include_top": True},  # EfficientNet's [-1, 1] scaling
    {"resample": 0}, {"resample": 3}, {"do_normalize": False},
])
def test_other_settings_are_replayed_too(settings):
    base = {"size": {"height": 32, "width": 32}}
    cls = T.EfficientNetImageProcessor if "include_top" in settings else (
        T.ConvNextImageProcessor if "shortest_edge" in settings.get("size", {}) and "crop_size" not in settings
        else T.MobileNetV2ImageProcessor if "crop_size" in settings else T.ViTImageProcessor)
    proc = cls(**{**base, **settings})
    steps = processor_steps(proc, 3)
    for img in random_images(1):
        rgb = np.asarray(Image.fromarray(img).convert("RGB"))
        want = proc(images=rgb, return_tensors="np")["pixel_values"][0]
        np.testing.assert_allclose(pixel_values(geometry(img, steps), steps), want, rtol=0, atol=1e-5)


def test_a_processor_that_does_something_else_is_refused():
    # PoolFormer reads crop_pct differently from ConvNeXt; LeViT resizes by shortest_edge / crop_pct: the probe
    # image shows the steps would not give their pixel values
    for proc in (T.PoolFormerImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                 T.LevitImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})):
        with pytest.raises(ValueError, match="its pixel values differ from the steps' by up to"):
            check_steps(proc, processor_steps(proc, 3))
    with pytest.raises(ValueError, match="size = {'longest_edge': 32}"):
        processor_steps(T.ViTImageProcessor(size={"longest_edge": 32}), 3)
    with pytest.raises(ValueError, match="do_reduce_labels = true"):
        processor_steps(T.MobileNetV2ImageProcessor(do_reduce_labels=True), 3)
    with pytest.raises(ValueError, match="the model takes 4-channel images"):
        processor_steps(T.ViTImageProcessor(), 4)


def test_a_grey_image_for_a_colour_model_gets_three_equal_channels():
    steps = processor_steps(T.ViTImageProcessor(size={"height": 16, "width": 16}, do_normalize=False), 3)
    grey = np.tile(np.linspace(0, 1, 16, dtype=np.float32), (16, 1))  # a [0, 1] float image, as the data stage has
    x = pixel_values(geometry(grey, steps), steps)
    assert x.shape == (3, 16, 16)
    np.testing.assert_array_equal(x[0], x[1])
    np.testing.assert_array_equal(x[0], x[2])
    np.testing.assert_allclose(x[0], grey, atol=0.5 / 255 + 1e-7)  # same size: only the byte rounding


def test_aspect_kept_without_a_crop_has_no_fixed_size():
    steps = processor_steps(T.MobileNetV2ImageProcessor(size={"shortest_edge": 20}, do_center_crop=False), 3)
    assert output_size(steps) is None
    assert geometry(np.zeros((10, 30), np.uint8), steps).shape == (20, 60, 3)
