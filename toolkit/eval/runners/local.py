"""The ``local`` runner: the toolkit's latency harness in a child process on this machine.

A child process, so the measurement gets the profile's thread count and (optionally) CPU affinity without touching
the caller's thread pools, and its peak RSS is the model's process alone. Arguments go as a list, never through a
shell. The child is this module: ``python -m toolkit.eval.runners.local MODEL --threads N ... `` prints the
harness's JSON result.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from toolkit.errors import UserError
from toolkit.eval.runners import result_fields, save_inputs


class LocalRunner:
    """Measures on this machine.

    Args:
        target: the profile (its ``threads`` is the default thread count).
        affinity: CPU ids to pin the child to (Linux), e.g. the big cores of a big.LITTLE board; None: any.
        timeout: seconds the whole measurement may take.
    """

    def __init__(self, target: Any, affinity: Sequence[int] | None = None, timeout: float = 900.0) -> None:
        self.target = target
        self.affinity = list(affinity) if affinity else None
        self.timeout = timeout

    def measure(self, model_file: Path, *, batch: int = 1, seq_len: int = 64, warmup: int = 20, runs: int = 200,
                threads: int | None = None, inputs: dict[str, np.ndarray] | None = None, provider: str = "cpu",
                cache_dir: Path | None = None) -> dict[str, Any]:
        """Run the harness on ``model_file`` in a child process; see :class:`toolkit.eval.runners.Runner`."""
        model = Path(model_file)
        if not model.is_file():
            raise UserError(f"{model}: no such model file to measure")
        threads = threads or self.target.threads
        with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
            args = [sys.executable, "-m", "toolkit.eval.runners.local", str(model.resolve()), "--threads",
                    str(threads), "--batch", str(batch), "--seq-len", str(seq_len), "--warmup", str(warmup),
                    "--runs", str(runs), "--target", self.target.name]
            if self.affinity:
                args += ["--affinity", ",".join(str(c) for c in self.affinity)]
            if inputs is not None:
                args += ["--inputs", str(save_inputs(inputs, Path(tmp) / "inputs.npz"))]
            if provider != "cpu":
                args += ["--provider", provider] + (["--cache-dir", str(cache_dir)] if cache_dir else [])
            try:
                proc = subprocess.run(args, capture_output=True, text=True, timeout=self.timeout,
                                      stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise UserError(f"{model}: the measurement on this machine took over {self.timeout:g} s") from None
        result = _last_json(proc.stdout)
        if proc.returncode != 0 or result is None or "error" in result:
            why = (result or {}).get("error") or _last_line(proc.stderr) or f"exit status {proc.returncode}"
            raise UserError(f"{model}: measuring on this machine failed: {why}")
        return result_fields(result, self.target, "local")


def _last_json(text: str) -> dict[str, Any] | None:
    for line in reversed(text.strip().splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                return None
    return None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def _child(argv: list[str] | None = None) -> int:
    """The child: one harness measurement, one JSON line on stdout ({"error"} and exit 2 on a user error)."""
    p = argparse.ArgumentParser(prog="python -m toolkit.eval.runners.local")
    p.add_argument("model")
    for flag in ("--threads", "--batch", "--seq-len", "--warmup", "--runs"):
        p.add_argument(flag, type=int, required=True)
    p.add_argument("--inputs")
    p.add_argument("--affinity")
    p.add_argument("--target")
    p.add_argument("--provider", default="cpu")
    p.add_argument("--cache-dir")
    a = p.parse_args(argv)
    from toolkit.errors import ToolkitError
    from toolkit.eval.latency import benchmark

    try:
        inputs = None
        if a.inputs:
            with np.load(a.inputs, allow_pickle=False) as data:
                inputs = {k: data[k] for k in data.files}
        options = {}
        if a.provider != "cpu":
            options = {"provider": a.provider, **({"cache_dir": a.cache_dir} if a.cache_dir else {})}
        result = benchmark(a.model, threads=a.threads, batch=a.batch, seq_len=None if inputs else a.seq_len,
                           warmup=a.warmup, runs=a.runs, inputs=inputs, target=a.target, options=options,
                           affinity=[int(c) for c in a.affinity.split(",")] if a.affinity else None)
    except ToolkitError as exc:
        print(json.dumps({"error": str(exc)}))
        return 2
    out = result.to_dict()
    out.setdefault("seq_len", a.seq_len)
    if "node_assignment" in out.get("details", {}):
        out.update(provider=a.provider, node_assignment=out["details"]["node_assignment"])
    print(json.dumps(out, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(_child())
