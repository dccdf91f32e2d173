"""The training loop on a toy task: golden losses, skipped non-finite steps, precisions, checkpoints."""
from __future__ import annotations

import json
import math
import os
import pickle

import pytest
import torch

from toolkit.errors import Interrupted, UserError
from toolkit.events import null_emitter
from toolkit.rundir import RunDir, sha256_file
from toolkit.train import checkpoint as ckpt_io
from toolkit.train.loop import TrainingDiverged, fit, lr_factor, seed_everything

from .toy import ToyTask, collate, toy_prepared, toy_recipe

# Losses of the first 20 steps, recorded once and checked against the independent loop below
# (test_losses_match_an_independent_plain_loop), so drift in either shows up.
GOLDEN = [1.1149, 1.1859, 1.0086, 1.1681, 0.9988, 1.1093, 1.1056, 0.9053, 0.8059, 0.8514,
          1.0887, 0.5925, 0.7829, 0.7778, 0.6958, 0.6859, 0.6557, 0.5914, 0.695, 0.7856]


def _train(tmp_path, prepared=None, resume=False, **train):
    recipe = toy_recipe(**train)
    seed_everything(recipe.seed, recipe.train.deterministic)
    prepared = prepared or toy_prepared()
    run = RunDir(tmp_path / "run")
    result = fit(recipe, ToyTask(), prepared, run, null_emitter("train"), resume=resume)
    losses = [json.loads(l)["loss"] for l in run.metrics.read_text().splitlines() if '"loss"' in l]
    return result, prepared, run, losses


def _plain_loop(steps=20, lr=1e-2, batch=8, warmup=2, wd=0.01, clip=1.0):
    """A hand-written loop with the same recipe: init, data order, AdamW groups, warm-up + cosine."""
    seed_everything(0, True)
    prep = toy_prepared()
    model, data = prep.model, prep.train_set
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "norm" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "norm" not in n)]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": wd}, {"params": rest, "weight_decay": 0.0}], lr=lr)
    losses, step, epoch = [], 0, 0
    while step < steps:
        order = torch.randperm(len(data), generator=torch.Generator().manual_seed(epoch)).tolist()
        for i in range(0, len(data), batch):
            if step == steps:
                break
            factor = (step + 1) / warmup if step < warmup else 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup)))
            for g in opt.param_groups:
                g["lr"] = lr * factor
            model.train()
            out = model(**collate([data[j] for j in order[i:i + batch]]))
            opt.zero_grad()
            out.loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
            opt.step()
            losses.append(out.loss.item())
            step += 1
        epoch += 1
    return losses


def test_golden_losses(tmp_path):
    result, _, _, losses = _train(tmp_path)
    assert result.state.step == 20 and result.state.skipped_steps == 0
    assert losses == pytest.approx(GOLDEN, abs=2e-4)
    assert sum(losses[-5:]) < 0.75 * sum(losses[:5])


def test_losses_match_an_independent_plain_loop(tmp_path):
    _, _, _, losses = _train(tmp_path)
    assert losses == pytest.approx(_plain_loop(), abs=1e-5)


def test_lr_schedules():
    assert lr_factor(0, 100, 10, "cosine") == pytest.approx(0.1)
    assert lr_factor(10, 100, 10, "cosine") == pytest.approx(1.0)
    assert lr_factor(55, 100, 10, "cosine") == pytest.approx(0.5)
    assert lr_factor(55, 100, 10, "linear") == pytest.approx(0.5)
    assert lr_factor(99, 100, 10, "constant") == 1.0


def test_metrics_are_logged(tmp_path):
    _, _, run, _ = _train(tmp_path, max_steps=6, log_every=3)
    rows = [json.loads(l) for l in run.metrics.read_text().splitlines()]
    steps = [r for r in rows if "loss" in r]
    assert [r["step"] for r in steps] == [3, 6]
    for key in ("lr", "grad_norm", "update_ratio", "samples_per_s", "tokens_per_s", "peak_memory_mb"):
        assert key in steps[0]
    assert 0 < steps[0]["update_ratio"] < 1 and steps[0]["samples_per_s"] > 0
    assert any("val_accuracy" in r for r in rows)  # epoch-end validation


def test_injected_nan_is_skipped_and_counted(tmp_path):
    prep = toy_prepared()
    prep.model.nan_calls = {3, 4}
    result, prep, _, _ = _train(tmp_path, prepared=prep, max_steps=10)
    assert result.state.skipped_steps == 2
    assert result.state.step == 10  # skipped steps do not count as optimizer steps
    assert all(torch.isfinite(p).all() for p in prep.model.parameters())


def test_too_many_nans_in_a_row_stop_with_a_clear_message(tmp_path):
    prep = toy_prepared()
    prep.model.nan_calls = set(range(7, 20))
    with pytest.raises(TrainingDiverged, match="3 non-finite steps in a row.*last good checkpoint: step-000005"):
        _train(tmp_path, prepared=prep, max_bad_steps=3)


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_mixed_precision_on_cpu(tmp_path, precision):
    result, prep, _, losses = _train(tmp_path, precision=precision, max_steps=20)
    assert result.state.step == 20
    assert losses[-1] < losses[0]
    assert all(torch.isfinite(p).all() for p in prep.model.parameters())
    state = torch.load(tmp_path / "run/train/checkpoints/step-000020/state.pt", weights_only=True)
    if precision == "fp16":
        assert state["scaler"]["scale"] > 0  # the GradScaler's state is checkpointed
    else:
        assert state["scaler"] == {}


def test_resume_is_bit_identical(tmp_path):
    _, full, _, _ = _train(tmp_path / "a", max_steps=20)
    # Stop after 12 steps (checkpoint at 10), then resume to 20 in a fresh model.
    _train(tmp_path / "b", max_steps=20, checkpoint_every=5, keep_checkpoints=5)
    run_b = tmp_path / "b/run/train/checkpoints"
    for c in ckpt_io.list_checkpoints(run_b):
        if c.step > 10:
            import shutil
            shutil.rmtree(c.path)
    prep = toy_prepared(seed=99)  # a different init: everything must come from the checkpoint
    _, resumed, _, _ = _train(tmp_path / "b", prepared=prep, resume=True, max_steps=20, checkpoint_every=5,
                              keep_checkpoints=5)
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), n


def test_keep_checkpoints(tmp_path):
    _, _, run, _ = _train(tmp_path, max_steps=20, checkpoint_every=2, keep_checkpoints=3)
    assert [c.step for c in ckpt_io.list_checkpoints(run.checkpoints)] == [16, 18, 20]


def test_corrupt_newest_checkpoint_falls_back(tmp_path):
    _, _, run, _ = _train(tmp_path, max_steps=10, checkpoint_every=5)
    newest = run.checkpoints / "step-000010" / "model.pt"
    newest.write_bytes(newest.read_bytes()[:100])  # truncated
    warnings = []
    found = ckpt_io.newest_valid(run.checkpoints, warnings.append)
    assert found.step == 5 and "step-000010" in warnings[0] and "checksum" in warnings[0]


def test_resume_with_only_corrupt_checkpoints_is_a_user_error(tmp_path):
    _, _, run, _ = _train(tmp_path, max_steps=5, checkpoint_every=5)
    (run.checkpoints / "step-000005" / "optimizer.pt").write_bytes(b"garbage")
    with pytest.raises(UserError, match="no valid checkpoint"):
        _train(tmp_path, resume=True, max_steps=5)


class _Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned > /tmp/toolkit-pwned",))


def test_malicious_pickle_checkpoint_is_refused(tmp_path):
    _, _, run, _ = _train(tmp_path, max_steps=5, checkpoint_every=5)
    ckpt = run.checkpoints / "step-000005"
    with open(ckpt / "model.pt", "wb") as fh:
        pickle.dump({"fc1.weight": _Evil()}, fh)
    # Even with matching checksums (an attacker can rewrite them), weights_only refuses the file.
    sums = json.loads((ckpt / "checksums.json").read_text())
    sums["sha256"]["model.pt"] = sha256_file(ckpt / "model.pt")
    (ckpt / "checksums.json").write_text(json.dumps(sums))
    if os.path.exists("/tmp/toolkit-pwned"):
        os.unlink("/tmp/toolkit-pwned")
    with pytest.raises(UserError, match="refused to load"):
        _train(tmp_path, resume=True, max_steps=5)
    assert not os.path.exists("/tmp/toolkit-pwned")


def test_sigint_checkpoints_and_raises_interrupted(tmp_path):
    import signal

    prep = toy_prepared()
    original = prep.collate
    calls = {"n": 0}

    def collate_and_interrupt(items):
        calls["n"] += 1
        if calls["n"] == 7:
            os.kill(os.getpid(), signal.SIGINT)
        return original(items)

    prep.collate = collate_and_interrupt
    with pytest.raises(Interrupted, match="SIGINT at step 7"):
        _train(tmp_path, prepared=prep, max_steps=20, checkpoint_every=100)
    assert [c.step for c in ckpt_io.list_checkpoints(tmp_path / "run/train/checkpoints")] == [7]


def test_deferred_bookkeeping_gives_the_same_training(tmp_path):
    """The CUDA path (each step booked one step late, skips done on the device) on the CPU: same weights,
    losses, skip counts and checkpoints as booking every step at once."""
    results = {}
    for defer in (False, True):
        recipe = toy_recipe(max_steps=20, checkpoint_every=7, log_every=4)
        seed_everything(recipe.seed, True)
        prep = toy_prepared()
        prep.model.nan_calls = {5, 11}
        run = RunDir(tmp_path / f"defer-{defer}")
        res = fit(recipe, ToyTask(), prep, run, null_emitter("train"), defer=defer)
        rows = [json.loads(l) for l in run.metrics.read_text().splitlines()]
        results[defer] = (prep.model.state_dict(), res.state.skipped_steps, rows,
                          [c.step for c in ckpt_io.list_checkpoints(run.checkpoints)])
    (wa, sa, ra, ca), (wb, sb, rb, cb) = results[False], results[True]
    assert sa == sb == 2 and ca == cb
    assert [(r["step"], r.get("loss"), r.get("lr")) for r in ra] == [(r["step"], r.get("loss"), r.get("lr")) for r in rb]
    for k in wa:
        assert torch.equal(wa[k], wb[k]), k
