"""Latency on a target device: measured where the profile says how to reach it (DESIGN.md "Targets").

``runner_for(target)`` gives the runner of ``target.reach.kind``: ``local`` (a child process on this machine, the
profile's threads, optional CPU affinity), ``ssh`` (the model and a self-contained benchmark script copied to the
device and run there), or None for ``none`` (the caller estimates instead: :mod:`toolkit.eval.estimate`).

    runner = runner_for(load_target("host"))
    result = runner.measure(Path("model.onnx"), batch=1, seq_len=64, warmup=20, runs=200, threads=0)
    result["p50_ms"], result["source"]  # ..., "measured"
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Protocol

import numpy as np

from toolkit.errors import UserError


class Runner(Protocol):
    """Measures a model file on one target."""

    target: Any
    """the Target"""

    def measure(self, model_file: Path, *, batch: int = 1, seq_len: int = 64, warmup: int = 20, runs: int = 200,
                threads: int | None = None, inputs: dict[str, np.ndarray] | None = None, provider: str = "cpu",
                cache_dir: Path | None = None) -> dict[str, Any]:
        """DESIGN latency fields (p50_ms, p90_ms, p99_ms, mean_ms, throughput, threads, runtime), source
        "measured", and extras (load_ms, first_inference_ms, peak_rss_mb, input_shapes, where, provider,
        node_assignment: the fraction of the graph's nodes each execution provider took).

        Args:
            threads: the runtime's threads; None or 0: the profile's.
            inputs: real samples (name -> array, one row per sample); None: synthetic inputs as the harness makes.
            provider: ONNX Runtime's execution provider, cpu | cuda | tensorrt.
            cache_dir: TensorRT's engine cache where the measurement runs on this machine (ssh: a folder on the
                device, ``~/.cache/edge-toolkit/trt``).
        Raises:
            UserError: the target cannot be reached (naming the host), or the model does not run there.
        """
        ...


def runner_for(target: Any, **options: Any) -> Runner | None:
    """The runner for ``target.reach.kind``; None when the profile has no way to reach the device.

    Options go to the runner: ``affinity`` (local: CPU ids), ``python`` (ssh: the remote interpreter, default
    $TOOLKIT_REMOTE_PYTHON or ``python3``), ``connect_timeout`` and ``timeout`` (seconds).
    """
    kind = target.reach.kind
    if kind == "none":
        return None
    if kind == "local":
        from toolkit.eval.runners.local import LocalRunner

        return LocalRunner(target, **options)
    if kind == "ssh":
        from toolkit.eval.runners.ssh import SshRunner

        return SshRunner(target, **options)
    raise UserError(f"target '{target.name}': reach.kind = '{kind}' has no runner (local | ssh | none)")


def save_inputs(inputs: dict[str, np.ndarray], path: Path) -> Path:
    """Real inputs as an .npz (no pickles) for a child process or a device, in the given order."""
    arrays = {name: np.ascontiguousarray(np.asarray(a)) for name, a in inputs.items()}
    for name, a in arrays.items():
        if a.dtype == object:
            raise UserError(f"input '{name}' is not a numeric array")
    np.savez(path, **arrays)
    return path


def result_fields(result: dict[str, Any], target: Any, where: str) -> dict[str, Any]:
    """A measurement as the report wants it: source "measured", the target and where it ran."""
    return {**result, "source": "measured", "target": target.name, "where": where}


__all__ = ["Runner", "runner_for", "save_inputs", "result_fields"]
