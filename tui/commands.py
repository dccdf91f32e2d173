"""The command palette (ctrl+p): every action of the current screen and the app, and every run and recipe.

Actions come from the bindings themselves (those with a description), so the palette and the footer can
never disagree; plus navigation that needs an argument (open a run, start from a recipe).
"""
from __future__ import annotations

from functools import partial
from typing import Any, Callable, Iterator

from textual.command import DiscoveryHit, Hit, Hits, Provider


class ActionsProvider(Provider):
    """Yields (title, help, callback) for the screen the palette was opened on."""

    def _commands(self) -> Iterator[tuple[str, str, Callable[[], Any]]]:
        screen, app = self.screen, self.app
        seen: set[str] = set()
        for node in (screen, app):
            for binding in _bindings_of(node):
                if not binding.description or binding.action in seen:
                    continue
                if app._check_action_state(binding.action, node) is False:
                    continue  # the action says it is unavailable here (check_action)
                seen.add(binding.action)
                key = app.get_key_display(binding)
                yield binding.description, f"{binding.tooltip or binding.description} [{key}]", \
                    partial(app.run_action, binding.action, node)
        for title, help_text, callback in getattr(app, "palette_extras", lambda: [])():
            yield title, help_text, callback

    async def discover(self) -> Hits:
        for title, help_text, callback in self._commands():
            yield DiscoveryHit(title, callback, help=help_text)

    async def search(self, query: str) -> Hits:
        matcher = self.matcher(query)
        for title, help_text, callback in self._commands():
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)


def _bindings_of(node: Any) -> list[Any]:
    """The Binding objects a node (screen or app) declares, in order."""
    out = []
    for bindings in node._bindings.key_to_bindings.values():
        out.extend(bindings)
    return out
