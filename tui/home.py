"""Home: the run directories (task, state, best variant) and the recipes a session can start from."""
from __future__ import annotations

import time
from pathlib import Path

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from tui.runs import RecipeEntry, RunInfo, list_recipes, scan_runs

STATE_STYLE = {"running": ("● running", "bold cyan"), "done": ("✓ done", "green"), "failed": ("✗ failed", "bold red"),
               "interrupted": ("‖ interrupted", "yellow"), "new": ("· new", "dim")}
REFRESH_S = 2.0


def shown_path(path: Path) -> str:
    """A path relative to the current folder when it is inside it (short, and the same on every machine)."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def state_text(state: str) -> Text:
    label, style = STATE_STYLE.get(state, (state, ""))
    return Text(label, style=style)


class HomeScreen(Screen):
    """Lists runs under the app's roots (refreshed every few seconds, off the UI thread) and recipes."""

    BINDINGS = [
        Binding("o", "open", "Open", tooltip="Open the highlighted run (results, or the live view) or recipe"),
        Binding("n", "new", "New session", tooltip="Set up a session from the highlighted recipe"),
        Binding("t", "app.targets", "Targets", tooltip="Device profiles, reachability, benchmarks"),
        Binding("c", "cancel", "Cancel run", tooltip="Stop the highlighted running run (it checkpoints first)"),
        Binding("r", "resume", "Resume run", tooltip="Run the highlighted run's command again; it continues"),
        Binding("f5", "refresh", "Refresh", show=False, tooltip="Read the run directories again now"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.runs: list[RunInfo] = []
        self.recipes: list[RecipeEntry] = []
        self._shown: tuple = ()

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("Runs", classes="section-title")
        yield DataTable(id="runs", cursor_type="row", zebra_stripes=True)
        yield Static("", id="runs-legend", classes="hint")
        yield Static("Recipes", classes="section-title")
        yield DataTable(id="recipes", cursor_type="row")
        yield Static("", id="home-hint", classes="hint")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "runs and recipes"
        runs = self.query_one("#runs", DataTable)
        for label, key in (("run", "run"), ("task", "task"), ("state", "state"), ("best", "best")):
            runs.add_column(label, key=key)
        recipes = self.query_one("#recipes", DataTable)
        for label in ("recipe", "task", "about"):  # where it is from: in the hint line (80 columns)
            recipes.add_column(label, key=label)
        self.action_refresh()
        self.set_interval(REFRESH_S, self.action_refresh)

    def on_screen_resume(self) -> None:
        self.action_refresh()

    def action_refresh(self) -> None:
        self._scan()

    @work(thread=True, exclusive=True, group="home-scan")
    def _scan(self) -> None:
        roots = [r for r in self.app.runs_roots if r.exists()]
        runs = scan_runs(roots)
        recipes = list_recipes(self.app.recipe_folders)
        self.app.call_from_thread(self._apply, runs, recipes)

    def _apply(self, runs: list[RunInfo], recipes: list[RecipeEntry]) -> None:
        # A run the UI just started has no lock yet for a moment: its live child says it is running.
        for info in runs:
            child = self.app.child_for(info.path)
            if child is not None and child.alive and info.state != "running":
                info.state, info.detail = "running", f"starting (pid {child.pid})"
        self.app.known_runs, self.app.known_recipes = runs, recipes
        shown = (tuple((r.path, r.state, r.best, r.task, r.detail) for r in runs),
                 tuple((e.path, e.task) for e in recipes))
        if shown == self._shown:
            return  # nothing changed: keep the tables (and their cursors) as they are
        self._shown = shown
        self.runs, self.recipes = runs, recipes
        _fill(self.query_one("#runs", DataTable),
              [(str(r.path), [Text(shown_path(r.path)), Text(r.task), state_text(r.state), Text(r.best)])
               for r in runs])
        _fill(self.query_one("#recipes", DataTable),
              [(str(e.path), [Text(e.name), Text(e.task),
                              Text(e.description[:32] + ("…" if len(e.description) > 32 else ""), style="dim")])
               for e in recipes])
        self.query_one("#runs-legend", Static).update(runs_legend(runs))
        if not runs:
            self.query_one("#home-hint", Static).update(
                "No runs yet: pick a recipe below and press n (or o) to set up a session.")
        self._update_hint()

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._update_hint()

    def _update_hint(self) -> None:
        run = self.highlighted_run()
        table = self.focused if isinstance(self.focused, DataTable) else None
        hint = self.query_one("#home-hint", Static)
        if table is not None and table.id == "recipes":
            entry = self.highlighted_recipe()
            if entry:
                hint.update(Text.assemble((f"{entry.origin}: ", "bold"), shown_path(entry.path), "  ",
                                          (entry.description, "dim")))
            return
        if run is not None:
            when = time.strftime("%Y-%m-%d %H:%M", time.localtime(run.updated)) if run.updated else "—"
            hint.update(Text.assemble((f"{run.state}: ", "bold"), run.detail, ("  ·  last event " + when, "dim")))

    def on_descendant_focus(self) -> None:
        self._update_hint()

    def highlighted_run(self) -> RunInfo | None:
        return _highlighted(self.query_one("#runs", DataTable), {str(r.path): r for r in self.runs})

    def highlighted_recipe(self) -> RecipeEntry | None:
        return _highlighted(self.query_one("#recipes", DataTable), {str(e.path): e for e in self.recipes})

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        if event.data_table.id == "runs":
            self.action_open_run()
        else:
            self.action_new()

    def action_open(self) -> None:
        focused = self.focused
        if isinstance(focused, DataTable) and focused.id == "recipes":
            self.action_new()
        else:
            self.action_open_run()

    def action_open_run(self) -> None:
        run = self.highlighted_run()
        if run is None:
            self.notify("no run highlighted", severity="warning")
            return
        self.app.open_run(run.path)

    def action_new(self) -> None:
        entry = self.highlighted_recipe() or (self.recipes[0] if self.recipes else None)
        self.app.action_new_session(str(entry.path) if entry else None)

    def action_cancel(self) -> None:
        run = self.highlighted_run()
        if run is not None:
            self.app.cancel_run(run.path)

    def action_resume(self) -> None:
        run = self.highlighted_run()
        if run is None:
            return
        if run.state == "running":
            self.notify(f"{run.name} is running", severity="warning")
            return
        if self.app.resume_run(run.path) is not None:
            self.app.open_run(run.path, results=False)


def runs_legend(runs: list[RunInfo]) -> Text:
    """What the best column's entries mean, when a run has one (a '+N' only when one shows it)."""
    if not any(r.best for r in runs):
        return Text()
    out = Text.assemble(("best:", "bold"), " the recommended variant @ the first target")
    if any(r.best.rsplit(" ", 1)[-1].startswith("+") for r in runs if r.best):
        out.append("; ")
        out.append("+N", style="bold")
        out.append(" other targets recommend another")
    return out


def _highlighted(table: DataTable, by_key: dict) -> object | None:
    if table.row_count == 0:
        return None
    try:
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key
    except Exception:  # an empty or refilled table
        return None
    return by_key.get(key.value)


def _fill(table: DataTable, rows: list[tuple[str, list[Text]]]) -> None:
    """Replace a table's rows, keeping the cursor on the same row key when it is still there."""
    current = None
    if table.row_count:
        try:
            current = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        except Exception:
            current = None
    table.clear()
    for key, cells in rows:
        table.add_row(*cells, key=key)
    keys = [k for k, _ in rows]
    if current in keys:
        table.move_cursor(row=keys.index(current))
