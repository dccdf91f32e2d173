"""New session: pick a recipe, edit its main fields, see the core's own validation, save as TOML, start.

Every change is checked by ``toolkit.config.recipe_from_dict`` (in a worker: checking compression steps
imports the method modules) and the message shown is the core's own. Starting runs
``python -m toolkit run RECIPE --out runs/NAME --set ...`` with one ``--set`` per changed field.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, VerticalScroll
from textual.screen import Screen
from textual.widget import Widget
from textual.widgets import Checkbox, Footer, Header, Input, Label, Select, SelectionList, Static

from tui import form, runner
from tui.form import STEP_SETTINGS, FormState
from tui.widgets import TickBox, TickList

PLAIN_FIELDS = {"name": "f-name", "model.source": "f-model-source", "data.train": "f-data-train",
                "data.validation": "f-data-validation", "data.eval": "f-data-eval", "train.epochs": "f-epochs"}
CHECK_DELAY_S = 0.3


def _row(label: str, *widgets: Widget, tooltip: str = "") -> Horizontal:
    lab = Label(label, classes="form-label")
    if tooltip:
        lab.tooltip = tooltip
    return Horizontal(lab, *widgets, classes="form-row")


class NewSessionScreen(Screen):
    """A form over one recipe file; the session it starts is a child process (tui.runner)."""

    AUTO_FOCUS = "#f-recipe"
    BINDINGS = [
        Binding("ctrl+r", "start", "Start", tooltip="Start the session with these settings"),
        Binding("ctrl+s", "save", "Save TOML",
                tooltip="Write the recipe with these settings to 'save as' (asks before overwriting a file)"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, recipe: Path | None = None) -> None:
        super().__init__()
        self.recipe_path = recipe
        self.state: FormState | None = None
        self._loading = False
        self._check_timer = None
        self.items: list[str] = []
        self.valid = False

    def compose(self) -> ComposeResult:
        from toolkit.config import PRECISIONS
        from toolkit.registry import TASKS, format_names

        yield Header()
        with VerticalScroll(id="form"):
            yield _row("Recipe", Select([], id="f-recipe", allow_blank=True, prompt="pick a recipe", compact=True))
            yield Static("", id="f-recipe-path", classes="hint")
            yield _row("Name", Input(id="f-name", compact=True),
                       tooltip="names the run; the run directory is runs/<name>")
            yield _row("Task", Select([(t, t) for t in TASKS.names()], id="f-task", allow_blank=False, compact=True))
            yield _row("Model", Input(id="f-model-source", placeholder="builtin:<name>, a model folder, an .onnx",
                                      compact=True),
                       tooltip="a local Hugging Face directory, an .onnx file (compression only), or builtin:<name>")
            yield _row("Train data", Input(id="f-data-train", placeholder="file, folder, builtin:digits; a, b = pair",
                                           compact=True))
            yield _row("Validation", Input(id="f-data-validation", placeholder="empty: carved from train", compact=True))
            yield _row("Eval data", Input(id="f-data-eval", placeholder="empty: carved from train", compact=True))
            yield _row("Epochs", Input(id="f-epochs", classes="short", compact=True),
                       Label("Precision", classes="form-label-in"),
                       Select([(p, p) for p in PRECISIONS], id="f-precision", allow_blank=False, classes="short",
                              compact=True))
            yield Label("Compression steps (applied in this order)", classes="section-title")
            yield Static("", id="f-custom-steps", classes="hint")
            for method, settings in STEP_SETTINGS.items():
                widgets: list[Widget] = [TickBox(method, id=f"step-{method}", classes="step-name", compact=True)]
                for key, kind, default, choices in settings:
                    widgets.append(Label(key, classes="form-label-in"))
                    if kind == "choice":
                        widgets.append(Select([(c, c) for c in choices], id=f"s-{method}-{key}", allow_blank=False,
                                              value=default, classes="step-setting", compact=True))
                    else:
                        shown = ", ".join(map(str, default)) if isinstance(default, list) else str(default)
                        widgets.append(Input(shown, id=f"s-{method}-{key}", classes="step-setting", compact=True))
                yield Horizontal(*widgets, classes="form-row step-row")
            yield _row("Export", *[TickBox(f, id=f"fmt-{f}", classes="fmt", compact=True) for f in format_names()])
            yield _row("Targets", TickList(id="f-targets", compact=True),
                       tooltip="latency is measured where reachable, else estimated")
            yield _row("Extra --set", Input(id="f-extra", placeholder="key=value … e.g. train.max_steps=20",
                                            compact=True),
                       tooltip="any recipe key, as on the command line: --set key=value")
            yield _row("Save as", Input(id="f-save", placeholder="recipes/<name>.toml", compact=True))
            yield _row("Start over", TickBox("clear the run directory first (--force)", id="f-force",
                                              compact=True))
        yield Static("", id="f-check")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "new session"
        from tui.runs import list_recipes

        recipes = list_recipes(self.app.recipe_folders)
        select = self.query_one("#f-recipe", Select)
        select.set_options([(f"{e.name}  ({e.origin})", str(e.path)) for e in recipes])
        path = self.recipe_path or (recipes[0].path if recipes else None)
        if path is not None:
            self._loading = True
            select.value = str(path) if any(str(e.path) == str(path) for e in recipes) else Select.BLANK
            self._load(Path(path))

    # ---- loading a recipe ------------------------------------------------------------------------------

    @work(thread=True, exclusive=True, group="form-load")
    def _load(self, path: Path) -> None:
        from toolkit.errors import UserError

        try:
            state = form.load_form(path)
        except UserError as e:
            self.app.call_from_thread(self._show_check, False, str(e))
            return
        self.app.call_from_thread(self._fill, state)

    def _fill(self, state: FormState) -> None:
        from toolkit.targets import known_names

        self._loading = True
        self.state = state
        v = state.values
        self.query_one("#f-recipe-path", Static).update(Text(str(state.path), style="dim"))
        for key, wid in PLAIN_FIELDS.items():
            value = v[key]
            self.query_one(f"#{wid}", Input).value = f"{value:g}" if isinstance(value, float) else str(value)
        self.query_one("#f-task", Select).value = v["task"]
        self.query_one("#f-precision", Select).value = v["train.precision"]
        for cb in self.query(".fmt").results(Checkbox):
            cb.value = cb.id.removeprefix("fmt-") in v["export.formats"]
        targets = self.query_one("#f-targets", SelectionList)
        targets.clear_options()
        names = list(dict.fromkeys(known_names() + list(v["eval.targets"])))
        targets.add_options([(n, n, n in v["eval.targets"]) for n in names])
        custom = self.query_one("#f-custom-steps", Static)
        custom.update(Text(f"{len(state.recipe.compress)} custom [[compress]] steps in the file: edit them in "
                           "the TOML", style="yellow") if state.custom_steps else "")
        custom.display = state.custom_steps
        for method, settings in STEP_SETTINGS.items():
            table = state.steps.get(method)
            switch = self.query_one(f"#step-{method}", Checkbox)
            switch.value = table is not None
            switch.disabled = state.custom_steps
            for key, kind, default, _ in settings:
                value = (table or {}).get(key, default)
                widget = self.query_one(f"#s-{method}-{key}")
                if isinstance(widget, Select):
                    widget.value = value
                else:
                    widget.value = ", ".join(map(str, value)) if isinstance(value, list) else str(value)
                widget.disabled = table is None or state.custom_steps
        self.query_one("#f-save", Input).value = f"recipes/{v['name']}.toml"
        self._loading = False
        self._schedule_check()

    # ---- reading the form ------------------------------------------------------------------------------

    def collect(self) -> list[str]:
        """The ``--set`` items for what the form changed (raises the UserError of a malformed number)."""
        assert self.state is not None
        values: dict[str, Any] = {key: self.query_one(f"#{wid}", Input).value for key, wid in PLAIN_FIELDS.items()}
        values["task"] = self.query_one("#f-task", Select).value
        values["train.precision"] = self.query_one("#f-precision", Select).value
        values["export.formats"] = [cb.id.removeprefix("fmt-") for cb in self.query(".fmt").results(Checkbox)
                                    if cb.value]
        values["eval.targets"] = list(self.query_one("#f-targets", SelectionList).selected)
        steps: dict[str, dict[str, Any] | None] = {}
        for method, settings in STEP_SETTINGS.items():
            if not self.query_one(f"#step-{method}", Checkbox).value:
                steps[method] = None
                continue
            table = dict(self.state.steps.get(method) or {"method": method})
            for key, kind, default, _ in settings:
                widget = self.query_one(f"#s-{method}-{key}")
                raw = widget.value
                value = raw if kind == "choice" else form.parse_ints(raw, f"{method}.{key}") if kind == "ints" \
                    else form.parse_number(raw, f"{method}.{key}")
                if key in table or value != default:
                    table[key] = value  # only what differs from what the file says (or the form's default)
            steps[method] = table
        return form.overrides(self.state, values, steps, self.query_one("#f-extra", Input).value)

    # ---- checking --------------------------------------------------------------------------------------

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "f-name" and not self._loading:
            self.query_one("#f-save", Input).value = f"recipes/{event.value}.toml"
        self._schedule_check()

    def on_select_changed(self, event: Select.Changed) -> None:
        if event.select.id == "f-recipe":
            if not self._loading and isinstance(event.value, str):
                self._load(Path(event.value))
            return
        self._schedule_check()

    def on_checkbox_changed(self, event: Checkbox.Changed) -> None:
        cid = event.checkbox.id or ""
        if cid.startswith("step-") and not self._loading:
            method = cid.removeprefix("step-")
            for key, *_ in STEP_SETTINGS[method]:
                self.query_one(f"#s-{method}-{key}").disabled = not event.value
        self._schedule_check()

    def on_selection_list_selected_changed(self, event: SelectionList.SelectedChanged) -> None:
        self._schedule_check()

    def _schedule_check(self) -> None:
        if self._loading or self.state is None:
            return
        if self._check_timer is not None:
            self._check_timer.stop()
        self._check_timer = self.set_timer(CHECK_DELAY_S, self._check_now)

    def _check_now(self) -> None:
        from toolkit.errors import UserError

        self.valid = False
        try:
            items = self.collect()
        except UserError as e:
            self._show_check(False, str(e))
            return
        self._check(items)

    @work(thread=True, exclusive=True, group="form-check")
    def _check(self, items: list[str]) -> None:
        from toolkit.errors import UserError

        try:
            form.check(self.state, items)
        except UserError as e:
            self.app.call_from_thread(self._show_check, False, str(e), items)
            return
        self.app.call_from_thread(self._show_check, True, "", items)

    def _show_check(self, ok: bool, message: str, items: list[str] | None = None) -> None:
        self.valid = ok
        if items is not None:
            self.items = items
        box = self.query_one("#f-check", Static)
        if ok:
            sets = " ".join(f"--set {i}" for i in self.items)
            box.update(Text.assemble(("✓ ready ", "bold green"), (f"ctrl+r starts: run {self.run_dir()} {sets}", "dim")))
        else:
            box.update(Text.assemble(("✗ ", "bold red"), (message, "red")))
        box.set_class(not ok, "invalid")

    def run_dir(self) -> Path:
        name = self.query_one("#f-name", Input).value.strip() or "run"
        return Path("runs") / name

    # ---- actions ---------------------------------------------------------------------------------------

    def action_save(self) -> None:
        """Save as: the core checks the recipe first; an existing file is overwritten only when confirmed."""
        from toolkit.errors import UserError
        from tui.dialogs import ConfirmDialog

        if self.state is None:
            return
        try:
            items = self.collect()
            dest = form.check_destination(self.query_one("#f-save", Input).value.strip())
            form.check(self.state, items)
        except UserError as e:
            self._show_check(False, str(e))
            return
        if not dest.exists():
            self._save(items, dest, overwrite=False)
            return

        def answered(yes: bool | None) -> None:
            if yes:
                self._save(items, dest, overwrite=True)
            else:
                self.notify(f"not saved: {dest} is unchanged", severity="warning")

        question = f"{dest} exists. Overwrite it?"
        try:
            changed = dest.resolve() == self.state.path.resolve() \
                and dest.read_text(encoding="utf-8") != self.state.text
        except (OSError, UnicodeDecodeError):
            changed = False  # unreadable: the plain question still asks before anything is written
        if changed:
            question = f"{dest} changed since the form read it; overwriting drops those changes. Overwrite it?"
        self.app.push_screen(ConfirmDialog(question, yes="Overwrite"), answered)

    def _save(self, items: list[str], dest: Path, overwrite: bool) -> None:
        from toolkit.errors import UserError

        try:
            path = form.save(self.state, items, dest, overwrite=overwrite)
        except UserError as e:
            self._show_check(False, str(e))
            return
        self.notify(f"saved {path}")

    def action_start(self) -> None:
        from toolkit.errors import UserError

        if self.state is None:
            return
        try:
            items = self.collect()
            form.check(self.state, items)
        except UserError as e:
            self._show_check(False, str(e))
            self.notify("fix the recipe first", severity="error")
            return
        # Absolute: the child resolves nothing against its recipe's folder by mistake, and the command saved
        # for resume works from any folder.
        run_dir = self.run_dir().resolve()
        argv = runner.run_argv(self.state.path.resolve(), run_dir, items,
                               force=self.query_one("#f-force", Checkbox).value)
        self.app.pop_screen()
        self.app.start_session(argv, run_dir)
