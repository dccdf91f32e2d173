"""The terminal display of a session or a stage: the stage list with each stage's state, a progress bar with
ETA for the running stage, the latest metrics, and log lines above them.

A listener on the event emitter; the TUI follows events.jsonl instead. Plain lines when stderr is not a
terminal (CI logs, pipes).
"""
from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

SHOWN_METRICS = ("loss", "lr", "val_loss", "val_accuracy", "val_perplexity", "samples_per_s", "accuracy", "bleu",
                 "perplexity", "p50_ms")
STATE_STYLE = {"pending": ("·", "dim"), "running": ("▶", "bold cyan"), "done": ("✓", "green"),
               "skipped": ("↷", "dim"), "failed": ("✗", "bold red"), "interrupted": ("■", "yellow")}


class ConsoleDisplay:
    """Renders events; use as a context manager around the work.

    Args:
        quiet: print nothing (the command still prints its result and any error).
        stages: the session's stage names, shown as a list with their states (None: a single stage).
        console: where to draw (default: stderr).
    """

    def __init__(self, quiet: bool = False, stages: list[str] | None = None, console: Console | None = None) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.quiet = quiet
        self.live_mode = self.console.is_terminal and not quiet
        self.progress = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn(),
                                 console=self.console, transient=False, disable=not self.live_mode)
        self.tasks: dict[str, Any] = {}
        self.totals: dict[str, int] = {}
        self.states: dict[str, str] = {name: "pending" for name in (stages or [])}
        self.notes: dict[str, str] = {}
        self.started: dict[str, float] = {}
        self.metrics: dict[str, Any] = {}
        self.metrics_stage = ""
        self._last_plain = 0.0
        self._live: Live | None = None

    # ---- lifecycle -------------------------------------------------------------------------------------

    def __enter__(self) -> "ConsoleDisplay":
        if self.live_mode:
            self._live = Live(get_renderable=self.render, console=self.console, refresh_per_second=8,
                              transient=False, redirect_stderr=False, redirect_stdout=False)
            self._live.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._live is not None:
            self._live.refresh()
            self._live.stop()
            self._live = None

    def _print(self, text: str, style: str = "") -> None:
        self.console.print(escape(text), style=style)

    # ---- rendering ------------------------------------------------------------------------------------

    def render(self) -> Group:
        """What the live area shows: stage list, progress bar(s), latest metrics."""
        parts: list[Any] = []
        if self.states:
            table = Table.grid(padding=(0, 1))
            for name, state in self.states.items():
                mark, style = STATE_STYLE.get(state, ("?", ""))
                took = ""
                if name in self.started:
                    took = f"{time.time() - self.started[name]:.0f}s" if state == "running" else self.notes.get(name + ":t", "")
                table.add_row(Text(mark, style=style), Text(name, style=style), Text(state, style=style),
                              Text(took, style="dim"), Text(self.notes.get(name, ""), style="dim"))
            parts.append(table)
        if self.tasks:
            parts.append(self.progress)
        if self.metrics:
            shown = "  ".join(f"{k} {_fmt(v)}" for k, v in self.metrics.items())
            parts.append(Text(f"{self.metrics_stage}: {shown}", style="cyan"))
        return Group(*parts)

    # ---- events ---------------------------------------------------------------------------------------

    def __call__(self, event: dict[str, Any]) -> None:
        kind, stage = event["kind"], event["stage"]
        if stage == "session":
            if kind == "start":
                self.states = {name: self.states.get(name, "pending") for name in event.get("stages", [])}
            return
        if kind == "start":
            self._set_state(stage, "running")
            self.started.setdefault(stage, time.time())
            if event.get("total"):
                self._stage_progress(stage, event["total"], event.get("resumed_from", 0))
            elif self.states == {} or "index" in event:
                self._plain(f"[{stage}] started")
        elif kind == "progress":
            if stage not in self.tasks and event.get("total"):
                self._stage_progress(stage, event["total"], 0)
            if stage in self.tasks:
                if event.get("total"):
                    self.totals[stage] = event["total"]
                self.progress.update(self.tasks[stage], completed=event.get("step", 0), total=event.get("total"))
        elif kind == "metric":
            self._metric(stage, event.get("values", {}), event.get("variant"))
        elif kind == "log":
            level = event.get("level", "info")
            if not self.quiet:
                style = {"warning": "yellow", "error": "red"}.get(level, "")
                self._print(f"[{stage}] {event.get('message', '')}", style)
        elif kind == "skip":
            self._set_state(stage, "skipped")
            self.notes[stage] = event.get("reason", "up to date")
            self._plain(f"[{stage}] skipped: {self.notes[stage]}")
        elif kind == "done":
            self._finish(stage, "done")
        elif kind == "error":
            # The command prints the error itself (one line, exit code); the list shows where it happened.
            self._finish(stage, "failed")
            self.notes[stage] = event.get("message", "")
        elif kind == "interrupted":
            self._finish(stage, "interrupted")
            if not self.quiet:
                where = f" at step {event['step']}; checkpoint saved" if event.get("step") is not None else ""
                self._print(f"[{stage}] interrupted{where}", "yellow")

    def _set_state(self, stage: str, state: str) -> None:
        if self.states or stage in self.states:
            self.states[stage] = state

    def _finish(self, stage: str, state: str) -> None:
        self._set_state(stage, state)
        if stage in self.started:
            self.notes[stage + ":t"] = f"{time.time() - self.started[stage]:.1f}s"
        if stage in self.tasks and state == "done" and self.totals.get(stage):
            self.progress.update(self.tasks[stage], completed=self.totals[stage])
        if state == "done":
            self._plain(f"[{stage}] done" + (f" in {self.notes[stage + ':t']}" if stage + ":t" in self.notes else ""))

    def _stage_progress(self, stage: str, total: int, completed: int) -> None:
        self.totals[stage] = total
        if stage in self.tasks:
            self.progress.update(self.tasks[stage], total=total, completed=completed)
        else:
            self.tasks[stage] = self.progress.add_task(stage, total=total, completed=completed)

    def _metric(self, stage: str, values: dict[str, Any], variant: str | None = None) -> None:
        shown = {k: v for k, v in values.items() if k in SHOWN_METRICS}
        if not shown:
            return
        where = f"{stage} {variant}" if variant else stage
        if where != self.metrics_stage:
            self.metrics = {}
        self.metrics_stage = where
        self.metrics.update(shown)
        line = f"[{where}]" + (f" step {values['step']}" if "step" in values else "") + "  " + \
            "  ".join(f"{k}={_fmt(v)}" for k, v in shown.items())
        validation = any(k.startswith("val_") for k in values)
        if self.live_mode:
            if validation:
                self._print(line)
        elif not self.quiet and (time.time() - self._last_plain > 2 or validation):
            self._last_plain = time.time()
            self._print(line)

    def _plain(self, text: str) -> None:
        """Stage transitions: shown by the live list in a terminal, as lines otherwise."""
        if not self.live_mode and not self.quiet:
            self._print(text)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def is_tty() -> bool:
    return sys.stderr.isatty()
