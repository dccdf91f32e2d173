"""Real data: fine-tune the packaged pretrained MiniLM on SST-2 and beat 80 % on sst2/test.tsv."""
from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from toolkit.config import load_recipe
from toolkit.data import load_splits
from toolkit.resources import recipes_dir
from toolkit.tasks import get_task


@pytest.mark.slow
def test_minilm_fine_tunes_on_sst2(tmp_path, shared_data, minilm_dir):
    overrides = [f"data.train={shared_data}/sst2/train.tsv", f"data.eval={shared_data}/sst2/test.tsv",
                 f"model.source={minilm_dir}", "data.limit=8000", "train.epochs=1", "train.batch_size=32",
                 "train.lr=1e-4", "train.checkpoint_every=0", "data.max_length=64"]
    cmd = [sys.executable, "-m", "toolkit", "train", str(recipes_dir() / "text-classification.toml"),
           "--out", str(tmp_path), "--quiet"]
    for o in overrides:
        cmd += ["--set", o]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert p.returncode == 0, p.stderr

    # Independent check on the held-out test file: reload the saved model and score every example.
    recipe = load_recipe(recipes_dir() / "text-classification.toml",
                         overrides + [f"model.source={tmp_path / 'train' / 'final'}"])
    splits = load_splits(recipe)
    assert len(splits.eval) == 872
    task = get_task(recipe.task)
    prepared = task.prepare(recipe, splits, tmp_path / "eval-work")
    metrics = task.evaluate(prepared.model, prepared, prepared.eval_set, 64, torch.device("cpu"))
    assert metrics["accuracy"] > 0.80, metrics
