"""The Textual app: screens for home, a new session, a run, its results and the device targets.

Sessions run as child processes (tui.runner) that the app follows through their events.jsonl, so a run
started from the CLI is watched the same way, quitting the UI leaves a run going, and a crashing run never
takes the UI down. Long work (following files, benchmarks, exports, reachability checks) runs in thread
workers; the UI thread only applies their results.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Iterable

from textual.app import App
from textual.binding import Binding

from tui import runner
from tui.commands import ActionsProvider
from tui.runs import is_run_dir

DARK, LIGHT = "textual-dark", "textual-light"


class ToolkitApp(App[None]):
    """``python -m toolkit tui [PATH]``: PATH is a run directory to open, or a folder of run directories."""

    TITLE = "edge-toolkit"
    CSS_PATH = "app.tcss"
    COMMANDS = App.COMMANDS | {ActionsProvider}
    BINDINGS = [
        Binding("ctrl+t", "toggle_theme", "Theme", tooltip="Switch between the dark and the light theme"),
        Binding("ctrl+o", "home", "Home", show=False, tooltip="Back to the list of runs and recipes"),
        Binding("ctrl+n", "new_session", "New session", show=False, tooltip="Set up a session from a recipe"),
        Binding("ctrl+g", "targets", "Targets", show=False, tooltip="Device profiles, reachability, benchmarks"),
    ]

    def __init__(self, path: str | Path | None = None, runs_roots: Iterable[Path] | None = None,
                 recipe_folders: list[Path] | None = None,
                 targets_loader: Callable[[], list[Any]] | None = None) -> None:
        super().__init__()
        self.theme = DARK
        self.open_path = Path(path) if path else None
        roots = list(runs_roots) if runs_roots is not None else [Path("runs")]
        if self.open_path is not None:
            roots.append(self.open_path)  # a run directory is listed itself; a folder, with the runs in it
        self.runs_roots = roots
        self.recipe_folders = recipe_folders
        self.targets_loader = targets_loader
        self.children_by_run: dict[Path, runner.Child] = {}
        self.known_runs: list[Any] = []
        self.known_recipes: list[Any] = []

    # ---- screens -------------------------------------------------------------------------------------

    def on_mount(self) -> None:
        from tui.home import HomeScreen

        self.push_screen(HomeScreen())
        if self.open_path is not None:
            if is_run_dir(self.open_path):
                self.open_run(self.open_path)
            elif not self.open_path.is_dir():
                self.notify(f"{self.open_path}: no such run directory", severity="error")

    def open_run(self, path: Path, results: bool | None = None) -> None:
        """The results when the run has a report.json (and is not running), else the run view."""
        from tui.results import ResultsScreen
        from tui.run_view import RunView

        from toolkit.rundir import RunDir, lock_is_live, read_lock

        path = Path(path)
        child = self.child_for(path)
        if results is None:
            # A rerun in progress keeps the last report.json: watch it rather than show the old results.
            running = (child is not None and child.alive) or lock_is_live(read_lock(RunDir(path)))
            results = (path / "report.json").exists() and not running
        self.push_screen(ResultsScreen(path) if results else RunView(path))

    def action_home(self) -> None:
        from tui.home import HomeScreen

        while len(self.screen_stack) > 2 and not isinstance(self.screen, HomeScreen):
            self.pop_screen()

    def action_new_session(self, recipe: str | None = None) -> None:
        from tui.new_session import NewSessionScreen

        self.push_screen(NewSessionScreen(Path(recipe) if recipe else None))

    def action_targets(self) -> None:
        from tui.targets_screen import TargetsScreen

        if not isinstance(self.screen, TargetsScreen):
            self.push_screen(TargetsScreen())

    def action_toggle_theme(self) -> None:
        self.theme = LIGHT if self.theme == DARK else DARK

    # ---- child processes -----------------------------------------------------------------------------

    def child_for(self, run_dir: Path) -> runner.Child | None:
        return self.children_by_run.get(Path(run_dir).resolve())

    def start_session(self, argv: list[str], run_dir: Path, show: bool = True) -> runner.Child | None:
        """Start ``argv`` for ``run_dir`` as a detached child and (by default) show its run view."""
        from toolkit.errors import UserError

        try:
            child = runner.start(argv, run_dir, on_exit=self._child_exited_thread)
        except UserError as e:
            self.notify(str(e), severity="error", timeout=8)
            return None
        self.children_by_run[Path(run_dir).resolve()] = child
        if show:
            from tui.run_view import RunView

            self.push_screen(RunView(Path(run_dir)))
        return child

    def _child_exited_thread(self, child: runner.Child) -> None:
        try:
            self.call_from_thread(self._child_exited, child)
        except RuntimeError:
            pass  # the UI has gone; the run's own files say how it ended

    def _child_exited(self, child: runner.Child) -> None:
        from tui.run_view import RunView

        code = child.returncode
        tail = runner.last_line("\n".join(child.tail(5)))
        severity = "information" if code == 0 else "warning" if code == 130 else "error"
        message = f"{child.run_dir.name if child.run_dir else 'command'}: {runner.describe_exit(code)}"
        if code not in (0, 130) and tail:
            message += f"\n{tail}"
        self.notify(message, severity=severity, timeout=6)
        for screen in self.screen_stack:
            if isinstance(screen, RunView) and child.run_dir and screen.run_dir.resolve() == child.run_dir.resolve():
                screen.child_exited(child)

    def cancel_run(self, run_dir: Path) -> None:
        from toolkit.errors import UserError

        try:
            pid = runner.cancel(run_dir, self.child_for(run_dir))
        except (UserError, OSError) as e:
            self.notify(str(e), severity="warning")
            return
        self.notify(f"asked pid {pid} to stop: it saves a checkpoint first; resume continues from there")

    def resume_run(self, run_dir: Path, show: bool = False) -> runner.Child | None:
        from toolkit.errors import UserError

        child = self.child_for(run_dir)
        if child is not None and child.alive:
            self.notify(f"{run_dir.name} is still running", severity="warning")
            return None
        try:
            argv = runner.resume_argv(run_dir)
        except UserError as e:
            self.notify(str(e), severity="error")
            return None
        return self.start_session(argv, run_dir, show=show)

    # ---- palette -------------------------------------------------------------------------------------

    def palette_extras(self) -> list[tuple[str, str, Callable[[], Any]]]:
        """Commands that take an argument: open each known run, start from each known recipe."""
        out = []
        for info in self.known_runs:
            out.append((f"Open run {info.name}", f"{info.state} · {info.path}",
                        lambda p=info.path: self.open_run(p)))
        for entry in self.known_recipes:
            out.append((f"New session from {entry.name}", f"{entry.origin} · {entry.path}",
                        lambda p=entry.path: self.action_new_session(str(p))))
        return out
