"""Image folders, constant-image checks and training-time augmentation.

An image folder holds one subfolder per class, named after the class; every image file inside (png, jpg, bmp,
gif, tif, webp) is one example. Images become float32 numpy arrays in [0, 1]: grayscale ones (H, W), colour
ones (H, W, 3). A set must have one shape for batching, so images whose size or colour mode differs from the
most common one (in the training folder; validation/eval follow the training images) are converted and resized
to it with a bilinear filter, and the notes say how many and which.
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
        target: ((width, height), mode) to convert every image to; None: the folder's most common ones.

    Returns:
        the examples (``where`` = "class/file.png") and the (size, mode) used, for the other splits.

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

    # First pass reads headers only (Pillow opens lazily), to find the common size and mode.
    heads = []
    for f, _ in files:
        try:
            with Image.open(f) as im:
                heads.append((im.size, _mode(im.mode)))
        except (UnidentifiedImageError, OSError) as e:
            raise unreadable(f, e) from None
    if target is None:
        target = (Counter(s for s, _ in heads).most_common(1)[0][0], Counter(m for _, m in heads).most_common(1)[0][0])
    size, mode = target
    part = Part([], [], shown)
    changed: list[str] = []
    for (f, label), (s, m) in zip(files, heads):
        try:
            with Image.open(f) as im:
                im.load()
                arr = _to_array(im, size, mode)
        except (UnidentifiedImageError, OSError, ValueError) as e:
            raise unreadable(f, e) from None
        name = f"{label}/{f.name}"
        if s != size or m != mode:
            changed.append(name)
        part.examples.append({"image": arr, "label": label})
        part.where.append(name)
    if changed:
        part.notes.append(f"{shown}: converted {len(changed)} images to {size[0]}x{size[1]} {mode} (the training "
                          f"images' most common size and mode): {_listed(changed)}")
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
