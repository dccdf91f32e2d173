"""The stage as a whole: fingerprints, the log callback, notes, and the real data sets in ../shared/data."""
from __future__ import annotations

import hashlib
from collections import Counter

import numpy as np

from toolkit.data import load_splits
from toolkit.data.fingerprint import fingerprint


def test_fingerprints_follow_content_and_order():
    a = [{"text": "x", "label": "1"}, {"text": "y", "label": "0"}]
    assert fingerprint(a) == fingerprint([dict(e) for e in a])
    assert fingerprint(a) != fingerprint(a[::-1])
    assert fingerprint(a) != fingerprint([{"text": "x", "label": "0"}, a[1]])
    # the canonical form: one JSON line per example, keys sorted, no spaces
    expected = hashlib.sha256('{"label":"1","text":"x"}\n{"label":"0","text":"y"}\n'.encode()).hexdigest()
    assert fingerprint(a) == expected
    assert fingerprint([]) == hashlib.sha256(b"").hexdigest()


def test_image_fingerprints_see_pixels_shape_and_dtype():
    img = np.zeros((2, 2), np.float32)
    other = img.copy()
    other[0, 1] = 0.5
    f = fingerprint([{"image": img, "label": "a"}])
    assert f == fingerprint([{"image": img.copy(), "label": "a"}])
    assert f != fingerprint([{"image": other, "label": "a"}])
    assert f != fingerprint([{"image": img.reshape(1, 4), "label": "a"}])
    assert f != fingerprint([{"image": img.astype(np.float64), "label": "a"}])


def test_splits_carry_fingerprints_notes_and_progress(make_recipe, data_dir):
    lines: list[str] = []
    path = data_dir / "reviews.csv"
    s = load_splits(make_recipe(train=path, eval=path, clean=["html"]), log=lines.append)
    assert set(s.fingerprints) == {"train", "validation", "eval"}
    assert s.fingerprints["eval"] == fingerprint(s.eval)
    assert lines == [f"train: reading {path}", f"train: 4 examples from {path}",
                     f"eval: reading {path}", f"eval: 4 examples from {path}"]
    assert s.sizes() == {"train": 3, "validation": 1, "eval": 4}
    # 4 rows, 2 classes: one validation example cannot hold both classes, so the carve is not stratified
    assert s.notes[0].startswith(f"validation carved from {path} without stratification: The test_size = 1")
    assert s.notes[1] == f"validation: 1 of 4 training examples carved from {path} (seed 0, not stratified)"
    assert s.eval[3]["text"] == "boring & long"
    assert "3 of 4 eval examples have the same text as a training example" in s.notes


def test_real_sst2_and_agnews(make_recipe, shared_data):
    sst2 = shared_data / "sst2" / "test.tsv"
    s = load_splits(make_recipe(train=sst2, validation=sst2, eval=sst2, text_column="sentence"))
    assert len(s.eval) == 872 and s.labels == ["0", "1"]
    assert s.eval[0] == {"text": "it 's a charming and often affecting journey . ", "label": "1"}

    agnews = shared_data / "agnews" / "test.tsv"  # no header: text first, label last
    s = load_splits(make_recipe(train=agnews, validation=agnews, eval=agnews))
    assert len(s.eval) == 7600
    assert s.labels == ["Business", "Sci/Tech", "Sports", "World"]
    assert Counter(e["label"] for e in s.eval) == {k: 1900 for k in s.labels}
    assert not any("no header detected" in n for n in s.notes)
