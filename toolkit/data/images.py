"""Image folders, constant-image checks, training-time augmentation and the image processors' preprocessing.

An image folder holds one subfolder per class, named after the class; every image file inside (png, jpg, bmp,
gif, tif, webp) is one example. Images become float32 numpy arrays in [0, 1]: grayscale ones (H, W), colour
ones (H, W, 3), each at its own size and in its own mode: the model's preprocessing (the task) resizes and
converts them, once per example. The one exception keeps splits comparable with the built-in 8x8 digits: an image
folder read for validation/eval beside ``builtin:digits`` training data is converted to the digits' size and mode
(``target``), with a note.

The preprocessing a Hugging Face image processor does (resize, centre crop, rescale, normalise, channel flip) is
resolved once into a list of plain steps (``processor_steps``), checked against the processor itself on a probe
image, recorded in preprocess.json and replayed with Pillow + numpy (``geometry``, ``pixel_values``), the same way
here and in the device examples (``examples/image_preprocess.py``).
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from toolkit.data.readers import Part, missing_file
from toolkit.data.split import natural_key
from toolkit.errors import UserError

if TYPE_CHECKING:
    import torch

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp"}
SHOW = 5  # file names listed in a note


def _listed(names: list[str]) -> str:
    more = f" and {len(names) - SHOW} more" if len(names) > SHOW else ""
    return ", ".join(names[:SHOW]) + more


def read_image_folder(path: Path, shown: str, key: str,
                      target: tuple[tuple[int, int], str] | None = None) -> tuple[Part, tuple[tuple[int, int], str]]:
    """Examples {"image", "label"} from a folder of class subfolders.

    Args:
        target: ((width, height), mode) to convert every image to; None: each image keeps its own.

    Returns:
        the examples (``where`` = "class/file.png") and ``target``, for the other splits.

    Raises:
        UserError: a missing folder, no class subfolders, no images, or an image Pillow cannot read.
    """
    from PIL import Image, UnidentifiedImageError

    if not path.exists():
        raise missing_file(path, key, "folder")
    classes = sorted((d for d in path.iterdir() if d.is_dir() and not d.name.startswith(".")),
                     key=lambda d: natural_key(d.name))
    if not classes:
        raise UserError(f"{path}: no class subfolders; put the images of each class in a subfolder named after "
                        f"the class (e.g. {path.name}/cat/1.png, {path.name}/dog/2.png)")
    files: list[tuple[Path, str]] = []
    skipped: list[str] = []
    for d in classes:
        for f in sorted(d.iterdir(), key=lambda f: natural_key(f.name)):
            if f.name.startswith(".") or f.is_dir():
                continue
            if f.suffix.lower() in IMAGE_SUFFIXES:
                files.append((f, d.name))
            else:
                skipped.append(f"{d.name}/{f.name}")
    if not files:
        raise UserError(f"{path}: no images in its class subfolders (looked for {', '.join(sorted(IMAGE_SUFFIXES))})")

    def unreadable(f: Path, e: Exception) -> UserError:
        return UserError(f"{f}: not a readable image ({type(e).__name__}: {e}); replace or remove the file")

    part = Part([], [], shown)
    changed: list[str] = []
    kinds: Counter = Counter()
    for f, label in files:
        try:
            with Image.open(f) as im:
                im.load()
                found = (im.size, _mode(im.mode))
                arr = _to_array(im, *(target or found))
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise unreadable(f, e) from None
        name = f"{label}/{f.name}"
        kinds[found] += 1
        if target is not None and found != target:
            changed.append(name)
        part.examples.append({"image": arr, "label": label})
        part.where.append(name)
    if changed:
        size, mode = target
        part.notes.append(f"{shown}: converted {len(changed)} images to {size[0]}x{size[1]} {mode} (the training "
                          f"images' size and mode): {_listed(changed)}")
    elif len(kinds) > 1:
        (size, mode), _ = kinds.most_common(1)[0]
        part.notes.append(f"{shown}: images come in {len(kinds)} sizes/modes (most common {size[0]}x{size[1]} "
                          f"{mode}); each is kept as it is and the model's preprocessing converts it")
    if skipped:
        part.notes.append(f"{shown}: ignored {len(skipped)} files that are not images: {_listed(skipped)}")
    empty = [d.name for d in classes if not any(lbl == d.name for _, lbl in files)]
    if empty:
        part.notes.append(f"{shown}: class folders without images (no class made of them): {_listed(empty)}")
    return part, target


def _mode(mode: str) -> str:
    """The mode an image is converted to: "L" (grayscale) or "RGB"."""
    return "L" if mode in ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F") else "RGB"


def _to_array(im, size: tuple[int, int], mode: str) -> np.ndarray:
    if im.mode.startswith("I;16") or im.mode in ("I", "F"):
        # 16-bit and float images would be clipped by convert("L"): scale by their own range first.
        a = np.asarray(im, dtype=np.float32)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        from PIL import Image

        im = Image.fromarray(np.clip(a / top * 255.0, 0, 255).astype(np.uint8), "L")
    if im.mode != mode:
        im = im.convert(mode)
    if im.size != size:
        from PIL import Image

        im = im.resize(size, Image.Resampling.BILINEAR)
    return np.asarray(im, dtype=np.float32) / 255.0


def drop_constant(part: Part) -> tuple[Part, str | None]:
    """``part`` without images whose pixels are all equal (all black, all white), and a note naming them."""
    keep = [i for i, e in enumerate(part.examples) if e["image"].min() != e["image"].max()]
    if len(keep) == len(part.examples):
        return part, None
    kept = set(keep)
    gone = [w for i, w in enumerate(part.where) if i not in kept]
    out = Part([part.examples[i] for i in keep], [part.where[i] for i in keep], part.path, part.notes)
    return out, (f"{part.path}: dropped {len(gone)} constant images (every pixel the same value, e.g. all black): "
                 f"{_listed(gone)}")


def augment_image(img: np.ndarray, steps: list[str], generator: "torch.Generator") -> np.ndarray:
    """A randomly perturbed copy of ``img`` (float32 in [0, 1], (H, W) or (H, W, C)); ``img`` is not changed.

    Steps, applied in the given order:
    - ``shift``: move by a random whole number of pixels along each axis, up to max(1, side / 16) (one pixel on
      8x8 digits), filling the uncovered edge by repeating the border;
    - ``rotate``: rotate by a random angle in [-10, 10] degrees (scipy.ndimage, bilinear, border repeated);
    - ``noise``: add Gaussian noise with standard deviation 0.05.

    Every random number comes from ``generator``, so a run that restores the generator's state replays the same
    augmentation (bit-identical resume).
    """
    import torch

    out = np.array(img, dtype=np.float32, copy=True)
    h, w = out.shape[:2]
    for step in steps:
        if step == "shift":
            m = max(1, round(min(h, w) / 16))
            dy, dx = (int(v) for v in torch.randint(-m, m + 1, (2,), generator=generator))
            pad = [(m, m), (m, m)] + [(0, 0)] * (out.ndim - 2)
            padded = np.pad(out, pad, mode="edge")
            out = padded[m - dy:m - dy + h, m - dx:m - dx + w].copy()
        elif step == "rotate":
            from scipy import ndimage  # scipy comes with scikit-learn

            angle = (float(torch.rand((), generator=generator, dtype=torch.float64)) * 2 - 1) * 10.0
            out = ndimage.rotate(out, angle, axes=(1, 0), reshape=False, order=1, mode="nearest")
        elif step == "noise":
            noise = torch.randn(out.shape, generator=generator, dtype=torch.float32, device=generator.device)
            out = out + noise.cpu().numpy() * 0.05
        else:
            raise ValueError(f"unknown augmentation {step!r}")
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def to_uint8(img: np.ndarray) -> np.ndarray:
    """A [0, 1] float image as 0..255 bytes (exact for images read from files: they were bytes / 255)."""
    return np.clip(np.rint(np.asarray(img, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)


def fit_image(img: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    """``img`` ((H, W) or (H, W, C) in [0, 1]) converted to ``mode`` ("L" | "RGB") and resized to ``size``
    ((width, height), bilinear), as an image file of another size/mode is read; unchanged when it already fits."""
    from PIL import Image

    a = np.asarray(img, dtype=np.float32)
    if (a.shape[1], a.shape[0]) == tuple(size) and (a.ndim == 2) == (mode == "L"):
        return a
    u8 = to_uint8(a if a.ndim == 2 or a.shape[2] in (1, 3) else a[..., :3])
    return _to_array(Image.fromarray(u8[..., 0] if u8.ndim == 3 and u8.shape[2] == 1 else u8), size, mode)


# ---- an image processor's preprocessing as plain steps ---------------------------------------------------------

RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}
PROBE_SIZE = (37, 53)  # (height, width) of the probe image a resolved plan is checked on: odd, not square
PROBE_TOLERANCE = 1e-4


def processor_steps(processor: object, channels: int) -> list[dict]:
    """The steps ``processor`` (a transformers image processor, read by attribute) applies, for a model taking
    ``channels`` channels.

    Raises:
        ValueError: a setting the steps cannot express (the message names it).
    """
    get = lambda name, default=None: getattr(processor, name, default)  # noqa: E731
    if channels not in (1, 3):
        raise ValueError(f"the model takes {channels}-channel images; images are read as grayscale or RGB")
    steps: list[dict] = [{"op": "convert", "mode": "L" if channels == 1 else "RGB"}]
    resample = RESAMPLE.get(int(get("resample") if get("resample") is not None else 2), "bilinear")
    if get("do_resize", False):
        size = dict(get("size") or {})
        if "height" in size and "width" in size:
            steps.append({"op": "resize", "height": int(size["height"]), "width": int(size["width"]),
                          "resample": resample})
        elif "shortest_edge" in size and get("crop_pct") is not None and not get("do_center_crop", False):
            edge = int(size["shortest_edge"])  # resize past the edge by 1 / crop_pct, then crop (ConvNeXt-style)
            if edge < 384:
                steps += [{"op": "resize", "shortest_edge": int(edge / float(get("crop_pct"))), "resample": resample},
                          {"op": "center_crop", "height": edge, "width": edge}]
            else:
                steps.append({"op": "resize", "height": edge, "width": edge, "resample": resample})
        elif "shortest_edge" in size and "longest_edge" not in size:
            steps.append({"op": "resize", "shortest_edge": int(size["shortest_edge"]), "resample": resample})
        else:
            raise ValueError(f"size = {size} (only height/width or shortest_edge are replayed)")
    if get("do_center_crop", False):
        crop = dict(get("crop_size") or {})
        if "height" not in crop or "width" not in crop:
            raise ValueError(f"crop_size = {crop} (height and width are needed)")
        steps.append({"op": "center_crop", "height": int(crop["height"]), "width": int(crop["width"])})
    for flag in ("do_pad", "do_reduce_labels", "do_grayscale"):
        if get(flag, False):
            raise ValueError(f"{flag} = true")
    if get("do_rescale", False):
        offset = 1.0 if get("rescale_offset", False) else 0.0
        steps.append({"op": "rescale", "factor": float(get("rescale_factor", 1 / 255)), "offset": offset})
    mean, std = get("image_mean"), get("image_std")
    if get("do_normalize", False):
        steps.append({"op": "normalize", "mean": _per_channel(mean, channels), "std": _per_channel(std, channels)})
    if get("include_top", False):  # EfficientNet-style: divided by the std once more for classification
        steps.append({"op": "normalize", "mean": [0.0] * channels, "std": _per_channel(std, channels)})
    if get("do_flip_channel_order", False):
        steps.append({"op": "flip_channels"})
    return steps


def _per_channel(values: object, channels: int) -> list[float]:
    v = [float(values)] if isinstance(values, (int, float)) else [float(x) for x in values]  # type: ignore[union-attr]
    if len(v) == 1:
        v = v * channels
    if len(v) != channels:
        raise ValueError(f"mean/std {v} do not have one value per channel ({channels})")
    return v


def output_size(steps: list[dict]) -> list[int] | None:
    """[height, width] every image has after ``steps``, or None when it depends on the image (aspect kept)."""
    size = None
    for s in steps:
        if s["op"] == "center_crop" or (s["op"] == "resize" and "height" in s):
            size = [s["height"], s["width"]]
        elif s["op"] == "resize":
            size = None
    return size


def geometry(img: np.ndarray, steps: list[dict]) -> np.ndarray:
    """The convert / resize / centre-crop steps on one image ((H, W[, C]) bytes, or floats in [0, 1]):
    (H', W', C) bytes."""
    from PIL import Image

    a = to_uint8(img) if np.asarray(img).dtype != np.uint8 else np.asarray(img)
    im = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[2] == 1 else a)
    for s in steps:
        if s["op"] == "convert":
            im = im.convert(s["mode"])
        elif s["op"] == "resize":
            w, h = im.size
            if "height" in s:
                new = (s["width"], s["height"])
            else:  # the shorter side becomes shortest_edge, the aspect ratio kept (rounded down)
                short, long = (w, h) if w <= h else (h, w)
                edge = s["shortest_edge"]
                new = (edge, int(edge * long / short)) if w <= h else (int(edge * long / short), edge)
            im = im.resize(new, Image.Resampling[s["resample"].upper()])
        elif s["op"] == "center_crop":
            im = Image.fromarray(_center_crop(np.asarray(im), s["height"], s["width"]))
    a = np.asarray(im)
    return a[..., None] if a.ndim == 2 else a


def _center_crop(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """transformers' center_crop: the middle window, zero-padded (centred) where the image is smaller."""
    h, w = a.shape[:2]
    if h < height or w < width:
        ph, pw = max(height, h), max(width, w)
        padded = np.zeros((ph, pw) + a.shape[2:], a.dtype)
        top, left = -(-(ph - h) // 2), -(-(pw - w) // 2)
        padded[top:top + h, left:left + w] = a
        a, h, w = padded, ph, pw
    top, left = (h - height) // 2, (w - width) // 2
    return a[top:top + height, left:left + width]


def pixel_values(x: np.ndarray, steps: list[dict]) -> np.ndarray:
    """The rescale / normalize / channel-flip steps on (H, W, C) pixels in 0..255 units: (C, H, W) float32."""
    v = np.asarray(x, dtype=np.float32)
    for s in steps:
        if s["op"] == "rescale":
            v = v * np.float32(s["factor"]) - np.float32(s["offset"])
        elif s["op"] == "normalize":
            v = (v - np.asarray(s["mean"], np.float32)) / np.asarray(s["std"], np.float32)
        elif s["op"] == "flip_channels":
            v = v[..., ::-1]
    return np.ascontiguousarray(v.transpose(2, 0, 1), dtype=np.float32)


def check_steps(processor: object, steps: list[dict]) -> float:
    """The largest difference between ``processor``'s output and the steps' on a probe image (an RGB gradient
    of odd size); raises ValueError when it exceeds PROBE_TOLERANCE (the processor does something else)."""
    h, w = PROBE_SIZE
    yy, xx = np.mgrid[0:h, 0:w]
    probe = np.stack([(xx * 7 + yy * 3) % 256, (yy * 11) % 256, (xx * 5 + 40) % 256], -1).astype(np.uint8)
    if steps and steps[0] == {"op": "convert", "mode": "L"}:  # a one-channel model: the processor sees grey
        probe = probe[..., :1]
    try:
        want = np.asarray(processor(images=probe, return_tensors="np")["pixel_values"][0], dtype=np.float32)
    except Exception as e:  # processors raise many types; any means it cannot be checked, so not replayed
        raise ValueError(f"it fails on a {w}x{h} probe image ({type(e).__name__}: {e})") from None
    got = pixel_values(geometry(probe, steps), steps)
    if want.shape != got.shape:
        raise ValueError(f"it gives {tuple(want.shape)} pixel values where the steps give {tuple(got.shape)}")
    diff = float(np.abs(want - got).max())
    if diff > PROBE_TOLERANCE:
        raise ValueError(f"its pixel values differ from the steps' by up to {diff:.3g}")
    return diff


def decode_image(data: bytes) -> np.ndarray:
    """An encoded image (PNG, JPEG, … as read from a file) as the loaders give it: (H, W) or (H, W, 3) in [0, 1].

    Raises:
        ValueError: bytes that are not an image PIL can read.
    """
    import io

    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()
            return _to_array(im, im.size, _mode(im.mode))
    except (UnidentifiedImageError, OSError) as e:
        raise ValueError(f"not a readable image ({type(e).__name__})") from None
