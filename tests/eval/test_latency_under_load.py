"""Latency that holds under load: two ONNX MLPs whose latency ratio is known (the same MLP, twice as deep) measured
through the eval stage while two background processes alternate busy and idle spells of 1-6 s, as a laptop's other
work does. The ratio the eval stage measures must stay within 15 % of the quiet ratio, and the ranking hold, in
every trial.

Before interleaved rounds (each variant timed in its own block of runs) the same kind of load moved the ratio of
two such models from 3.48 (quiet) to 2.52, 9.09, 7.03, 3.65 and 8.39.

One thread: on this 2-core machine, two threads per model plus two busy processes change how ONNX Runtime's thread
pool behaves for sub-millisecond calls (a constant wake-up cost per call), which moves the true ratio itself, not
just its measurement; benchmarks/latency_under_load.py measures the 2-thread case on MiniLM, where calls take
milliseconds.
"""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from toolkit.config import recipe_from_dict
from toolkit.events import null_emitter
from toolkit.rundir import RunDir

WIDTH, SHALLOW, DEEP, TRIALS, TOLERANCE = 384, 6, 12, 10, 0.15

# A background process: busy (spinning) and idle spells of 1-6 s, drawn from its seed, until it is killed.
LOAD = """
import random, sys, time
rng = random.Random(int(sys.argv[1]))
busy = rng.random() < 0.5
while True:
    until = time.perf_counter() + rng.uniform(1.0, 6.0)
    if busy:
        x = 0
        while time.perf_counter() < until:
            x += 1
    else:
        time.sleep(until - time.perf_counter())
    busy = not busy
"""


def mlp(path: Path, depth: int) -> Path:
    """pixel_values (batch, 1, 8, 8) -> flatten -> [MatMul + Relu] x depth (WIDTH wide) -> (batch, 10) logits."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(depth)
    inits = [numpy_helper.from_array(np.array([-1, 64], np.int64), "shape")]
    nodes = [helper.make_node("Reshape", ["pixel_values", "shape"], ["x0"])]
    x, width = "x0", 64
    for i in range(depth):
        inits.append(numpy_helper.from_array(rng.standard_normal((width, WIDTH)).astype(np.float32) / width ** 0.5,
                                             f"w{i}"))
        nodes += [helper.make_node("MatMul", [x, f"w{i}"], [f"m{i}"]), helper.make_node("Relu", [f"m{i}"], [f"r{i}"])]
        x, width = f"r{i}", WIDTH
    inits.append(numpy_helper.from_array(rng.standard_normal((WIDTH, 10)).astype(np.float32) / WIDTH ** 0.5, "head"))
    nodes.append(helper.make_node("MatMul", [x, "head"], ["logits"]))
    graph = helper.make_graph(nodes, path.stem, [helper.make_tensor_value_info(
        "pixel_values", TensorProto.FLOAT, ["batch", 1, 8, 8])], [helper.make_tensor_value_info(
            "logits", TensorProto.FLOAT, ["batch", 10])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A run whose base is the shallow MLP (an ONNX model.source, not trained) and whose 'deep' variant is the MLP
    twice as deep."""
    from toolkit.train.stage import prepare_run_dir, run_train
    from toolkit.variants import Variant

    d = tmp_path_factory.mktemp("load")
    recipe = recipe_from_dict({
        "name": "load", "task": "image-classification", "data": {"train": "builtin:digits"},
        "model": {"source": str(mlp(d / "shallow.onnx", SHALLOW))}, "train": {"enabled": False},
        "eval": {"targets": ["host"], "limit": 20,
                 "latency": {"batch": 1, "warmup": 20, "runs": 200, "rounds": 10, "budget_s": 3, "threads": 1}},
    }, "load.toml")
    rd = RunDir(d / "run")
    prepare_run_dir(recipe, rd, False)
    run_train(recipe, rd, null_emitter("train"))
    deep = rd.variant("deep")
    deep.mkdir(parents=True)
    mlp(deep / "model.onnx", DEEP)
    Variant(name="deep", parent="base", method="copy", path=deep, onnx=deep / "model.onnx").save()
    return recipe, rd


def ratio(recipe, rd: RunDir) -> tuple[float, dict]:
    from toolkit.eval.stage import run_eval

    results = run_eval(recipe, rd, null_emitter("eval"))
    host = {name: r["latency"]["host"] for name, r in results.items()}
    return host["deep"]["p10_ms"] / host["base"]["p10_ms"], host


@pytest.mark.slow
def test_the_measured_ratio_holds_under_a_laptops_background_load(run):
    recipe, rd = run
    quiet, host = ratio(recipe, rd)
    assert 1.3 < quiet < 3.0, host  # twice the layers: clearly slower, not by more than the layers
    load = [subprocess.Popen([sys.executable, "-c", LOAD, str(seed)]) for seed in (1, 2)]
    try:
        loaded = []
        for _ in range(TRIALS):
            r, host = ratio(recipe, rd)
            loaded.append((r, host["base"]["interference"]["other_cpus"], host["base"]["stable"]))
    finally:
        for p in load:
            p.kill()
            p.wait()
    # the load was there, and the eval stage saw it: other processes took CPU while it timed, and a figure timed
    # so is labelled unstable
    assert sum(cpus > 0.3 for _, cpus, _ in loaded) >= TRIALS // 2, loaded
    assert all(not stable for _, cpus, stable in loaded if cpus > 0.3), loaded
    off = [(round(r, 3), round(cpus, 2)) for r, cpus, _ in loaded if abs(r / quiet - 1) > TOLERANCE or r <= 1]
    assert not off, f"quiet ratio {quiet:.3f}; trials off by more than 15 % (ratio, other CPUs): {off}"
