"""Small modal dialogs: pick export formats; pick a model file and a target to benchmark; confirm an overwrite."""
from __future__ import annotations

from pathlib import Path

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import ModalScreen
from textual.widgets import Button, Label, Select, SelectionList

from tui.widgets import TickList


class ExportDialog(ModalScreen[list[str] | None]):
    """Returns the formats to export, or None."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel"), Binding("ctrl+s", "ok", "Export")]

    def __init__(self, formats: list[str], present: list[str]) -> None:
        super().__init__()
        self.formats, self.present = formats, present

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label("Export every variant to (space toggles):", classes="dialog-title")
            yield TickList(*[(f + (" (exported)" if f in self.present else ""), f, f in self.present)
                             for f in self.formats], id="formats", compact=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Export", variant="primary", id="ok", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_ok() if event.button.id == "ok" else self.dismiss(None)

    def action_ok(self) -> None:
        selected = list(self.query_one("#formats", SelectionList).selected)
        self.dismiss(selected or None)

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class BenchDialog(ModalScreen[tuple[Path, str] | None]):
    """Returns (model file, target name), or None."""

    BINDINGS = [Binding("escape", "dismiss_none", "Cancel"), Binding("ctrl+s", "ok", "Run")]

    def __init__(self, files: list[tuple[str, Path]], targets: list[str], target: str | None = None,
                 title: str = "Benchmark") -> None:
        super().__init__()
        self.files, self.targets, self.target, self.title_text = files, targets, target, title

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.title_text, classes="dialog-title")
            yield Label("model file")
            yield Select([(label, i) for i, (label, _) in enumerate(self.files)], id="bench-file",
                         allow_blank=False, value=0, compact=True)
            yield Label("target")
            default = self.target if self.target in self.targets else self.targets[0]
            yield Select([(t, t) for t in self.targets], id="bench-target", allow_blank=False, value=default,
                         compact=True)
            with Horizontal(classes="dialog-buttons"):
                yield Button("Run", variant="primary", id="ok", compact=True)
                yield Button("Cancel", id="cancel", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.action_ok() if event.button.id == "ok" else self.dismiss(None)

    def action_ok(self) -> None:
        index = self.query_one("#bench-file", Select).value
        target = self.query_one("#bench-target", Select).value
        self.dismiss((self.files[int(index)][1], str(target)))

    def action_dismiss_none(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """Asks a yes/no question; returns True only for an explicit yes (escape, n and Cancel say no).

    Cancel has the focus, so a stray enter changes nothing."""

    AUTO_FOCUS = "#cancel"
    BINDINGS = [Binding("escape,n", "no", "Cancel"), Binding("y", "yes", "Yes")]

    def __init__(self, question: str, yes: str = "Yes") -> None:
        super().__init__()
        self.question, self.yes = question, yes

    def compose(self) -> ComposeResult:
        with Vertical(classes="dialog"):
            yield Label(self.question, id="confirm-question", classes="dialog-title")
            with Horizontal(classes="dialog-buttons"):
                yield Button(f"{self.yes} (y)", variant="warning", id="ok", compact=True)
                yield Button("Cancel (n)", id="cancel", compact=True)

    def on_button_pressed(self, event: Button.Pressed) -> None:
        self.dismiss(event.button.id == "ok")

    def action_yes(self) -> None:
        self.dismiss(True)

    def action_no(self) -> None:
        self.dismiss(False)
