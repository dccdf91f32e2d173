"""The event emitter: every stage reports through it; events.jsonl gets every event (DESIGN.md).

Kinds: start | progress (step, total) | metric (values) | log (level, message) | artifact (path) | skip
| done | error (message) | interrupted. Front ends (the rich console, the TUI) subscribe or follow the file.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable

KINDS = ("start", "progress", "metric", "log", "artifact", "skip", "done", "error", "interrupted")
Listener = Callable[[dict[str, Any]], None]


class Emitter:
    """Writes events to ``events.jsonl`` (line-buffered, one JSON object a line) and calls listeners."""

    def __init__(self, path: str | Path | None, run: str, listeners: list[Listener] | None = None) -> None:
        self.path = Path(path) if path else None
        self.run = run
        self.listeners: list[Listener] = list(listeners or [])
        self._fh = None
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._fh = open(self.path, "a", encoding="utf-8", buffering=1)

    def emit(self, stage: str, kind: str, **fields: Any) -> dict[str, Any]:
        """Record one event; returns it."""
        if kind not in KINDS:
            raise ValueError(f"unknown event kind {kind!r}")
        event = {"t": round(time.time(), 3), "run": self.run, "stage": stage, "kind": kind, **fields}
        if self._fh is not None:
            self._fh.write(json.dumps(event, default=_jsonable) + "\n")
        for listener in self.listeners:
            listener(event)
        return event

    def log(self, stage: str, message: str, level: str = "info") -> None:
        self.emit(stage, "log", level=level, message=message)

    def for_stage(self, stage: str) -> "StageEmitter":
        return StageEmitter(self, stage)

    def close(self) -> None:
        if self._fh is not None:
            self._fh.flush()
            os.fsync(self._fh.fileno())
            self._fh.close()
            self._fh = None


class StageEmitter:
    """An emitter bound to one stage: ``emit(kind, **fields)``; what stage functions receive."""

    def __init__(self, parent: Emitter, stage: str) -> None:
        self.parent, self.stage = parent, stage

    def __call__(self, kind: str, **fields: Any) -> dict[str, Any]:
        return self.parent.emit(self.stage, kind, **fields)

    def log(self, message: str, level: str = "info") -> None:
        self.parent.emit(self.stage, "log", level=level, message=message)


def null_emitter(stage: str = "test") -> StageEmitter:
    """An emitter that writes nowhere (for library use and tests)."""
    return Emitter(None, "none").for_stage(stage)


def read_events(path: str | Path) -> list[dict[str, Any]]:
    """All complete events of an events.jsonl file (a torn last line is ignored)."""
    out = []
    p = Path(path)
    if not p.exists():
        return out
    for line in p.read_text(encoding="utf-8").splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return out


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "item"):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)
