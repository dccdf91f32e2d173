"""SVG snapshots of Home, Results and Targets at 80×24 (pytest-textual-snapshot; update with --snapshot-update).

Deterministic inputs: fixture run directories at relative paths, fixture recipes and device profiles (not the
detected host, nor packaged files other engineers edit), UTC for the one timestamp shown.
"""
from __future__ import annotations

import pytest

from tui.app import ToolkitApp

SIZE = (80, 24)


@pytest.fixture
def fixed_recipes(monkeypatch, ui_home, tui_fixtures):
    """The packaged recipe list pinned to a fixture (the real one changes as recipes are added), and a user
    recipe in ./recipes (the folder the app lists by default)."""
    import shutil

    import toolkit.resources

    monkeypatch.setattr(toolkit.resources, "packaged_recipes",
                        lambda: {"tiny-digits": tui_fixtures / "recipes" / "tiny-digits.toml"})
    (ui_home / "recipes").mkdir()
    shutil.copy(tui_fixtures / "recipes" / "bad-lr.toml", ui_home / "recipes")
    return None  # the app's default: ./recipes


def test_home_snapshot(snap_compare, fixture_runs, fixed_recipes, waiter) -> None:
    app = ToolkitApp(recipe_folders=fixed_recipes)

    async def ready(pilot) -> None:
        await waiter(pilot, lambda: app.screen.query_one("#runs").row_count == 4, what="runs")
        await waiter(pilot, lambda: app.screen.query_one("#recipes").row_count == 2, what="recipes")
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def test_results_snapshot(snap_compare, fixture_runs, fixed_recipes, waiter) -> None:
    app = ToolkitApp("runs/demo-done", recipe_folders=fixed_recipes)

    async def ready(pilot) -> None:
        await waiter(pilot, lambda: type(app.screen).__name__ == "ResultsScreen", what="results")
        await waiter(pilot, lambda: app.screen.query_one("#results-table").row_count == 4, what="rows")
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)


def test_targets_snapshot(snap_compare, ui_home, fixed_recipes, fixture_targets, waiter) -> None:
    app = ToolkitApp(recipe_folders=fixed_recipes, targets_loader=fixture_targets)

    async def ready(pilot) -> None:
        await pilot.press("t")
        await waiter(pilot, lambda: app.screen.query_one("#targets-table").row_count == 3, what="profiles")
        await pilot.pause(0.2)

    assert snap_compare(app, terminal_size=SIZE, run_before=ready)
