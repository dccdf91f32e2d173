"""The loop's bookkeeping beside the step: train/metrics.jsonl, peak memory, stopping on SIGINT/SIGTERM."""
from __future__ import annotations

import contextlib
import json
import resource
import signal
from pathlib import Path
from typing import Any, Iterator

import torch


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


@contextlib.contextmanager
def stop_on_signals() -> Iterator[dict[str, Any]]:
    """SIGINT/SIGTERM set a flag that the loop checks after each step (then it checkpoints and exits)."""
    flag: dict[str, Any] = {"signal": None}
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum: int, _frame: Any) -> None:
        if flag["signal"] is not None:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        flag["signal"] = signal.Signals(signum).name

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


class MetricsLog:
    """train/metrics.jsonl (+ TensorBoard when installed)."""

    def __init__(self, path: Path, resume_step: int) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        # On resume, drop what was logged after the checkpoint: those steps are replayed.
        if resume_step >= 0 and path.exists():
            kept = [ln for ln in path.read_text().splitlines() if ln.strip() and _step_of(ln) <= resume_step]
            path.write_text("".join(ln + "\n" for ln in kept))
        elif path.exists():
            path.unlink()
        self.fh = open(path, "a", buffering=1)
        self.tb = None
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(path.parent / "tensorboard"))
        except ImportError:  # tensorboard is an optional extra
            self.tb = None

    def write(self, record: dict[str, Any]) -> None:
        self.fh.write(json.dumps(record) + "\n")
        if self.tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tb.add_scalar(k, v, record["step"])

    def close(self) -> None:
        self.fh.close()
        if self.tb is not None:
            self.tb.close()


class NoLog:
    """What ranks other than 0 log: nothing."""

    def write(self, record: dict[str, Any]) -> None:
        return None

    def close(self) -> None:
        return None


def _step_of(line: str) -> int:
    try:
        return int(json.loads(line).get("step", 0))
    except (json.JSONDecodeError, ValueError):
        return 1 << 62

