"""The latency harness: statistics on known sleeps, input building, and the ORT / torch runners on tiny models."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest

from toolkit.errors import UserError
from toolkit.eval.backends import EXTENSIONS, RUNNERS, make_runner, runtime_for
from toolkit.eval.inputs import InputSpec, real_batches, synthetic_batch
from toolkit.eval.latency import (
    CONVENTIONS, LatencyResult, benchmark, summarize, time_calls, time_generation,
)

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "eval"
DESIGN_LATENCY_KEYS = {"p50_ms", "p90_ms", "p99_ms", "mean_ms", "throughput", "threads", "runtime", "source"}


# --------------------------------------------------------------------------------------------- statistics
def test_summarize_equals_numpy_on_fixed_samples():
    ns = np.array([5, 1, 4, 2, 3, 10, 7], dtype=np.int64) * 1_000_000  # ms in ns
    s = summarize(ns)
    ms = ns / 1e6
    for q, key in ((50, "p50_ms"), (90, "p90_ms"), (99, "p99_ms")):
        assert s[key] == pytest.approx(np.percentile(ms, q, method="linear"))
    assert s["p50_ms"] == pytest.approx(4.0)
    assert s["p90_ms"] == pytest.approx(7.0 + 0.4 * 3)  # rank 0.9 * 6 = 5.4: 40 % of the way from 7 to 10
    assert (s["min_ms"], s["max_ms"]) == (1.0, 10.0)
    assert s["mean_ms"] == pytest.approx(32 / 7)
    assert s["std_ms"] == pytest.approx(np.std(ms))


def test_known_sleeps_give_their_percentiles_and_mean():
    # 2 ms, 2 ms, 5 ms repeated: p50 is a 2 ms call, p90 a 5 ms call, the mean 3 ms (+ sleep overshoot).
    pattern = [0.002, 0.002, 0.005]
    count = iter(range(10**6))
    samples = time_calls(lambda _: time.sleep(pattern[next(count) % 3]), [None], runs=30)
    assert samples.size == 30
    s = summarize(samples)
    assert 2.0 <= s["p50_ms"] < 3.0
    assert 5.0 <= s["p90_ms"] < 7.0
    assert 3.0 <= s["mean_ms"] < 4.0
    assert s["min_ms"] >= 2.0
    ms = samples / 1e6
    assert s["p99_ms"] == pytest.approx(np.percentile(ms, 99, method="linear"))
    # each sample is one call: the 5 ms calls sit at every third position
    assert all(ms[i] >= 5.0 for i in range(2, 30, 3))


def test_seconds_mode_runs_until_the_deadline_and_at_least_runs():
    samples = time_calls(lambda _: time.sleep(0.001), [None], seconds=0.05)
    assert 10 <= samples.size <= 50
    assert samples.sum() / 1e9 >= 0.04
    samples = time_calls(lambda _: None, [None], runs=500, seconds=0.001)
    assert samples.size >= 500


def test_time_calls_cycles_through_feeds_outside_the_timer():
    seen = []
    time_calls(seen.append, ["a", "b", "c"], runs=7)
    assert seen == ["a", "b", "c", "a", "b", "c", "a"]


# --------------------------------------------------------------------------------------------- generation
def _fake_decoder(prefill_s: float, step_s: float, vocab: int = 10):
    """A 'model' whose next token is (last + 1) % vocab; sleeps stand in for compute."""

    def step(ids, state):
        time.sleep(prefill_s if state is None else step_s)
        logits = np.zeros(vocab)
        logits[(int(ids[-1]) + 1) % vocab] = 1.0
        return logits, (state or 0) + len(ids)

    return step


def test_time_generation_reports_ttft_and_decode_speed():
    g = time_generation(_fake_decoder(0.020, 0.002), [1, 2, 3], max_new_tokens=11, warmup=1, runs=3)
    assert g.tokens == [4, 5, 6, 7, 8, 9, 0, 1, 2, 3, 4]
    assert (g.new_tokens, g.prompt_tokens, g.runs) == (11, 3, 3)
    assert 20.0 <= g.ttft_ms < 30.0
    assert 250 < g.tokens_per_s <= 500  # 10 decode steps of >= 2 ms (sleep overshoots on a busy machine)
    assert g.e2e_tokens_per_s < g.tokens_per_s
    assert "ttft" in g.to_dict()["conventions"]


def test_time_generation_stops_at_eos():
    g = time_generation(_fake_decoder(0, 0), [5], max_new_tokens=50, eos_id=8, warmup=0, runs=1)
    assert g.tokens == [6, 7, 8]


def test_time_generation_rejects_an_empty_prompt():
    with pytest.raises(UserError, match="empty"):
        time_generation(_fake_decoder(0, 0), [], max_new_tokens=3)


# --------------------------------------------------------------------------------------------- inputs
SPECS = [
    InputSpec("input_ids", "int64", ("batch", "sequence")),
    InputSpec("attention_mask", "int64", ("batch", "sequence")),
    InputSpec("token_type_ids", "int64", (None, None)),
    InputSpec("pixel_values", "float32", ("batch", 3, 8, 8)),
]


def test_synthetic_inputs_follow_the_signature_and_the_seed():
    b = synthetic_batch(SPECS, batch=2, seq_len=16, seed=0)
    assert b.kind == "synthetic" and (b.batch, b.seq_len) == (2, 16)
    f = b.feeds[0]
    assert f["input_ids"].shape == (2, 16) and f["input_ids"].dtype == np.int64
    assert 1 <= f["input_ids"].min() and f["input_ids"].max() < 100
    assert (f["attention_mask"] == 1).all() and (f["token_type_ids"] == 0).all()
    assert f["pixel_values"].shape == (2, 3, 8, 8) and f["pixel_values"].dtype == np.float32
    again = synthetic_batch(SPECS, batch=2, seq_len=16, seed=0).feeds[0]
    assert all(np.array_equal(f[k], again[k]) for k in f)
    other = synthetic_batch(SPECS, batch=2, seq_len=16, seed=1).feeds[0]
    assert not np.array_equal(f["input_ids"], other["input_ids"])
    assert synthetic_batch(SPECS, batch=1, seq_len=4, vocab_size=3).feeds[0]["input_ids"].max() < 3


def test_defaults_and_fixed_axes():
    b = synthetic_batch(SPECS, batch=None, seq_len=None)
    assert (b.batch, b.seq_len) == (1, 64)
    fixed = [InputSpec("input_ids", "int64", (1, 32))]
    assert synthetic_batch(fixed, batch=None, seq_len=None).shapes == {"input_ids": [1, 32]}
    with pytest.raises(UserError, match="fixed size 32 on axis 1.*--seq-len 32"):
        synthetic_batch(fixed, batch=None, seq_len=64)
    with pytest.raises(UserError, match="--batch 1"):
        synthetic_batch(fixed, batch=4, seq_len=None)


def test_real_inputs_are_cut_into_batches():
    specs = SPECS[:2]
    ids = np.arange(7 * 5).reshape(7, 5)
    b = real_batches(specs, {"input_ids": ids, "attention_mask": np.ones((7, 5), np.int32)}, batch=3, seq_len=None)
    assert b.kind == "real" and (b.batch, b.seq_len) == (3, 5) and len(b.feeds) == 2  # the 7th row is dropped
    assert b.feeds[1]["input_ids"].tolist() == ids[3:6].tolist()
    assert b.feeds[0]["attention_mask"].dtype == np.int64
    with pytest.raises(UserError, match="missing \\['attention_mask'\\]"):
        real_batches(specs, {"input_ids": ids}, batch=1, seq_len=None)
    with pytest.raises(UserError, match="fewer than one batch"):
        real_batches(specs, {"input_ids": ids, "attention_mask": ids}, batch=8, seq_len=None)
    with pytest.raises(UserError, match="sequence length 5, not 64"):
        real_batches(specs, {"input_ids": ids, "attention_mask": ids}, batch=1, seq_len=64)
    with pytest.raises(UserError, match="float32; the model takes int64"):
        real_batches(specs, {"input_ids": ids.astype(np.float32), "attention_mask": ids}, batch=1, seq_len=None)


# --------------------------------------------------------------------------------------------- registry
def test_registry_and_extensions():
    assert {"onnxruntime", "torch", "torch-compile", "executorch"} <= set(RUNNERS)
    assert EXTENSIONS[".onnx"] == EXTENSIONS[".ort"] == "onnxruntime" and EXTENSIONS[".pte"] == "executorch"
    assert runtime_for("a/model.ONNX") == "onnxruntime"
    with pytest.raises(UserError, match="cannot tell the runtime.*--runtime"):
        runtime_for("model.bin")
    with pytest.raises(UserError, match="did you mean 'onnxruntime'"):
        make_runner("onnxruntim", 1)
    with pytest.raises(UserError, match="does not take option"):
        make_runner("onnxruntime", 1, {"mode": "x"})


# --------------------------------------------------------------------------------------------- ONNX Runtime
class _Tiny:
    """A token model: embedding (vocab 50) → linear, mean over the sequence."""

    @staticmethod
    def module():
        import torch

        class Tiny(torch.nn.Module):
            def __init__(self):
                super().__init__()
                torch.manual_seed(0)
                self.emb = torch.nn.Embedding(50, 32)
                self.fc = torch.nn.Linear(32, 3)

            def forward(self, input_ids, attention_mask):
                h = self.emb(input_ids) * attention_mask.unsqueeze(-1).to(torch.float32)  # (B, S, 32)
                return self.fc(h).mean(dim=1)  # (B, 3)

        return Tiny().eval()


@pytest.fixture(scope="module")
def tiny_onnx(tmp_path_factory) -> Path:
    import torch

    path = tmp_path_factory.mktemp("bench") / "tiny.onnx"
    m = _Tiny.module()
    args = (torch.ones(2, 8, dtype=torch.long), torch.ones(2, 8, dtype=torch.long))
    axes = {0: "batch", 1: "sequence"}
    torch.onnx.export(m, args, str(path), dynamo=False, input_names=["input_ids", "attention_mask"],
                      output_names=["logits"], dynamic_axes={"input_ids": axes, "attention_mask": axes})
    return path


def _sane(r: LatencyResult, runtime: str, threads: int) -> None:
    assert r.runtime == runtime and r.threads == threads
    assert 0 < r.min_ms <= r.p50_ms <= r.p90_ms <= r.p99_ms <= r.max_ms < 1000
    assert r.min_ms <= r.mean_ms <= r.max_ms
    assert r.throughput == pytest.approx(r.batch * 1000 / r.mean_ms)
    assert r.first_inference_ms == pytest.approx(r.load_ms + r.first_run_ms)
    assert r.peak_rss_mb > 10
    assert r.runs == r.samples_ns.size
    d = r.to_dict()
    assert DESIGN_LATENCY_KEYS <= set(d) and d["source"] == "measured" and "samples_ns" not in d
    assert d["conventions"] == CONVENTIONS


def test_onnxruntime_runner_measures_with_the_threads_it_was_given(tiny_onnx):
    r = benchmark(tiny_onnx, threads=1, batch=2, seq_len=16, warmup=3, runs=50)
    _sane(r, "onnxruntime", 1)
    assert r.runs == 50 and r.warmup == 3 and (r.batch, r.seq_len) == (2, 16)
    assert r.details["intra_op_threads"] == 1 and r.details["inter_op_threads"] == 1
    assert r.details["providers"] == ["CPUExecutionProvider"]
    assert r.inputs == "synthetic" and r.input_shapes == {"input_ids": [2, 16], "attention_mask": [2, 16]}
    assert r.model_size_bytes == tiny_onnx.stat().st_size
    r2 = benchmark(tiny_onnx, threads=2, runs=5, warmup=1)
    assert r2.details["intra_op_threads"] == 2 and (r2.batch, r2.seq_len) == (1, 64)


def test_onnxruntime_synthetic_ids_stay_inside_the_embedding_table(tiny_onnx):
    from toolkit.eval.backends import OnnxRuntimeRunner

    runner = OnnxRuntimeRunner(1)
    runner.load(tiny_onnx)
    specs = {s.name: s for s in runner.input_specs()}
    assert specs["input_ids"].vocab == 50 and specs["attention_mask"].vocab is None


def test_onnxruntime_real_inputs_and_seconds(tiny_onnx):
    rng = np.random.default_rng(0)
    samples = {"input_ids": rng.integers(0, 50, size=(9, 12)), "attention_mask": np.ones((9, 12), np.int64)}
    r = benchmark(tiny_onnx, threads=1, batch=4, inputs=samples, warmup=2, seconds=0.05)
    assert r.inputs == "real" and (r.batch, r.seq_len) == (4, 12)
    assert r.duration_s >= 0.04 and r.runs >= 2


@pytest.mark.skipif(not hasattr(__import__("os"), "sched_setaffinity"), reason="CPU affinity needs Linux")
def test_onnxruntime_affinity_pins_and_restores(tiny_onnx):
    import os

    before = os.sched_getaffinity(0)
    r = benchmark(tiny_onnx, affinity=[min(before)], runs=5, warmup=1)
    assert r.affinity == [min(before)] and r.threads == 1
    assert os.sched_getaffinity(0) == before


@pytest.mark.parametrize("kwargs, match", [
    ({"threads": 0}, "--threads must be at least 1"),
    ({"batch": 0}, "--batch must be at least 1"),
    ({"runs": 0}, "--runs must be at least 1"),
    ({"seconds": 0}, "--seconds must be more than 0"),
    ({"warmup": -1}, "--warmup must be 0 or more"),
    ({"options": {"providers": ["NoSuchExecutionProvider"]}}, "not in this onnxruntime build"),
])
def test_bad_arguments_are_user_errors(tiny_onnx, kwargs, match):
    with pytest.raises(UserError, match=match):
        benchmark(tiny_onnx, runs=kwargs.pop("runs", 2), **kwargs)


def test_inputs_the_model_rejects_are_user_errors(tiny_onnx):
    bad = {"input_ids": np.full((2, 4), 999), "attention_mask": np.ones((2, 4), np.int64)}
    with pytest.raises(UserError, match="failed on the first run with real inputs"):
        benchmark(tiny_onnx, inputs=bad, runs=2)


# --------------------------------------------------------------------------------------------- torch
def test_torch_eager_on_a_module_sets_and_restores_threads():
    import torch

    before = torch.get_num_threads()
    r = benchmark(_Tiny.module(), threads=1, batch=2, seq_len=8, warmup=2, runs=30)
    _sane(r, "torch", 1)
    assert r.details["torch_threads"] == 1 and r.model_size_bytes is None
    assert torch.get_num_threads() == before


def test_torch_module_with_an_unnamed_float_input_needs_real_inputs():
    import torch

    with pytest.raises(UserError, match="shape of input 'input' is unknown"):
        benchmark(torch.nn.Linear(4, 2), runs=2)
    r = benchmark(torch.nn.Linear(4, 2), inputs={"input": np.ones((3, 4), np.float32)}, runs=3, threads=1)
    assert r.inputs == "real" and r.input_shapes == {"input": [1, 4]}


def test_torch_compile_times_compilation_as_first_inference():
    # backend "eager" keeps the test fast; inductor takes the same path with a longer first run
    r = benchmark(_Tiny.module(), runtime="torch-compile", options={"backend": "eager"}, threads=1,
                  batch=1, seq_len=8, warmup=2, runs=10)
    _sane(r, "torch-compile", 1)
    assert r.details["compile_backend"] == "eager"
    assert r.first_run_ms > r.p50_ms


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_every_registered_runner_has_the_runner_interface(name):
    runner = make_runner(name, 1)
    assert runner.name == name and runner.threads == 1
    for method in ("import_runtime", "load", "input_specs", "prepare", "context", "info", "close"):
        assert callable(getattr(runner, method)), f"{name} lacks {method}"


def test_missing_executorch_names_the_extra(monkeypatch):
    import sys

    for mod in ("executorch.runtime", "executorch.extension.pybindings.portable_lib"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import` of a None entry raises ImportError
    with pytest.raises(UserError, match=r"needs ExecuTorch .*pip install 'edge-toolkit\[executorch\]'"):
        benchmark(FIXTURES / "bench_truncated.pte", runs=2)


def test_a_hugging_face_style_module_takes_the_tokenisers_output_by_name():
    import torch

    class HFStyle(torch.nn.Module):  # every argument optional, as in transformers' forward()
        def __init__(self):
            super().__init__()
            self.emb = torch.nn.Embedding(30, 8)

        def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None):
            tt = 0 if token_type_ids is None else token_type_ids.unsqueeze(-1)
            return (self.emb(input_ids) * attention_mask.unsqueeze(-1) + tt).sum()

    r = benchmark(HFStyle(), threads=1, seq_len=8, runs=3, warmup=1)
    assert r.input_shapes == {"input_ids": [1, 8], "attention_mask": [1, 8]}
    real = {k: np.ones((2, 5), np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")}
    r = benchmark(HFStyle(), threads=1, inputs=real, runs=3, warmup=1)
    assert r.inputs == "real" and set(r.input_shapes) == set(real) and r.seq_len == 5
    with pytest.raises(UserError, match="takes no \\['pixel_values'\\]"):
        benchmark(HFStyle(), inputs={"pixel_values": np.ones((1, 3), np.float32)}, runs=2)


def test_a_module_given_to_a_file_runtime_is_a_user_error():
    import torch

    with pytest.raises(UserError, match="runtime 'onnxruntime' takes a model file, not a Linear object"):
        benchmark(torch.nn.Linear(2, 2), runtime="onnxruntime", runs=2)
