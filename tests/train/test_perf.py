"""The loop's speed options on the CPU: profiling spans and trace, torch.compile (trains, resumes exactly, fails
in one line), the prefetching collator, and the MFU arithmetic and peak table."""
from __future__ import annotations

import json
import shutil
import threading

import pytest
import torch

from toolkit.config import recipe_from_dict
from toolkit.errors import UserError
from toolkit.events import null_emitter
from toolkit.rundir import RunDir
from toolkit.train import checkpoint as ckpt_io
from toolkit.train import mfu, perf
from toolkit.train.loop import fit, seed_everything

from .test_loop import GOLDEN
from .toy import ToyTask, collate, toy_prepared, toy_recipe


def _train(tmp_path, prepared=None, resume=False, **train):
    recipe = toy_recipe(**train)
    seed_everything(recipe.seed, recipe.train.deterministic)
    prepared = prepared or toy_prepared()
    run = RunDir(tmp_path / "run")
    fit(recipe, ToyTask(), prepared, run, null_emitter("train"), resume=resume)
    losses = [json.loads(l)["loss"] for l in run.metrics.read_text().splitlines() if '"loss"' in l]
    return prepared, run, losses


# ---- profiling --------------------------------------------------------------------------------------------

def test_profile_writes_spans_and_a_trace_and_trains_the_same(tmp_path):
    _, run, losses = _train(tmp_path, profile=True)
    assert [round(x, 4) for x in losses] == GOLDEN  # timing the parts changes nothing that is trained
    summary = json.loads((run.train / "profile.json").read_text())
    assert summary["steps"] == 20
    for name in ("collate", "to_device", "forward", "backward", "optimizer", "bookkeeping", "events"):
        assert summary["spans"][name]["calls"] > 0, name
        assert summary["spans"][name]["total_ms"] >= 0
    # the parts of a step that are not nested in another are within the step's time
    top = sum(summary["spans"][n]["ms_per_step"] for n in ("collate", "to_device", "forward", "backward",
                                                            "optimizer"))
    assert 0 < top <= summary["ms_per_step"] * 1.01
    trace = json.loads((run.train / "profile" / "trace.json").read_text())
    names = {e.get("name") for e in trace["traceEvents"]}
    assert {"forward", "backward", "optimizer"} <= names  # the spans show in the torch.profiler trace


def test_no_profile_files_by_default(tmp_path):
    _, run, _ = _train(tmp_path)
    assert not (run.train / "profile.json").exists() and not (run.train / "profile").exists()


def test_profile_and_compile_are_checked_as_booleans():
    for key in ("profile", "compile"):
        with pytest.raises(UserError, match=f"toy.toml: train.{key} = \"yes\": expected true or false"):
            recipe_from_dict({"name": "t", "task": "text-classification", "train": {key: "yes"}}, "toy.toml")


def test_profile_does_not_change_the_train_hash_and_compile_only_when_set():
    from toolkit.train.stage import train_config_hash

    def h(**train):
        return train_config_hash(recipe_from_dict({"name": "t", "task": "text-classification", "train": train}))

    assert h() == h(profile=True) == h(compile=False)  # run directories made before these keys still match
    assert h(compile=True) != h()


# ---- torch.compile ----------------------------------------------------------------------------------------

class _Net(torch.nn.Module):
    """The toy MLP without the toy's call counter (a Python attribute changing on every call makes torch.compile
    recompile each time)."""

    def __init__(self, dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = torch.nn.Linear(16, 32), torch.nn.Linear(32, 3)
        self.norm, self.drop = torch.nn.LayerNorm(32), torch.nn.Dropout(dropout)

    def forward(self, x, labels):
        from types import SimpleNamespace

        logits = self.fc2(self.drop(torch.relu(self.norm(self.fc1(x)))))
        return SimpleNamespace(loss=torch.nn.functional.cross_entropy(logits, labels), logits=logits)


def _prepared(seed: int = 0, dropout: float = 0.1):
    prepared = toy_prepared(seed)
    torch.manual_seed(seed)
    prepared.model = _Net(dropout)
    return prepared


def test_compile_trains_like_eager(tmp_path):
    # without dropout: inductor draws dropout masks from its own generator, so they differ from eager's
    eager, _, eager_losses = _train(tmp_path / "eager", prepared=_prepared(dropout=0.0), max_steps=10)
    compiled, _, losses = _train(tmp_path / "c", prepared=_prepared(dropout=0.0), max_steps=10, compile=True)
    assert losses == pytest.approx(eager_losses, rel=1e-4, abs=1e-5)
    assert list(compiled.model.state_dict()) == list(eager.model.state_dict())  # no "_orig_mod." prefix


def test_compile_resumes_bit_identically(tmp_path):
    full, _, _ = _train(tmp_path / "a", prepared=_prepared(), max_steps=10, compile=True)
    _train(tmp_path / "b", prepared=_prepared(), max_steps=10, compile=True, checkpoint_every=5, keep_checkpoints=5)
    for c in ckpt_io.list_checkpoints(tmp_path / "b/run/train/checkpoints"):
        if c.step > 5:
            shutil.rmtree(c.path)
    resumed, _, _ = _train(tmp_path / "b", prepared=_prepared(seed=99), resume=True, max_steps=10,
                           compile=True, checkpoint_every=5, keep_checkpoints=5)
    for (n, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), n


class _DynamoFailure(Exception):
    """Stands for torch._dynamo's and torch._inductor's exceptions (BackendCompilerFailed, Unsupported, ...)."""


_DynamoFailure.__module__ = "torch._dynamo.exc"


def test_a_failing_compile_is_one_line_naming_the_key(tmp_path, monkeypatch):
    prepared = toy_prepared()

    def broken(*a, **k):
        raise _DynamoFailure("backend='inductor' raised:\nCppCompileError: no compiler\nmore lines")

    monkeypatch.setattr(prepared.model, "forward", broken)
    with pytest.raises(UserError) as err:
        _train(tmp_path, prepared=prepared, compile=True)
    msg = str(err.value)
    assert "\n" not in msg and "train.compile = true" in msg and "compile = false" in msg
    assert "backend='inductor' raised: CppCompileError: no compiler" in msg and "more lines" not in msg


def test_other_errors_pass_through_a_compiled_run(tmp_path, monkeypatch):
    prepared = toy_prepared()
    monkeypatch.setattr(prepared.model, "forward", lambda *a, **k: (_ for _ in ()).throw(ValueError("mine")))
    with pytest.raises(ValueError, match="mine"):
        _train(tmp_path, prepared=prepared, compile=True)


# ---- the prefetcher ---------------------------------------------------------------------------------------

def test_prefetcher_gives_what_inline_collation_gives_in_order():
    data = [{"x": torch.full((2,), float(i)), "labels": torch.tensor(i)} for i in range(20)]
    parts = [[0, 1], [2, 3, 4], [5], [6, 7, 8, 9]]
    make = lambda part: collate([data[i] for i in part])  # noqa: E731
    fetch = perf.Prefetcher(make, parts, depth=2)
    try:
        for part in parts:
            got, want = fetch.get(part), perf.Inline(make).get(part)
            assert all(torch.equal(got[k], want[k]) for k in want)
    finally:
        fetch.close()


def test_prefetcher_raises_a_collate_error_in_the_loop_and_stops_early():
    def make(part):
        if part == [2]:
            raise KeyError("bad example")
        return part

    fetch = perf.Prefetcher(make, [[0], [1], [2], [3]])
    assert fetch.get([0]) == [0] and fetch.get([1]) == [1]
    with pytest.raises(KeyError, match="bad example"):
        fetch.get([2])
    fetch.close()
    many = perf.Prefetcher(lambda p: p, [[i] for i in range(10_000)], depth=1)
    many.get([0])
    many.close()  # the loop stopped early: the thread ends instead of filling the queue forever
    assert not any(t.name == "toolkit-prefetch" and t.is_alive() for t in threading.enumerate())


def test_the_prefetching_loop_trains_exactly_like_the_inline_one(tmp_path):
    """The CUDA path's background collation, forced on the CPU: same batches in the same order, so the same
    losses and weights (the toy collate draws no random numbers; dropout stays in the loop's thread)."""
    def run(folder, prefetch, **train):
        recipe = toy_recipe(max_steps=30, grad_accum=2, **train)  # 30 steps of 8: into the fourth epoch
        seed_everything(recipe.seed, recipe.train.deterministic)
        prepared = toy_prepared()
        fit(recipe, ToyTask(), prepared, RunDir(folder), null_emitter("train"), prefetch=prefetch)
        return prepared.model.state_dict()

    inline, fetched = run(tmp_path / "a", False), run(tmp_path / "b", True)
    for name, value in inline.items():
        assert torch.equal(value, fetched[name]), name
    assert not any(t.name == "toolkit-prefetch" and t.is_alive() for t in threading.enumerate())


def test_to_device_on_cpu_leaves_tensors_alone():
    batch = {"x": torch.ones(2), "n": 3}
    out = perf.to_device(batch, torch.device("cpu"))
    assert out["x"] is batch["x"] and out["n"] == 3


# ---- MFU --------------------------------------------------------------------------------------------------

def test_training_flops_are_six_per_mac_per_example():
    assert mfu.train_flops(1_000, 8) == 48_000
    assert mfu.mfu(48_000, 2.0, 12_000.0) == pytest.approx(2.0)
    assert mfu.mfu(1.0, 1.0, None) is None and mfu.mfu(1.0, 0.0, 1.0) is None


@pytest.mark.parametrize("name, sms, precision, tf32, tflops", [
    ("NVIDIA H100 80GB HBM3", 132, "bf16", False, 989.5),
    ("NVIDIA H100 PCIe", 114, "fp16", False, 756.5),
    ("NVIDIA H100 NVL", 132, "fp32", False, 60.0),
    ("NVIDIA H200", 132, "bf16", False, 989.5),
    ("NVIDIA H200 NVL", 132, "bf16", False, 835.5),
    ("NVIDIA A100-SXM4-80GB", 108, "fp32", True, 156.0),  # fp32 matmuls in TF32 when torch allows it
    ("NVIDIA A100-SXM4-80GB", 108, "fp32", False, 19.5),
    ("NVIDIA L4", 58, "bf16", False, 121.0),
    ("Orin", 16, "fp16", False, 42.5),
])
def test_peak_lookup(name, sms, precision, tf32, tflops):
    assert mfu.peak_flops(name, precision, sms, tf32) == pytest.approx(tflops * 1e12)


@pytest.mark.parametrize("name, sms", [("NVIDIA GeForce RTX 9999", 80), ("Orin", 8), ("", None),
                                       ("NVIDIA L40S", 142)])
def test_unknown_devices_get_no_peak(name, sms):
    """A device the table does not know (or cannot tell apart: Orin NX vs Nano) gets no MFU, not a wrong one."""
    assert mfu.peak_flops(name, "bf16", sms) is None


def test_step_flops_of_a_bert_follow_its_shapes():
    from transformers import BertConfig, BertForSequenceClassification

    cfg = BertConfig(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, num_labels=2)
    model = BertForSequenceClassification(cfg)
    meter = mfu.MfuMeter(model, torch.device("cpu"), "bf16", token_head=False)
    assert not meter.active  # the CPU: no MFU in the metrics
    seq, n, h, ffn, layers = 16, 4, 32, 64, 2
    per_layer = seq * (4 * h * h + 2 * h * ffn) + 2 * seq * seq * h  # linear layers at every position + attention
    head = h * h + h * 2  # pooler and classifier on one position
    want = 6 * (layers * per_layer + head) * n
    batch = {"input_ids": torch.ones(n, seq, dtype=torch.long), "attention_mask": torch.ones(n, seq)}
    assert meter.step_flops(batch) == want
    # the "6 x parameters x tokens" rule of thumb for the layers' weights, within the attention term
    layer_params = layers * (4 * h * h + 2 * h * ffn)
    assert want / n == pytest.approx(6 * (layer_params * seq + head) + 6 * layers * 2 * seq * seq * h)


def test_mfu_meter_is_off_for_a_model_no_adapter_reads():
    meter = mfu.MfuMeter(toy_prepared().model, torch.device("cpu"), "fp32", token_head=False)
    assert not meter.active and meter.macs(8) is None
