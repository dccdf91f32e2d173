"""The run view: stages with their state, a progress bar with ETA, a live loss/metric plot and the log.

A thread worker tails events.jsonl (tui.follow) and posts what is new at most ten times a second; the plot
redraws at most twice a second. Cancel sends SIGINT (the run checkpoints, exits 130); resume runs the same
command again and the view carries on following the same file.
"""
from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.message import Message
from textual.screen import Screen
from textual.widgets import Footer, Header, ProgressBar, RichLog, Static
from textual.worker import get_current_worker
from textual_plotext import PlotextPlot

from tui import runner
from tui.follow import EventFollower, RunTracker, overall, shown_states
from tui.home import state_text
from tui.runs import run_state

POST_EVERY_S = 0.1  # throttle: at most ~10 messages a second reach the UI thread
PLOT_EVERY_S = 0.5
STATE_EVERY_S = 1.0
STAGE_MARK = {"pending": ("○", "dim"), "running": ("▶", "bold cyan"), "done": ("✓", "green"),
              "skipped": ("↷", "green"), "failed": ("✗", "bold red"), "interrupted": ("‖", "yellow")}
LEVEL_STYLE = {"warning": "yellow", "error": "bold red", "debug": "dim"}


def recorded_states(run_dir: Path) -> dict[str, str]:
    """Each stage's status as the manifest records it; {} when it cannot be read (no manifest yet, or torn)."""
    from toolkit.rundir import RunDir
    from toolkit.session import stage_states

    try:
        return stage_states(RunDir(run_dir))
    except Exception:  # a torn or half-written manifest: the events still say what happened
        return {}


def fmt_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class RunView(Screen):
    """Follows one run directory, whoever started the run."""

    BINDINGS = [
        Binding("c", "cancel", "Cancel", tooltip="Stop the run: it saves a checkpoint and exits (130)"),
        Binding("r", "resume", "Resume", tooltip="Run the same command again: it continues where it stopped"),
        Binding("v", "results", "Results", tooltip="The variants × targets table (needs report.json)"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    class Events(Message):
        """New events from the follower thread (already throttled)."""

        def __init__(self, events: list[dict], restarted: bool, state: tuple[str, str] | None,
                     recorded: dict[str, str] | None = None) -> None:
            super().__init__()
            self.events, self.restarted, self.state, self.recorded = events, restarted, state, recorded

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.tracker = RunTracker()
        self.state: tuple[str, str] = ("new", "")
        self.recorded: dict[str, str] = {}  # each stage's status in the manifest (toolkit.session.stage_states)
        self._logs_written = 0
        self._plot_at = 0.0
        self._plot_dirty = False
        self._auto_results = False

    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="run-top"):
            with Vertical(id="run-side"):
                yield Static("", id="stages")
                yield Static("", id="progress-label")
                yield ProgressBar(id="progress", show_eta=False)
                yield Static("", id="eta")
            yield PlotextPlot(id="plot")
        yield RichLog(id="log", wrap=True, markup=False, max_lines=2000)
        yield Static("", id="run-status", classes="hint")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = str(self.run_dir)
        self._render_stages()
        self._render_plot()
        self._follow()
        self.set_interval(PLOT_EVERY_S, self._plot_if_dirty)

    # ---- the follower (thread) -----------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="follow")
    def _follow(self) -> None:
        worker = get_current_worker()
        follower = EventFollower(self.run_dir / "events.jsonl")
        pending: list[dict] = []
        restarted = False
        last_post = last_state_at = 0.0
        while not worker.is_cancelled:
            try:
                events, again = follower.poll()
            except OSError:
                events, again = [], False
            pending += events
            restarted = restarted or again
            now = time.monotonic()
            state, recorded = None, None
            if now - last_state_at >= STATE_EVERY_S or events:
                # Every second: the lock's heartbeat decides "running", so the state can change with no event.
                last_state_at = now
                state = run_state(self.run_dir)
                recorded = recorded_states(self.run_dir)
            if (pending or restarted or state) and now - last_post >= POST_EVERY_S:
                self.post_message(self.Events(pending, restarted, state, recorded))
                pending, restarted, last_post = [], False, now
            time.sleep(POST_EVERY_S)

    def on_run_view_events(self, message: "RunView.Events") -> None:
        if message.restarted:
            self.tracker.reset()
            self.query_one("#log", RichLog).clear()
            self._logs_written = 0
        self.tracker.feed(message.events)
        if message.recorded is not None:
            self.recorded = message.recorded
        if message.state is not None:
            before = self.state[0]
            child = self.app.child_for(self.run_dir)
            if child is not None and child.alive and message.state[0] != "running":
                # The child has no lock yet (starting), or has let it go and is exiting (stopping).
                stopping = self.tracker.last_kind in ("interrupted", "error") or \
                    (self.tracker.last_kind == "done" and self.tracker.current == "session")
                message.state = ("running", f"{'stopping' if stopping else 'starting'} (pid {child.pid})")
            self.state = message.state
            self._on_state(before)
        self._render_stages()
        self._render_progress()
        self._render_log()
        if any(e.get("kind") in ("metric", "done") for e in message.events) or message.restarted:
            self._plot_dirty = True
        self._render_status()

    def _on_state(self, before: str) -> None:
        # A session this view watched finish with a report: show the results once.
        if before == "running" and self.state[0] == "done" and (self.run_dir / "report.json").exists() \
                and not self._auto_results and self.app.screen is self:
            self._auto_results = True
            self.action_results()

    def child_exited(self, child: runner.Child) -> None:
        """Called by the app when the child it started for this run ends."""
        self._render_status()

    # ---- rendering -------------------------------------------------------------------------------------

    def _render_stages(self) -> None:
        text = Text()
        for name, state in shown_states(self.tracker, self.recorded, self.state[0]):
            mark, style = STAGE_MARK.get(state, ("?", ""))
            text.append(f"{mark} ", style=style)
            text.append(f"{name:<9}", style="bold" if state == "running" else "")
            text.append(state, style=style)
            text.append("\n")
        self.query_one("#stages", Static).update(text)

    def _render_progress(self) -> None:
        tr = self.tracker
        # The running stage; else the one a stopped run stopped in (its progress stays visible).
        st = tr.running_stage or (tr.stages.get(tr.current) if tr.current and self.state[0] != "done" else None)
        bar = self.query_one("#progress", ProgressBar)
        label = self.query_one("#progress-label", Static)
        eta = self.query_one("#eta", Static)
        if st is None:
            if self.state[0] == "running":
                label.update(Text("starting…", style="bold"))
                bar.update(total=1, progress=0)
                eta.update("")
                return
            # No stage to follow: count the stages done (a skipped one included), never assume the rest.
            done, total, skipped = overall(shown_states(tr, self.recorded, self.state[0]))
            label.update(Text(f"all {total} stages done" if done == total else f"{done}/{total} stages done",
                              style="bold"))
            bar.update(total=total or 1, progress=done)
            parts = ([f"{total - done} not run"] if done < total else []) + ([f"{skipped} skipped"] if skipped else [])
            eta.update(Text(", ".join(parts), style="dim"))  # why each was skipped: in the log
            return
        if not st.total:
            label.update(Text(f"{st.name} {st.detail}…", style="bold"))
            bar.update(total=None)  # indeterminate: the stage reports no step count
            eta.update("")
            return
        label.update(Text.assemble((st.name, "bold"), f" {st.detail}" if st.detail else "", f" {st.step}/{st.total}"))
        bar.update(total=st.total, progress=st.step)
        if self.state[0] != "running":
            eta.update(Text(f"stopped ({self.state[0]})", style="dim"))
            return
        left = st.eta_s()
        eta.update(Text(f"ETA {fmt_duration(left)}" if left is not None else "ETA …", style="dim"))

    def _render_log(self) -> None:
        log = self.query_one("#log", RichLog)
        logs = self.tracker.logs
        new = min(self.tracker.logs_total - self._logs_written, len(logs))
        for line in list(logs)[len(logs) - new:]:
            stamp = time.strftime("%H:%M:%S", time.localtime(line.t)) if line.t else "--:--:--"
            log.write(Text.assemble((stamp + " ", "dim"), (f"{line.stage:<8} ", "bold"),
                                    (line.message, LEVEL_STYLE.get(line.level, ""))))
        self._logs_written = self.tracker.logs_total

    def _render_status(self) -> None:
        state, detail = self.state
        child = self.app.child_for(self.run_dir)
        text = Text.assemble(state_text(state), "  ", detail)
        if child is not None:
            text.append(f"  ·  child {runner.describe_exit(child.returncode if not child.alive else None)}",
                        style="dim")
            if child.returncode not in (None, 0, 130):
                text.append("  " + runner.last_line("\n".join(child.tail(5))), style="red")
        self.query_one("#run-status", Static).update(text)

    def _plot_if_dirty(self) -> None:
        if self._plot_dirty:
            self._plot_dirty = False
            self._render_plot()

    def _render_plot(self) -> None:
        plot = self.query_one("#plot", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        series = self.tracker.series
        # The model being trained now (the base, then each compression step's): its loss on the left axis,
        # its first validation metric other than loss on the right. Two series keep the plot readable at 80x24.
        model = self.tracker.last_model
        prefix = f"{model} " if model else ""
        loss = f"{prefix}loss"
        check = next((k for k in series if k.startswith(prefix + "val_") and k != prefix + "val_loss"
                      and (model or " " not in k)), None)
        if loss not in series and check is None:
            plt.title("the loss and a validation metric appear here")
            plot.refresh()
            return
        if loss in series:
            xs, ys = zip(*series[loss])
            plt.plot(list(xs), list(ys), marker="braille", color="cyan")
        if check is not None:
            xs, ys = zip(*series[check])
            plt.plot(list(xs), list(ys), marker="dot", color="yellow", yside="right")
        shown = check.removeprefix(prefix) if check else ""
        plt.title(f"{model or 'training'}: loss (cyan)" + (f", {shown} (yellow, right)" if shown else ""))
        plt.xlabel("step")
        plot.refresh()

    # ---- actions -----------------------------------------------------------------------------------------

    def action_cancel(self) -> None:
        self.app.cancel_run(self.run_dir)

    def action_resume(self) -> None:
        if self.state[0] == "running":
            self.notify("the run is still going; cancel it first", severity="warning")
            return
        if self.app.resume_run(self.run_dir, show=False) is not None:
            self.notify("resumed: the same command again")
            self.state = ("running", "starting")
            self._render_status()

    def action_results(self) -> None:
        from tui.results import ResultsScreen

        if not (self.run_dir / "report.json").exists():
            self.notify("no report.json yet: the session writes it at the end", severity="warning")
            return
        self.app.push_screen(ResultsScreen(self.run_dir))
