"""An image as an exported bundle's model takes it, from the bundle's preprocess.json: numpy + Pillow only.

Imported by the three *_classify.py examples (keep it beside them). Two kinds of bundle:
- a Hugging Face image model: preprocess.json lists the steps of its image processor ("steps": convert to the
  model's channels, resize, centre crop, rescale, normalise, channel flip), which are replayed here exactly as the
  toolkit replays them in training and evaluation;
- this toolkit's CNN: preprocess.json gives image_size and channels; pixels are scaled to [0, 1].
A .npy file holds raw pixels as the training data had them (divided by preprocess.json's "scale", e.g. "x/16" for
the built-in digits); any other file is read with Pillow.
"""
import numpy as np
from PIL import Image

GREY_MODES = ("1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F")


def raw_pixels(path: str, pre: dict) -> np.ndarray:
    """A .npy file's pixels in [0, 1]: divided by the bundle's scale ("x/16": the built-in digits)."""
    scale = float(pre.get("scale", "x/255").split("/")[-1])
    return np.load(path, allow_pickle=False).astype(np.float32) / scale


def read(path: str, pre: dict) -> Image.Image:
    """The image as an 8-bit grey ("L") or "RGB" Pillow image."""
    if path.endswith(".npy"):
        return Image.fromarray(np.clip(np.rint(raw_pixels(path, pre) * 255.0), 0, 255).astype(np.uint8))
    image = Image.open(path)
    return image.convert("L" if image.mode in GREY_MODES else "RGB")


def center_crop(a: np.ndarray, height: int, width: int) -> np.ndarray:
    """The middle (height, width) window; zero padding (centred) where the image is smaller."""
    h, w = a.shape[:2]
    if h < height or w < width:
        ph, pw = max(height, h), max(width, w)
        padded = np.zeros((ph, pw) + a.shape[2:], a.dtype)
        top, left = -(-(ph - h) // 2), -(-(pw - w) // 2)
        padded[top:top + h, left:left + w] = a
        a, h, w = padded, ph, pw
    top, left = (h - height) // 2, (w - width) // 2
    return a[top:top + height, left:left + width]


def apply_steps(image: Image.Image, steps: list) -> np.ndarray:
    """The processor's steps on one image: (C, H, W) float32."""
    for s in steps:  # size steps, on the 8-bit image
        if s["op"] == "convert":
            image = image.convert(s["mode"])
        elif s["op"] == "resize":
            w, h = image.size
            if "height" in s:
                new = (s["width"], s["height"])
            else:  # the shorter side becomes shortest_edge, the aspect ratio kept (rounded down)
                short, long = (w, h) if w <= h else (h, w)
                edge = s["shortest_edge"]
                new = (edge, int(edge * long / short)) if w <= h else (int(edge * long / short), edge)
            image = image.resize(new, Image.Resampling[s["resample"].upper()])
        elif s["op"] == "center_crop":
            image = Image.fromarray(center_crop(np.asarray(image), s["height"], s["width"]))
    v = np.asarray(image, dtype=np.float32)
    v = v[..., None] if v.ndim == 2 else v  # (H, W, C), 0..255
    for s in steps:  # value steps
        if s["op"] == "rescale":
            v = v * np.float32(s["factor"]) - np.float32(s["offset"])
        elif s["op"] == "normalize":
            v = (v - np.asarray(s["mean"], np.float32)) / np.asarray(s["std"], np.float32)
        elif s["op"] == "flip_channels":
            v = v[..., ::-1]
    return np.ascontiguousarray(v.transpose(2, 0, 1), dtype=np.float32)


def image_array(pre: dict, path: str) -> np.ndarray:
    """pixel_values for one image: (1, C, H, W) float32."""
    if pre.get("steps"):
        return apply_steps(read(path, pre), pre["steps"])[None]
    channels, (h, w) = pre.get("channels", 3), pre["image_size"]
    if path.endswith(".npy"):  # the training data's own pixels: used as they are
        img = raw_pixels(path, pre)
    else:
        image = read(path, pre).convert("L" if channels == 1 else "RGB")
        if image.size != (w, h):
            image = image.resize((w, h), Image.Resampling.BILINEAR)  # as the toolkit resizes its CNN's inputs
        img = np.asarray(image, dtype=np.float32) / 255.0
    img = img[None] if img.ndim == 2 else img.transpose(2, 0, 1)  # (C, H, W)
    return img[None].astype(np.float32)
