"""Perturbations are pure and seeded; the robustness report states the drop."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from toolkit.errors import UserError
from toolkit.eval.robustness import perturb_images, perturb_text, robustness_report

TEXTS = ["The quick brown fox jumps over the lazy dog.", "Compression is only worth what it costs in quality.",
         "hello world"]


@pytest.mark.parametrize("kind", ["swap", "drop", "case"])
def test_text_perturbations_are_seeded_and_index_wise(kind: str) -> None:
    a = perturb_text(TEXTS, kind, 0.3, seed=1)
    assert a == perturb_text(TEXTS, kind, 0.3, seed=1)
    assert a != perturb_text(TEXTS, kind, 0.3, seed=2)
    assert a != TEXTS
    # text i draws from (seed, i): what comes before it does not change it
    assert perturb_text(["something else", TEXTS[1]], kind, 0.3, seed=1)[1] == a[1]
    assert perturb_text(TEXTS, kind, 0.0, seed=1) == TEXTS


def test_text_perturbations_do_what_they_say() -> None:
    for text, out in zip(TEXTS, perturb_text(TEXTS, "swap", 0.5, seed=0)):
        assert len(out) == len(text) and Counter(out) == Counter(text)
        assert out.split(" ").__len__() == text.split(" ").__len__()  # spaces never move
    assert perturb_text(TEXTS, "case", 1.0) == [t.swapcase() for t in TEXTS]
    assert perturb_text(TEXTS, "drop", 1.0) == [" " * t.count(" ") for t in TEXTS]
    dropped = perturb_text(TEXTS * 20, "drop", 0.1, seed=3)
    kept = sum(len(d) for d in dropped) / sum(len(t) for t in TEXTS * 20)
    assert 0.85 < kept < 0.95


def test_text_perturbation_bad_input() -> None:
    with pytest.raises(UserError, match="did you mean 'swap'"):
        perturb_text(TEXTS, "swp", 0.1)
    with pytest.raises(UserError, match="outside"):
        perturb_text(TEXTS, "drop", 1.5)


def test_gaussian_noise() -> None:
    imgs = np.full((4, 3, 32, 32), 0.5, dtype=np.float32)
    out = perturb_images(imgs, "noise", seed=0, sigma=0.1)
    assert out.shape == imgs.shape and out.dtype == np.float32
    assert np.std(out - imgs) == pytest.approx(0.1, rel=0.05)
    np.testing.assert_array_equal(out, perturb_images(imgs, "noise", seed=0, sigma=0.1))
    u8 = np.array([[[0, 255], [128, 128]]], dtype=np.uint8)  # one 2x2 image
    noisy = perturb_images(u8, "noise", seed=0, sigma=1.0)
    assert noisy.dtype == np.uint8 and noisy.min() >= 0 and noisy.max() <= 255


def test_one_pixel_shift_replicates_the_edge() -> None:
    img = np.arange(16, dtype=np.float32).reshape(1, 4, 4)  # (C, H, W)
    candidates = [
        np.concatenate([img[:, :1], img[:, :-1]], axis=1),  # down
        np.concatenate([img[:, 1:], img[:, -1:]], axis=1),  # up
        np.concatenate([img[:, :, :1], img[:, :, :-1]], axis=2),  # right
        np.concatenate([img[:, :, 1:], img[:, :, -1:]], axis=2),  # left
    ]
    seen = set()
    for seed in range(12):
        out = perturb_images([img], "shift", seed=seed)[0]
        hits = [i for i, c in enumerate(candidates) if np.array_equal(out, c)]
        assert len(hits) == 1
        seen.add(hits[0])
    assert len(seen) > 1  # the direction is drawn
    hwc = perturb_images(np.zeros((2, 5, 6, 3), dtype=np.uint8), "shift", seed=0, channels_last=True)
    assert hwc.shape == (2, 5, 6, 3)


def test_image_perturbation_bad_kind() -> None:
    with pytest.raises(UserError, match="did you mean 'noise'"):
        perturb_images(np.zeros((1, 2, 2)), "nois")


def test_robustness_report() -> None:
    r = robustness_report(0.9, {"swap": 0.8, "case": 0.85}, metric="accuracy")
    assert r["drop"] == pytest.approx({"swap": 0.1, "case": 0.05})
    assert r["relative_drop"]["swap"] == pytest.approx(0.1 / 0.9)
    assert r["worst"] == "swap" and r["clean"] == 0.9
    ppl = robustness_report(20.0, {"drop": 25.0}, higher_is_better=False, metric="perplexity")
    assert ppl["drop"] == {"drop": 5.0} and "perturbed - clean" in ppl["convention"]
