"""Sessions started from the UI as real child processes (`python -m toolkit run` on the packaged demo, reduced).

Slow (a real session each): start it from the form, watch it and see it finish (and its results table fill
from report.json); cancel one, see it interrupted, resume it, see it finish; a key press answered mid-run.
"""
from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from tui.app import LIGHT, ToolkitApp
from tui.runs import run_state

# The demo, small: few steps, one thread, one export format, one target, short latency runs.
SMALL = ('train.threads=1 export.formats=["onnx"] eval.targets=["host"] eval.latency.runs=20 '
         'eval.latency.warmup=2')

pytestmark = [pytest.mark.slow, pytest.mark.timeout(900)]


async def _start_demo_from_form(app: ToolkitApp, pilot, waiter, extra: str, no_compression: bool = False):
    """Home → n (the highlighted recipe: the packaged demo) → [compression steps off] → extra settings →
    ctrl+r."""
    await waiter(pilot, lambda: app.screen.query_one("#recipes").row_count > 0, what="recipes")
    await pilot.press("n")
    await waiter(pilot, lambda: type(app.screen).__name__ == "NewSessionScreen", what="form")
    form = app.screen
    await waiter(pilot, lambda: "ready" in str(form.query_one("#f-check").render()), timeout=60, what="demo loads")
    assert form.query_one("#f-name").value == "demo"
    if no_compression:
        for switch in form.query("Checkbox"):
            if (switch.id or "").startswith("step-"):
                switch.value = False
        await waiter(pilot, lambda: "--set compress=[]" in str(form.query_one("#f-check").render()), timeout=60,
                     what="the steps switched off")
    form.query_one("#f-extra").value = extra
    await waiter(pilot, lambda: "train.threads=1" in str(form.query_one("#f-check").render()), timeout=60,
                 what="extra settings checked")
    await pilot.press("ctrl+r")
    await waiter(pilot, lambda: type(app.screen).__name__ == "RunView", what="run view")
    view = app.screen
    child = app.child_for(Path("runs/demo"))
    assert child is not None
    return view, child


def test_start_the_demo_watch_it_finish_and_see_the_results(ui_home, waiter, reap_children) -> None:
    async def body() -> None:
        app = ToolkitApp()
        reap_children(app)
        async with app.run_test(size=(100, 30)) as pilot:
            view, child = await _start_demo_from_form(app, pilot, waiter, "train.max_steps=20 " + SMALL)
            # python -m toolkit run <the demo recipe> --out runs/demo --set ... (one per changed setting)
            assert child.argv[1:4] == ["-m", "toolkit", "run"] and child.argv[4].endswith("demo.toml")
            assert child.argv[5:7] == ["--out", str(ui_home / "runs" / "demo")] and "train.max_steps=20" in child.argv
            await waiter(pilot, lambda: view.state[0] == "running", timeout=60, what="running")
            # The UI answers keys while the session runs.
            await pilot.press("ctrl+t")
            assert app.theme == LIGHT and child.alive
            await waiter(pilot, lambda: view.tracker.stages["train"].state in ("running", "done"), timeout=120,
                         what="training starts")
            await waiter(pilot, lambda: not child.alive, timeout=600, step=0.5, what="the session to end")
            assert child.returncode == 0, "\n".join(child.tail(15))
            await waiter(pilot, lambda: view.state[0] == "done", timeout=10, what="done state")
            assert run_state(Path("runs/demo"))[0] == "done"
            assert view.tracker.stages["train"].state == "done"
            assert view.tracker.series.get("loss"), "the loss plot had points"
            report_path = Path("runs/demo/report.json")
            if report_path.exists():
                # The session wrote its report: the view opens the results, and every variant is a row.
                report = json.loads(report_path.read_text())
                await waiter(pilot, lambda: type(app.screen).__name__ == "ResultsScreen", what="results")
                table = app.screen.query_one("#results-table")
                await waiter(pilot, lambda: table.row_count == len(report["variants"]), what="rows")
                assert [k.value for k in table.rows] == [v["name"] for v in report["variants"]]
                assert "host" in [str(c.label) for c in table.columns.values()]
                print(f"results table filled from report.json: {table.row_count} variants")
            else:
                print("no report.json from this session: checked that it finished and shows done")
    asyncio.run(body())


def test_cancel_then_resume(ui_home, waiter, reap_children) -> None:
    async def body() -> None:
        app = ToolkitApp()
        reap_children(app)
        async with app.run_test(size=(100, 30)) as pilot:
            # Enough steps that training is still going when the first progress event shows.
            # (The compression steps are switched off in the form: this test is about training's checkpoint.)
            view, child = await _start_demo_from_form(app, pilot, waiter, "train.max_steps=400 " + SMALL,
                                                      no_compression=True)
            def train():  # looked up each time: a session's start event makes the stage states anew
                return view.tracker.stages["train"]

            await waiter(pilot, lambda: train().step >= 1, timeout=180, step=0.05, what="training progress")
            await pilot.press("c")
            await waiter(pilot, lambda: not child.alive, timeout=120, what="the child to stop")
            assert child.returncode == 130, "\n".join(child.tail(15))
            await waiter(pilot, lambda: view.state[0] == "interrupted", timeout=10, what="interrupted")
            assert "interrupted" in str(view.query_one("#stages").render())
            assert train().step < 400
            assert list(Path("runs/demo/train/checkpoints").glob("step-*")), "a checkpoint before stopping"

            await pilot.press("r")
            second = app.child_for(Path("runs/demo"))
            assert second is not child and "--force" not in second.argv
            await waiter(pilot, lambda: not second.alive, timeout=600, step=0.5, what="the resumed session")
            assert second.returncode == 0, "\n".join(second.tail(15))
            await waiter(pilot, lambda: view.state[0] == "done", timeout=10, what="done")
            assert any("resumed from" in line.message for line in view.tracker.logs)
            assert "compress=[]" in second.argv  # the same command again
            assert view.tracker.stages["train"].state == "done"
            if Path("runs/demo/report.json").exists():  # the finished session's results open by themselves
                await waiter(pilot, lambda: type(app.screen).__name__ == "ResultsScreen", what="results")
                await pilot.pause(0.3)
    asyncio.run(body())
