"""The terminal display of a running stage: log lines, the latest metrics and a progress bar with ETA.

A listener on the event emitter; the TUI follows events.jsonl instead. Plain lines when stderr is not a
terminal (CI logs, pipes).
"""
from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class ConsoleDisplay:
    """Renders events; use as a context manager around the work."""

    def __init__(self, quiet: bool = False) -> None:
        self.console = Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.live = self.console.is_terminal and not quiet
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TextColumn("{task.fields[metrics]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                                 console=self.console, transient=False, disable=not self.live)
        self.tasks: dict[str, Any] = {}
        self._last_plain = 0.0

    def __enter__(self) -> "ConsoleDisplay":
        self.progress.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.progress.stop()

    def __call__(self, event: dict[str, Any]) -> None:
        kind, stage = event["kind"], event["stage"]
        if kind == "start" and event.get("total"):
            self.tasks[stage] = self.progress.add_task(stage, total=event["total"], completed=event.get("resumed_from", 0), metrics="")
        elif kind == "progress" and stage in self.tasks:
            self.progress.update(self.tasks[stage], completed=event["step"], total=event.get("total"))
        elif kind == "metric":
            values = event.get("values", {})
            shown = "  ".join(f"{k}={_fmt(v)}" for k, v in values.items()
                              if k in ("loss", "lr", "val_loss", "val_accuracy", "val_perplexity", "samples_per_s"))
            if stage in self.tasks:
                self.progress.update(self.tasks[stage], metrics=shown)
            if not self.live and not self.quiet and (time.time() - self._last_plain > 2 or "val_loss" in values):
                self._last_plain = time.time()
                self.console.print(escape(f"[{stage}] step {values.get('step')}  {shown}"))
            elif self.live and any(k.startswith("val_") for k in values):
                self.progress.console.print(escape(f"[{stage}] step {values.get('step')}  {shown}"))
        elif kind == "log" and not self.quiet:
            style = {"warning": "yellow", "error": "red"}.get(event.get("level", "info"), "")
            self.progress.console.print(escape(f"[{stage}] {event['message']}"), style=style)
        elif kind == "skip" and not self.quiet:
            self.progress.console.print(escape(f"[{stage}] skipped: {event.get('reason', 'up to date')}"))
        elif kind == "interrupted" and not self.quiet:
            self.progress.console.print(escape(f"[{stage}] interrupted at step {event.get('step')}; checkpoint saved"), style="yellow")


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def is_tty() -> bool:
    return sys.stderr.isatty()
