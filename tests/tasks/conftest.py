"""Tiny synthetic splits for every task, built in memory (the data loaders are tested on their own)."""
from __future__ import annotations

import random
from typing import Callable

import numpy as np
import pytest
import torch

from toolkit.config import Recipe
from toolkit.data.types import Splits

POSITIVE = "good great happy fine lovely".split()
NEGATIVE = "bad awful sad poor dull".split()
FILLER = "the a film plot actor was is very quite story".split()


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models run fastest on one thread (and several tests may run side by side on a small box)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _sentence(rng: random.Random, cue: list[str]) -> str:
    words = [rng.choice(FILLER) for _ in range(rng.randint(3, 9))]
    words.insert(rng.randrange(len(words) + 1), rng.choice(cue))
    return " ".join(words)


def text_classification_splits(n: int = 50, seed: int = 0) -> Splits:
    rng = random.Random(seed)
    ex = [{"text": _sentence(rng, POSITIVE if i % 2 else NEGATIVE), "label": "pos" if i % 2 else "neg"}
          for i in range(n)]
    return Splits(train=ex[:40], validation=ex[40:45], eval=ex[45:], labels=["neg", "pos"])


def language_modeling_splits(n: int = 50, seed: int = 0) -> Splits:
    rng = random.Random(seed)
    ex = [{"text": _sentence(rng, POSITIVE)} for _ in range(n)]
    return Splits(train=ex[:40], validation=ex[40:45], eval=ex[45:])


def seq2seq_splits(n: int = 50, seed: int = 0) -> Splits:
    rng = random.Random(seed)
    ex = []
    for _ in range(n):
        src = _sentence(rng, POSITIVE)
        ex.append({"source": src, "target": " ".join(reversed(src.split()))})
    return Splits(train=ex[:40], validation=ex[40:45], eval=ex[45:])


def image_classification_splits(n: int = 50, seed: int = 0, channels: int = 1) -> Splits:
    """8x8 images of two classes: a bright left half or a bright right half, plus noise."""
    g = np.random.default_rng(seed)
    ex = []
    for i in range(n):
        img = g.uniform(0, 0.3, size=(8, 8)).astype(np.float32)
        img[:, :4] += 0.6 if i % 2 else 0.0
        img[:, 4:] += 0.0 if i % 2 else 0.6
        if channels > 1:
            img = np.repeat(img[:, :, None], channels, axis=2)
        ex.append({"image": img, "label": "left" if i % 2 else "right"})
    return Splits(train=ex[:40], validation=ex[40:45], eval=ex[45:], labels=["left", "right"])


SPLITS: dict[str, Callable[..., Splits]] = {
    "text-classification": text_classification_splits,
    "language-modeling": language_modeling_splits,
    "seq2seq": seq2seq_splits,
    "image-classification": image_classification_splits,
}


def tiny_recipe(task: str, **model: object) -> Recipe:
    """A recipe for a tiny model: 2 layers, 32 wide, vocab 300, max_length 32, no dropout."""
    r = Recipe(task=task, name="test", seed=0)
    r.data.max_length = 32
    r.model.vocab_size = 300
    r.model.hidden_size = 32 if task != "image-classification" else 0
    r.model.layers = 2 if task != "image-classification" else 0
    r.train.dropout = 0.0
    for k, v in model.items():
        setattr(r.model, k, v)
    return r


@pytest.fixture
def splits_for() -> Callable[..., Splits]:
    return lambda task, **kw: SPLITS[task](**kw)


@pytest.fixture
def recipe_for() -> Callable[..., Recipe]:
    return tiny_recipe
