"""The tasks on a GPU (skipped without one): batches reach the model's device, evaluation matches the CPU,
and bf16 autocast steps run. CI has no GPU; run this where one is present."""
from __future__ import annotations

import math

import pytest
import torch

from toolkit.tasks import TASKS, get_task

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA, CPU = torch.device("cuda"), torch.device("cpu")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_task_on_cuda(name, tmp_path, recipe_for, splits_for):
    task = get_task(name)
    p = task.prepare(recipe_for(name), splits_for(name), tmp_path / "work")
    on_cpu = task.evaluate(p.model, p, p.val_set, 4, CPU)
    on_gpu = task.evaluate(p.model, p, p.val_set, 4, CUDA)
    assert next(p.model.parameters()).device.type == "cuda"
    assert on_gpu["loss"] == pytest.approx(on_cpu["loss"], rel=1e-3)

    opt = torch.optim.AdamW(p.model.parameters(), lr=5e-3)
    batch = {k: v.to(CUDA) for k, v in p.collate(p.train_set[:8]).items()}
    p.model.train()
    losses = []
    for _ in range(8):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = p.model(**batch).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(x) for x in losses) and losses[-1] < losses[0]

    p.save(p.model, tmp_path / "final")
    loaded = task.load(tmp_path / "final").to(CUDA)
    after = task.evaluate(loaded, p, p.val_set, 4, CUDA)
    assert after["loss"] == pytest.approx(task.evaluate(p.model, p, p.val_set, 4, CUDA)["loss"], rel=1e-4)
    if name == "seq2seq":
        out = task.generate(p.model, p, p.val_set, 4, CUDA, max_new_tokens=5)
        assert len(out) == len(p.val_set) and all(isinstance(s, str) for s in out)
