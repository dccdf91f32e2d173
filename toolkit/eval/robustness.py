"""Robustness perturbations: pure, seeded functions over texts and images, and the report of the drop.

Every example draws from its own ``numpy.random.Generator`` seeded with ``(seed, index)``, so an example's
perturbation does not depend on the others in the list (or on batch order), and the same seed gives the same
output on every machine.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from toolkit.errors import UserError, did_you_mean

TEXT_PERTURBATIONS = ("swap", "drop", "case")
"""swap: adjacent characters inside a word trade places; drop: characters are deleted; case: letters flip case."""
IMAGE_PERTURBATIONS = ("noise", "shift")
"""noise: additive Gaussian noise; shift: the image moves one pixel up, down, left or right (edge replicated)."""


def _rng(seed: int, index: int) -> np.random.Generator:
    return np.random.default_rng([int(seed), int(index)])


def _perturb_one(text: str, kind: str, rate: float, rng: np.random.Generator) -> str:
    chars = list(text)
    hit = rng.random(len(chars)) < rate  # one draw per character, whatever the kind
    if kind == "drop":
        # whitespace is kept so words stay words
        return "".join(c for c, h in zip(chars, hit) if not (h and not c.isspace()))
    if kind == "case":
        return "".join(c.swapcase() if h else c for c, h in zip(chars, hit))
    # swap: character i trades places with i+1 when both are non-space; a swapped pair is not touched again
    i = 0
    while i < len(chars) - 1:
        if hit[i] and not chars[i].isspace() and not chars[i + 1].isspace():
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
            i += 2
        else:
            i += 1
    return "".join(chars)


def perturb_text(texts: Sequence[str], kind: str, rate: float, seed: int = 0) -> list[str]:
    """Perturb each text at ``rate`` (the probability that a character is chosen).

    Args:
        kind: "swap" (a chosen character trades places with the next one, inside a word), "drop" (a chosen
            non-space character is deleted) or "case" (a chosen character flips case; non-letters are unchanged).
        rate: in [0, 1].
        seed: the perturbation's seed; text i uses ``default_rng([seed, i])``.

    Raises:
        UserError: an unknown kind (with the nearest) or a rate outside [0, 1].
    """
    if kind not in TEXT_PERTURBATIONS:
        raise UserError(f"'{kind}' is not a text perturbation{did_you_mean(kind, list(TEXT_PERTURBATIONS))}")
    if not 0.0 <= rate <= 1.0:
        raise UserError(f"perturbation rate {rate} is outside [0, 1]")
    return [_perturb_one(t, kind, rate, _rng(seed, i)) for i, t in enumerate(texts)]


def _spatial_axes(ndim: int, channels_last: bool) -> tuple[int, int]:
    if ndim == 2:
        return 0, 1
    if ndim == 3:
        return (0, 1) if channels_last else (1, 2)
    raise ValueError(f"an image is (H, W), (C, H, W) or (H, W, C); got {ndim} dimensions")


def _shift_one(img: np.ndarray, rng: np.random.Generator, channels_last: bool) -> np.ndarray:
    ah, aw = _spatial_axes(img.ndim, channels_last)
    axis, step = [(ah, 1), (ah, -1), (aw, 1), (aw, -1)][int(rng.integers(4))]
    n = img.shape[axis]
    # content moves by `step` along `axis`; the row/column that opens up repeats the edge
    src = np.clip(np.arange(n) - step, 0, n - 1)
    return np.take(img, src, axis=axis)


def _noise_one(img: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    if np.issubdtype(img.dtype, np.integer):
        info = np.iinfo(img.dtype)
        scale = 255.0 if img.dtype == np.uint8 else float(info.max)
        noisy = img.astype(np.float64) + rng.normal(0.0, sigma * scale, size=img.shape)
        return np.clip(np.rint(noisy), info.min, info.max).astype(img.dtype)
    return (img + rng.normal(0.0, sigma, size=img.shape)).astype(img.dtype)


def perturb_images(arrays: np.ndarray | Sequence[np.ndarray], kind: str, seed: int = 0, sigma: float = 0.05,
                   channels_last: bool = False) -> np.ndarray | list[np.ndarray]:
    """Perturb each image.

    Args:
        arrays: a batch (N, ...) or a list of images, each (H, W), (C, H, W) or, with ``channels_last``, (H, W, C).
        kind: "noise" (Gaussian, std ``sigma`` in the array's units for float images, i.e. apply it before
            normalisation to [0, 1] pixels; ``sigma * 255`` for uint8 images, rounded and clipped to 0..255) or
            "shift" (one pixel up, down, left or right, drawn per image; the edge row/column is repeated).
        seed: image i uses ``default_rng([seed, i])``.

    Returns:
        the same container type (an array for an array, a list for a list), dtype kept.

    Raises:
        UserError: an unknown kind or a negative sigma.
    """
    if kind not in IMAGE_PERTURBATIONS:
        raise UserError(f"'{kind}' is not an image perturbation{did_you_mean(kind, list(IMAGE_PERTURBATIONS))}")
    if sigma < 0:
        raise UserError(f"noise sigma {sigma} is negative")
    out = []
    for i, img in enumerate(arrays):
        img = np.asarray(img)
        rng = _rng(seed, i)
        out.append(_noise_one(img, rng, sigma) if kind == "noise" else _shift_one(img, rng, channels_last))
    if isinstance(arrays, np.ndarray):
        return np.stack(out) if out else arrays.copy()
    return out


def robustness_report(metric_clean: float, metric_perturbed: dict[str, float], higher_is_better: bool = True,
                      metric: str = "") -> dict[str, Any]:
    """The metric under each perturbation and how much it dropped.

    Returns:
        ``{"metric", "clean", "perturbed": {kind: value}, "drop": {kind: loss}, "relative_drop": {kind: loss /
        clean}, "worst": kind, "convention"}``. A drop is positive when the perturbation made things worse
        (``clean - perturbed`` for higher-is-better metrics, ``perturbed - clean`` otherwise).
    """
    sign = 1.0 if higher_is_better else -1.0
    drop = {k: sign * (float(metric_clean) - float(v)) for k, v in metric_perturbed.items()}
    rel = {k: (d / abs(float(metric_clean)) if metric_clean else None) for k, d in drop.items()}
    return {
        "metric": metric,
        "clean": float(metric_clean),
        "perturbed": {k: float(v) for k, v in metric_perturbed.items()},
        "drop": drop,
        "relative_drop": rel,
        "worst": max(drop, key=drop.get) if drop else None,
        "convention": ("drop = clean - perturbed" if higher_is_better else "drop = perturbed - clean")
        + " in the metric's units (positive = worse); relative_drop = drop / |clean|",
    }
