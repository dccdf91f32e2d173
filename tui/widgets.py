"""Check boxes whose state reads without colour.

Textual draws a ticked and an unticked box alike (``▐X▌``) and tells them apart by colour alone, which a
monochrome terminal, a colour-blind user or a copied screen loses. These show the mark only when ticked
(``▐X▌`` / ``▐ ▌``); the colours stay as the theme has them.
"""
from __future__ import annotations

from rich.segment import Segment
from textual.strip import Strip
from textual.widgets import Checkbox, SelectionList
from textual.widgets._toggle_button import ToggleButton

TICKED, UNTICKED = "X", " "


class TickBox(Checkbox):
    """A Checkbox whose box holds a mark only when ticked."""

    @property  # type: ignore[override]
    def BUTTON_INNER(self) -> str:  # the name Textual's ToggleButton reads for the inside of the box
        # Read at every render, so the mark follows the value without a watcher of our own.
        return TICKED if self.value else UNTICKED


class TickList(SelectionList):
    """A SelectionList whose boxes hold a mark only for the selected entries."""

    def render_line(self, y: int) -> Strip:
        strip = super().render_line(y)
        index = self.scroll_offset.y + y
        if index >= self.option_count:
            return strip
        selection = self.get_option_at_index(index)
        segments = list(strip)
        # SelectionList draws the box as its first three segments: left edge, inside, right edge.
        if len(segments) < 3 or segments[1].text != ToggleButton.BUTTON_INNER:
            return strip
        mark = TICKED if selection.value in self.selected else UNTICKED
        segments[1] = Segment(mark, segments[1].style, segments[1].control)
        return Strip(segments, strip.cell_length)
