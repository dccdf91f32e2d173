"""Findings from trying the TUI as a user (issue 14), each driven through the real app.

Saving over a recipe asks first and keeps its comments; check boxes read without colour; a benchmark on a
target that was not reached says what it measured; the run view counts the stages really done; a torn
report.json says so and how to rebuild it; the variant column stays when the targets scroll; every mark the
results, home and targets screens show has a legend.
"""
from __future__ import annotations

import asyncio
import difflib
import json
import shutil
from pathlib import Path

from tui.app import ToolkitApp

COMMENTED = """\
# My digits recipe: these comments must survive a save from the UI.
schema_version = 1
name = "mine"
task = "image-classification"

[data]
train = "builtin:digits"   # bundled with scikit-learn

[model]
source = "builtin:cnn-small"

[train]
epochs = 1                 # one pass is enough for a smoke test
batch_size = 64

[[compress]]
method = "prune"           # channels, then a short recovery
kind = "structured"
sparsity = 0.3

[export]
formats = ["onnx"]

[eval]
targets = ["host"]         # measured here
"""


def run(coro) -> None:
    asyncio.run(coro)


def shown(app: ToolkitApp, selector: str):
    """The widget on the current screen, or None while a screen just pushed has not composed it yet."""
    from textual.css.query import NoMatches

    try:
        return app.screen.query_one(selector)
    except NoMatches:
        return None


def rows(app: ToolkitApp) -> int:
    table = shown(app, "#results-table")
    return table.row_count if table is not None else -1


def _changed_lines(before: str, after: str) -> list[str]:
    return [line for line in difflib.ndiff(before.splitlines(), after.splitlines()) if line[:2] in ("- ", "+ ")]


# ---- 1. save-as asks before overwriting and edits the loaded TOML -------------------------------------------

def test_save_as_asks_before_overwriting_and_keeps_the_comments(ui_home: Path, waiter) -> None:
    recipe = ui_home / "recipes" / "mine.toml"
    recipe.parent.mkdir()
    recipe.write_text(COMMENTED)

    async def body() -> None:
        app = ToolkitApp(recipe_folders=[recipe.parent])
        async with app.run_test(size=(80, 24)) as pilot:
            app.action_new_session(str(recipe))
            await pilot.pause(0.2)
            form = app.screen
            check = form.query_one("#f-check")
            await waiter(pilot, lambda: "ready" in str(check.render()), what="ready")
            assert form.query_one("#f-save").value == "recipes/mine.toml"  # the very file it was loaded from

            # A value the core refuses: nothing is asked, nothing is written.
            form.query_one("#f-epochs").value = "-1"
            await waiter(pilot, lambda: "must be more than 0" in str(check.render()), what="the core's message")
            await pilot.press("ctrl+s")
            await pilot.pause(0.2)
            assert type(app.screen).__name__ == "NewSessionScreen" and recipe.read_text() == COMMENTED

            form.query_one("#f-epochs").value = "2"
            form.query_one("#s-prune-sparsity").value = "0.4"
            await waiter(pilot, lambda: "train.epochs=2.0" in str(check.render()), what="override shown")
            # The file exists: a dialog asks; escape (cancel) leaves it untouched.
            await pilot.press("ctrl+s")
            await waiter(pilot, lambda: type(app.screen).__name__ == "ConfirmDialog", what="confirm dialog")
            assert "recipes/mine.toml exists" in str(app.screen.query_one("#confirm-question").render())
            await pilot.press("escape")
            await waiter(pilot, lambda: any("not saved" in n.message for n in app._notifications), what="not saved")
            assert recipe.read_text() == COMMENTED

            await pilot.press("ctrl+s")
            await waiter(pilot, lambda: type(app.screen).__name__ == "ConfirmDialog", what="confirm dialog again")
            await pilot.click("#ok")
            await waiter(pilot, lambda: recipe.read_text() != COMMENTED, what="the file overwritten")
    run(body())
    after = recipe.read_text()
    # Only the two changed values differ: every comment, blank line and key order is as it was.
    assert _changed_lines(COMMENTED, after) == [
        "- epochs = 1                 # one pass is enough for a smoke test",
        "+ epochs = 2                 # one pass is enough for a smoke test",
        "- sparsity = 0.3",
        "+ sparsity = 0.4",
    ]
    from toolkit.config import load_recipe

    saved = load_recipe(recipe)
    assert saved.train.epochs == 2 and saved.compress[0]["sparsity"] == 0.4


def test_save_into_another_folder_edits_the_toml_and_moves_relative_paths(ui_home: Path) -> None:
    """form.save on its own: steps switched on and off, an extra --set, relative paths rewritten."""
    import tomllib

    from tui import form

    src = ui_home / "src"
    (src / "data").mkdir(parents=True)
    (src / "data" / "train.csv").write_text("text,label\nhi,1\n")
    text = COMMENTED.replace('train = "builtin:digits"   # bundled with scikit-learn',
                             'train = "data/train.csv"   # beside the recipe') \
                    .replace("batch_size = 64", "batch_size = 64\nlr = 0.01                  # why this rate")
    (src / "r.toml").write_text(text)
    state = form.load_form(src / "r.toml")
    steps = dict(state.steps, prune=None, distill={"method": "distill", "layers": [0, 2]})
    items = form.overrides(state, state.values, steps, "train.lr=0.02")
    out = form.save(state, items, ui_home / "elsewhere" / "r.toml")
    written = out.read_text()
    data = tomllib.loads(written)
    assert data["data"]["train"] == "../src/data/train.csv"  # the same file, from the new folder
    assert "# beside the recipe" in written and "# My digits recipe" in written and "# measured here" in written
    assert data["train"]["lr"] == 0.02 and "lr = 0.02                  # why this rate" in written
    assert data["compress"] == [{"method": "distill", "layers": [0, 2]}]
    assert "# channels, then a short recovery" not in written  # the step switched off went, with its comment
    import pytest

    from toolkit.errors import UserError

    with pytest.raises(form.WouldOverwrite):
        form.save(state, items, out)
    with pytest.raises(UserError, match="train.epochs"):  # the core checks before anything is written
        form.save(state, items + ["train.epochs=-1"], out, overwrite=True)
    assert out.read_text() == written


# ---- 2. check boxes -----------------------------------------------------------------------------------------

def test_check_boxes_show_their_state_in_plain_text(ui_home: Path, fixture_runs: Path, waiter) -> None:
    recipe = ui_home / "recipes" / "mine.toml"
    recipe.parent.mkdir()
    recipe.write_text(COMMENTED)

    def box(widget) -> str:
        return widget.render().plain[:3]

    def list_boxes(widget) -> dict[str, str]:
        return {widget.get_option_at_index(i).value: widget.render_line(i).text[:3]
                for i in range(min(widget.option_count, widget.size.height))}

    async def body() -> None:
        app = ToolkitApp(recipe_folders=[recipe.parent])
        async with app.run_test(size=(80, 24)) as pilot:
            app.action_new_session(str(recipe))
            await pilot.pause(0.2)
            form = app.screen
            await waiter(pilot, lambda: "ready" in str(form.query_one("#f-check").render()), what="ready")
            assert box(form.query_one("#fmt-onnx")) == "▐X▌" and box(form.query_one("#fmt-ort")) == "▐ ▌"
            assert box(form.query_one("#step-prune")) == "▐X▌" and box(form.query_one("#step-distill")) == "▐ ▌"
            assert box(form.query_one("#f-force")) == "▐ ▌"
            form.query_one("#fmt-ort").focus()
            await pilot.press("space")
            assert box(form.query_one("#fmt-ort")) == "▐X▌"
            targets = list_boxes(form.query_one("#f-targets"))
            assert targets.pop("host") == "▐X▌" and targets and set(targets.values()) == {"▐ ▌"}
            app.pop_screen()
            # The export dialog's list (the fixture run exported onnx and ort).
            app.open_run(fixture_runs / "demo-done")
            await waiter(pilot, lambda: type(app.screen).__name__ == "ResultsScreen", what="results")
            await waiter(pilot, lambda: rows(app) == 4, what="rows")
            await pilot.press("e")
            await waiter(pilot, lambda: type(app.screen).__name__ == "ExportDialog", what="export dialog")
            formats = list_boxes(app.screen.query_one("#formats"))
            assert formats["onnx"] == formats["ort"] == "▐X▌" and formats["pte"] == "▐ ▌"
    run(body())


# ---- 3. a benchmark on a target that was not reached ---------------------------------------------------------

def _fake_bench(calls: list):
    def bench(model_file, target, runs=None):
        calls.append(target)
        return {"model": str(model_file), "p50_ms": 0.5, "p90_ms": 0.6, "threads": 4, "runtime": "onnxruntime",
                "target": Path(target).stem, "source": "measured"}
    return bench


def test_benchmark_on_an_unreached_target_says_what_was_measured(fixture_runs: Path, waiter, monkeypatch) -> None:
    from tui import runner

    calls: list = []
    monkeypatch.setattr(runner, "bench", _fake_bench(calls))
    (fixture_runs / "demo-done" / "variants" / "pruned" / "model.onnx").write_bytes(b"not run: bench is faked")

    async def body() -> None:
        app = ToolkitApp(fixture_runs / "demo-done")
        async with app.run_test(size=(80, 24)) as pilot:
            await waiter(pilot, lambda: type(app.screen).__name__ == "ResultsScreen", what="results")
            screen = app.screen
            table = screen.query_one("#results-table")
            await waiter(pilot, lambda: table.row_count == 4, what="rows")
            table.focus()
            table.move_cursor(row=2)  # pruned
            await pilot.press("b")
            await waiter(pilot, lambda: type(app.screen).__name__ == "BenchDialog", what="dialog")
            app.screen.query_one("#bench-target").value = "android-arm64"
            await pilot.press("ctrl+s")
            await waiter(pilot, lambda: "android-arm64" in screen.bench_results.get("pruned", {}), what="bench")
            await pilot.pause(0.1)
            message = next(n.message for n in app._notifications if "p50" in n.message)
            assert "on android-arm64: p50" not in message
            assert "measured on this machine with android-arm64's 4 threads (onnxruntime)" in message
            assert "android-arm64 itself was not reached; its latency in the report is estimated" in message
            detail = str(screen.query_one("#detail").render())
            assert "benchmarked on this machine for android-arm64: p50 0.5 ms" in detail
            assert "4 threads (android-arm64 has)" in detail and "android-arm64 itself was not reached" in detail
    run(body())
    assert calls == ["android-arm64"]


def test_targets_benchmark_says_which_machine_ran_it(fixture_runs: Path, fixture_targets, waiter,
                                                    monkeypatch) -> None:
    from tui import runner

    calls: list = []
    monkeypatch.setattr(runner, "bench", _fake_bench(calls))
    (fixture_runs / "demo-done" / "variants" / "base" / "model.onnx").write_bytes(b"not run: bench is faked")

    async def body() -> None:
        app = ToolkitApp(targets_loader=fixture_targets)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("t")
            screen = app.screen
            table = screen.query_one("#targets-table")
            await waiter(pilot, lambda: table.row_count == 3, what="profiles")
            for row, name in ((0, "bench-box"), (1, "phone")):
                table.focus()
                table.move_cursor(row=row)
                await pilot.press("b")
                await waiter(pilot, lambda: type(app.screen).__name__ == "BenchDialog", what="dialog")
                await pilot.press("ctrl+s")
                await waiter(pilot, lambda n=name: n in screen.bench, what=f"bench on {name}")
                await pilot.pause(0.1)
            detail = str(screen.query_one("#target-detail").render())  # the phone is highlighted
            assert "measured on this machine with phone's threads" in detail
            assert "phone itself was not reached" in detail
            messages = [n.message for n in app._notifications if "p50" in n.message]
            assert any("on bench-box: p50" in m for m in messages)  # reached as local: this machine is it
            assert any("on this machine with phone's 4 threads" in m and "not reached" in m for m in messages)
    run(body())


# ---- 4. the run view's stages and progress -------------------------------------------------------------------

def _events(run_dir: Path, events: list[dict]) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "events.jsonl").write_text("".join(json.dumps({"run": run_dir.name, "t": 1764000000.0 + i, **e}) + "\n"
                                                  for i, e in enumerate(events)))


async def _run_view(app: ToolkitApp, pilot, waiter, state: str, label: str):
    """The run view once it shows ``label`` (the state alone may already hold before the first read)."""
    await waiter(pilot, lambda: type(app.screen).__name__ == "RunView", what="run view")
    view = app.screen
    await waiter(pilot, lambda: str(getattr(shown(app, "#progress-label"), "render", str)()) == label, what=label)
    assert view.state[0] == state
    return view, str(view.query_one("#stages").render()), str(view.query_one("#progress-label").render()), \
        str(view.query_one("#eta").render())


def test_run_view_counts_the_stages_really_done(ui_home: Path, waiter) -> None:
    runs = ui_home / "runs"
    # `toolkit train` alone: no session, training finished, nothing after it ran.
    _events(runs / "train-only", [{"stage": "train", "kind": "start", "total": 10},
                                  {"stage": "train", "kind": "progress", "step": 10, "total": 10},
                                  {"stage": "train", "kind": "done"}])
    # A session of a recipe with no [[compress]] steps and no export formats: two stages skipped for no work.
    names = ["train", "compress", "export", "eval", "report"]
    _events(runs / "no-steps", [{"stage": "session", "kind": "start", "stages": names},
                                {"stage": "train", "kind": "done"},
                                {"stage": "compress", "kind": "skip", "reason": "no [[compress]] steps in the recipe"},
                                {"stage": "export", "kind": "skip", "reason": "no [export] formats in the recipe"},
                                {"stage": "eval", "kind": "done"}, {"stage": "report", "kind": "done"},
                                {"stage": "session", "kind": "done"}])
    # No events at all (the file is gone): the manifest's stage records say what is done.
    (runs / "manifest-only").mkdir()
    (runs / "manifest-only" / "manifest.json").write_text(json.dumps({
        "schema_version": 1, "run": "manifest-only", "stages": {"train": {"status": "done"},
                                                                "compress": {"status": "done", "no_work": True},
                                                                "export": {"status": "failed"}}}))

    async def body() -> None:
        app = ToolkitApp(runs / "train-only")
        async with app.run_test(size=(80, 24)) as pilot:
            view, stages, label, eta = await _run_view(app, pilot, waiter, "done", "1/5 stages done")
            assert eta == "4 not run"
            assert "✓ train    done" in stages and "○ compress pending" in stages
            assert "○ report   pending" in stages and "all" not in label
            bar = view.query_one("#progress")
            assert (bar.progress, bar.total) == (1, 5)
            app.pop_screen()

            app.open_run(runs / "no-steps")
            view, stages, label, eta = await _run_view(app, pilot, waiter, "done", "all 5 stages done")
            assert eta == "2 skipped"
            assert "↷ compress skipped" in stages and "↷ export   skipped" in stages
            log = " ".join(line.text for line in view.query_one("#log").lines)
            assert "skipped: no [[compress]] steps in the recipe" in log
            app.pop_screen()

            app.open_run(runs / "manifest-only")
            view, stages, label, eta = await _run_view(app, pilot, waiter, "new", "2/5 stages done")
            assert eta == "3 not run"
            assert "✓ train    done" in stages and "✓ compress done" in stages and "✗ export   failed" in stages
            assert "○ eval     pending" in stages
    run(body())


def test_a_live_session_shows_only_what_this_attempt_reached() -> None:
    """While a session runs, a stage done in an earlier attempt but not reached yet in this one is pending."""
    from tui.follow import RunTracker, overall, shown_states

    tr = RunTracker()
    tr.feed([{"t": 1, "stage": "session", "kind": "start", "stages": ["train", "compress", "export"]},
             {"t": 2, "stage": "train", "kind": "start", "total": 10}])
    recorded = {"train": "running", "compress": "done", "export": "done"}
    assert shown_states(tr, recorded, "running") == [("train", "running"), ("compress", "pending"),
                                                     ("export", "pending")]
    # Stopped: the running stage ended as the run did; the manifest fills in what the events left pending.
    assert shown_states(tr, recorded, "interrupted") == [("train", "interrupted"), ("compress", "done"),
                                                         ("export", "done")]
    assert overall(shown_states(tr, recorded, "interrupted")) == (2, 3, 0)


# ---- 5. a torn report.json -------------------------------------------------------------------------------

def test_a_torn_report_says_so_and_how_to_rebuild_it(fixture_runs: Path, waiter) -> None:
    run_dir = fixture_runs / "demo-done"
    text = (run_dir / "report.json").read_text()
    (run_dir / "report.json").write_text(text[: len(text) // 2])  # a crash mid-write

    async def body() -> None:
        app = ToolkitApp(run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            await waiter(pilot, lambda: type(app.screen).__name__ == "ResultsScreen", what="results")
            summary = app.screen.query_one("#results-summary")
            await waiter(pilot, lambda: "report.json is torn or unreadable" in str(summary.render()), what="torn")
            assert "not written yet" not in str(summary.render())
            detail = str(app.screen.query_one("#detail").render())
            assert "report.json torn or not JSON" in detail
            assert "python -m toolkit eval runs/demo-done/recipe.toml --out runs/demo-done" in detail
            assert app.screen.query_one("#results-tabs").active == "tab-detail"
    run(body())


# ---- 6. the variant column stays when the targets scroll ------------------------------------------------

def test_variant_column_stays_while_the_targets_scroll(fixture_runs: Path, waiter) -> None:
    run_dir = fixture_runs / "demo-done"
    report = json.loads((run_dir / "report.json").read_text())
    for v in report["variants"]:  # two more targets: the table no longer fits 80 columns
        for extra in ("jetson-orin-nano", "x86-avx512-vnni"):
            v["latency"][extra] = dict(v["latency"]["raspberry-pi-4"])
    (run_dir / "report.json").write_text(json.dumps(report))

    async def body() -> None:
        app = ToolkitApp(run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            await waiter(pilot, lambda: type(app.screen).__name__ == "ResultsScreen", what="results")
            table = app.screen.query_one("#results-table")
            await waiter(pilot, lambda: table.row_count == 4, what="rows")
            table.focus()
            assert "x86-avx512-vnni" not in table.render_line(0).text
            await pilot.press(*["right"] * 40)
            await pilot.pause(0.3)
            assert table.scroll_x > 0
            header, base_row = table.render_line(0).text, table.render_line(1).text
            assert header.startswith(" variant ") and "x86-avx512-vnni" in header
            assert base_row.startswith(" base ") and "0.967" not in base_row  # acc scrolled away, the name not
    run(body())


# ---- 7. legends ----------------------------------------------------------------------------------------------

def test_every_mark_shown_has_a_legend(fixture_runs: Path, waiter) -> None:
    from tui.report_view import TABLE_MARKS

    run_dir = fixture_runs / "demo-done"
    report = json.loads((run_dir / "report.json").read_text())
    report["variants"][1]["files"][0]["verified"] = False  # student: an export check failed (✗)
    del report["variants"][1]["latency"]["host"]  # a cell with no value (—)
    report["recommendation"]["android-arm64"] = "int8"  # home: "pruned @host +1"
    (run_dir / "report.json").write_text(json.dumps(report))
    shutil.rmtree(run_dir / "variants" / "student")  # the detail reads the report's files, not export.json

    async def body() -> None:
        app = ToolkitApp(runs_roots=[fixture_runs])
        async with app.run_test(size=(80, 24)) as pilot:
            runs = app.screen.query_one("#runs")
            await waiter(pilot, lambda: runs.row_count == 4, what="runs")
            legend = str(app.screen.query_one("#runs-legend").render())
            assert "best: the recommended variant @ the first target" in legend
            assert "+N other targets recommend another" in legend

            app.open_run(run_dir)
            await waiter(pilot, lambda: type(app.screen).__name__ == "ResultsScreen", what="results")
            await waiter(pilot, lambda: rows(app) == 4, what="rows")
            screen = app.screen
            table = screen.query_one("#results-table")
            cells = " ".join(c.plain for k in table.rows for c in table.get_row(k))
            legend = str(screen.query_one("#results-legend").render())
            for mark, meaning, _ in TABLE_MARKS:
                assert (f"{mark} {meaning}" in legend) == (mark in cells), mark
            assert {"★", "~", "!", "✗", "—"} <= set(cells)
            summary = str(screen.query_one("#results-summary").render())
            assert "accuracy ↑ higher is better" in summary and "ms ×speed-up vs base (host: p10 of rounds)" in summary
            table.move_cursor(row=1)  # student
            await pilot.pause(0.2)
            detail = str(screen.query_one("#detail").render())
            assert "files  ✓ verified  ✗ check failed" in detail
            assert "latency  ~ estimated from the profile, not measured" in detail
    run(body())


def test_the_detail_pane_shows_generation_timing_per_runtime():
    from tui.report_view import generation_text

    latency = {"host": {"by_runtime": {
        "onnxruntime": {"generation": {"ttft_ms": 12.5, "tokens_per_s": 80.25}, "model_size_bytes": 3 * 2**20,
                        "rss_growth_mb": 41.0},
        "torch": {"p50_ms": 3.0}}}}
    text = str(generation_text(latency))
    assert "generation (onnxruntime): first token 12.5 ms, 80.2 tokens/s decode, file 3.0 MiB, +41.0 MB memory" in text
    assert "torch" not in text  # no generation measured there
