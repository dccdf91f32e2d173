"""Pilot tests of each screen on fixture run directories (no child processes except `toolkit bench`)."""
from __future__ import annotations

import asyncio
import json
import os
import socket
import time
from pathlib import Path

from tui.app import LIGHT, ToolkitApp


def run(coro) -> None:
    asyncio.run(coro)


def _texts(table, key) -> list[str]:
    return [str(c) for c in table.get_row(key)]


def test_home_lists_runs_with_state_task_best_and_recipes(fixture_runs, tui_fixtures, waiter) -> None:
    async def body() -> None:
        app = ToolkitApp(recipe_folders=[tui_fixtures / "recipes"])
        async with app.run_test(size=(80, 24)) as pilot:
            home = app.screen
            table = home.query_one("#runs")
            await waiter(pilot, lambda: table.row_count == 4, what="four runs listed")
            rows = {Path(k.value).name: _texts(table, k) for k in table.rows}
            assert rows["demo-done"] == ["runs/demo-done", "image-classification", "✓ done", "pruned @host"]
            assert rows["demo-failed"][2] == "✗ failed"
            assert rows["demo-interrupted"][2] == "‖ interrupted"
            assert rows["demo-killed"][2] == "‖ interrupted"
            recipes = home.query_one("#recipes")
            names = [str(recipes.get_row(k)[0]) for k in recipes.rows]
            assert names[0] == "demo" and "tiny-digits" in names
            # Open the finished run: its results.
            table.focus()
            table.move_cursor(row=list(rows).index("demo-done"))
            await pilot.press("enter")
            await waiter(pilot, lambda: type(app.screen).__name__ == "ResultsScreen", what="results")
    run(body())


def test_results_table_has_every_variant_and_target(fixture_runs, waiter) -> None:
    report = json.loads((fixture_runs / "demo-done" / "report.json").read_text())

    async def body() -> None:
        app = ToolkitApp(fixture_runs / "demo-done")
        async with app.run_test(size=(80, 24)) as pilot:
            await waiter(pilot, lambda: type(app.screen).__name__ == "ResultsScreen", what="results screen")
            table = app.screen.query_one("#results-table")
            await waiter(pilot, lambda: table.row_count == len(report["variants"]), what="table rows")
            assert [k.value for k in table.rows] == [v["name"] for v in report["variants"]]
            labels = [str(c.label) for c in table.columns.values()]
            targets = list(report["variants"][0]["latency"])
            assert all(t in labels for t in targets) and {"acc", "f1", "size"} <= set(labels)
            by = {v["name"]: v for v in report["variants"]}
            for name, v in by.items():
                cells = table.get_row(name)
                for t in targets:
                    cell = cells[labels.index(t)]
                    lat, base = v["latency"][t], by["base"]["latency"][t]
                    speedup = f"×{base['p50_ms'] / lat['p50_ms']:.1f}"
                    assert speedup in cell.plain
                    estimated = lat["source"] == "estimated"
                    # Estimated numbers carry '~' and a dim italic style; measured ones neither.
                    assert ("~" in cell.plain) == estimated
                    styles = " ".join(str(s.style) for s in cell.spans) + str(cell.style)
                    assert ("italic" in styles) == estimated
                    assert cell.plain.startswith("★") == (report["recommendation"][t] == name)
            assert str(table.get_row("int8")[0]).endswith("!")  # over its quality budget

            # The detail pane follows the cursor.
            table.focus()
            table.move_cursor(row=3)
            await pilot.pause(0.2)
            detail = str(app.screen.query_one("#detail").render())
            assert "int8  quantize from pruned" in detail
            assert "layers kept in float: classifier" in detail
            assert "variants/int8/model.onnx" in detail and "agreement 0.989" in detail
            assert "executorch extra is not installed" in detail
            rec = str(app.screen.query_one("#recommendation").render())
            assert all(f"{t}: pruned" in rec for t in targets)
            await pilot.press("p")
            assert app.screen.query_one("#results-tabs").active == "tab-pareto"
            assert app.screen.target_index == 0
            await pilot.press("p")
            assert app.screen.target_index == 1
            await pilot.press("m")
            await pilot.pause(0.1)
            assert any("report.md" in n.message for n in app._notifications)
    run(body())


def test_results_before_the_report_exists_says_so(fixture_runs, waiter) -> None:
    async def body() -> None:
        app = ToolkitApp(fixture_runs / "demo-failed")
        async with app.run_test(size=(80, 24)) as pilot:
            await waiter(pilot, lambda: type(app.screen).__name__ == "RunView", what="run view")
            await pilot.press("v")
            await pilot.pause(0.1)
            assert any("no report.json yet" in n.message for n in app._notifications)
            stages = str(app.screen.query_one("#stages").render())
            await waiter(pilot, lambda: "failed" in str(app.screen.query_one("#run-status").render()),
                         what="failed state")
            shown = " ".join(line.text for line in app.screen.query_one("#log").lines)
            assert "training diverged" in shown and app.screen.tracker.logs[-1].level == "error"
            assert "train" in stages
    run(body())


def test_run_view_follows_a_run_started_elsewhere(ui_home, waiter) -> None:
    """Events appended by another process (here: the test) show up; the lock's heartbeat says running."""
    run_dir = ui_home / "runs" / "cli-run"
    run_dir.mkdir(parents=True)
    lock = {"pid": os.getpid(), "host": socket.gethostname(), "command": "run", "started": time.time(),
            "heartbeat": time.time()}
    (run_dir / "run.lock").write_text(json.dumps(lock))
    events = run_dir / "events.jsonl"
    t0 = time.time()

    def append(*evs) -> None:
        with open(events, "a") as fh:
            for e in evs:
                fh.write(json.dumps({"run": "cli-run", **e}) + "\n")

    append({"t": t0, "stage": "session", "kind": "start", "stages": ["train", "compress", "export", "eval", "report"]},
           {"t": t0, "stage": "train", "kind": "start", "total": 100, "resumed_from": 0})

    async def body() -> None:
        app = ToolkitApp(run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            view = app.screen
            await waiter(pilot, lambda: view.state[0] == "running", what="running")
            # Keys are answered while the run goes on.
            await pilot.press("ctrl+t", "v")
            assert app.theme == LIGHT
            await waiter(pilot, lambda: any("no report.json yet" in n.message for n in app._notifications),
                         what="v answered")
            append({"t": t0 + 1, "stage": "train", "kind": "progress", "step": 10, "total": 100},
                   {"t": t0 + 3, "stage": "train", "kind": "progress", "step": 30, "total": 100},
                   {"t": t0 + 3, "stage": "train", "kind": "metric", "values": {"step": 30, "loss": 1.25}})
            await waiter(pilot, lambda: "30/100" in str(view.query_one("#progress-label").render()), what="progress")
            assert "ETA 0:07" in str(view.query_one("#eta").render())  # 20 steps / 2 s, 70 left
            assert view.query_one("#progress").progress == 30
            assert view.tracker.series["loss"] == [(30.0, 1.25)]
            append({"t": t0 + 4, "stage": "train", "kind": "log", "level": "warning", "message": "a warning line"})
            await waiter(pilot, lambda: any("a warning line" in ln.text for ln in view.query_one("#log").lines),
                         what="log line")
            (run_dir / "run.lock").unlink()
            append({"t": t0 + 5, "stage": "train", "kind": "interrupted", "step": 31})
            await waiter(pilot, lambda: view.state[0] == "interrupted", what="interrupted")
            assert "interrupted" in str(view.query_one("#stages").render())
    run(body())


def test_targets_check_reach_in_a_worker(ui_home, fixture_targets, waiter) -> None:
    async def body() -> None:
        app = ToolkitApp(targets_loader=fixture_targets)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("t")
            screen = app.screen
            table = screen.query_one("#targets-table")
            await waiter(pilot, lambda: table.row_count == 3, what="profiles")
            await pilot.press("c")
            await waiter(pilot, lambda: len(screen.checks) == 3, timeout=40, what="reach checks")
            status = {n: c.status for n, c in screen.checks.items()}
            assert status == {"bench-box": "reachable", "phone": "estimate only", "pi-lab": "unreachable"}
            assert str(table.get_row("pi-lab")[-1]) == "✗"
            # The legend names the marks the ok column shows now (none is left unchecked).
            legend = str(screen.query_one("#targets-legend").render())
            assert "✓ reachable" in legend and "✗ unreachable" in legend and "~ estimate only" in legend
            assert "not checked" not in legend
            table.focus()
            table.move_cursor(row=2)
            await pilot.pause(0.1)
            assert "127.0.0.1" in str(screen.query_one("#target-detail").render())
    run(body())


def _tiny_onnx(path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    w = numpy_helper.from_array(np.arange(32, dtype=np.float32).reshape(8, 4) / 32, "w")
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "tiny",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def test_benchmark_a_variant_on_a_target(fixture_runs, fixture_targets, waiter) -> None:
    """The Targets screen's benchmark runs `toolkit bench FILE --target T --json` in a worker."""
    _tiny_onnx(fixture_runs / "demo-done" / "variants" / "base" / "model.onnx")

    async def body() -> None:
        app = ToolkitApp(targets_loader=fixture_targets)
        async with app.run_test(size=(80, 24)) as pilot:
            await pilot.press("t")
            screen = app.screen
            await waiter(pilot, lambda: screen.query_one("#targets-table").row_count == 3, what="profiles")
            await pilot.press("b")
            await waiter(pilot, lambda: type(app.screen).__name__ == "BenchDialog", what="dialog")
            await pilot.press("ctrl+s")
            await waiter(pilot, lambda: "bench-box" in screen.bench, timeout=120, what="benchmark result")
            shown, result = screen.bench["bench-box"]
            assert shown == "runs/demo-done/variants/base/model.onnx"
            assert result["p50_ms"] > 0 and result["threads"] == 2  # the profile's threads
            assert "benchmark" in str(screen.query_one("#target-detail").render())
    run(body())


def test_new_session_form_shows_the_cores_checks_and_saves(ui_home, tui_fixtures, waiter) -> None:
    async def body() -> None:
        app = ToolkitApp(recipe_folders=[tui_fixtures / "recipes"])
        async with app.run_test(size=(80, 24)) as pilot:
            app.action_new_session(str(tui_fixtures / "recipes" / "bad-lr.toml"))
            await pilot.pause(0.2)
            check = app.screen.query_one("#f-check")
            await waiter(pilot, lambda: "train.lr = -0.1" in str(check.render()), what="the core's lr message")
            app.pop_screen()
            app.action_new_session(str(tui_fixtures / "recipes" / "tiny-digits.toml"))
            await pilot.pause(0.2)
            form = app.screen
            check = form.query_one("#f-check")
            await waiter(pilot, lambda: "ready" in str(check.render()), what="ready")
            epochs = form.query_one("#f-epochs")
            epochs.value = "-1"
            await waiter(pilot, lambda: "train.epochs = -1.0: must be more than 0" in str(check.render()),
                         what="epochs")
            epochs.value = "2"
            form.query_one("#f-name").value = "mine"
            await waiter(pilot, lambda: "--set train.epochs=2.0" in str(check.render()), what="override shown")
            assert form.query_one("#f-save").value == "recipes/mine.toml"
            await pilot.press("ctrl+s")
            await waiter(pilot, lambda: (ui_home / "recipes" / "mine.toml").exists(), what="saved recipe")
            from toolkit.config import load_recipe

            saved = load_recipe(ui_home / "recipes" / "mine.toml")
            assert saved.name == "mine" and saved.train.epochs == 2.0 and saved.data.train == "builtin:digits"
    run(body())


def test_palette_holds_every_action_and_theme_toggles(fixture_runs, waiter) -> None:
    async def body() -> None:
        app = ToolkitApp()
        async with app.run_test(size=(80, 24)) as pilot:
            await waiter(pilot, lambda: len(app.known_runs) == 4, what="runs scanned")
            from tui.commands import ActionsProvider

            provider = ActionsProvider(app.screen)
            titles = [t for t, _, _ in provider._commands()]
            for title in ("Open", "New session", "Targets", "Cancel run", "Resume run", "Theme", "Home",
                          "Open run demo-done", "New session from demo"):
                assert title in titles, title
            await pilot.press("ctrl+t")
            assert app.theme == LIGHT
            await pilot.press("ctrl+p")
            await pilot.pause(0.2)
            await pilot.press(*"Targets")
            await pilot.pause(0.5)
            await pilot.press("enter")
            await waiter(pilot, lambda: type(app.screen).__name__ == "TargetsScreen", what="targets via palette")
    run(body())


def test_results_benchmark_and_export_actions(fixture_runs, waiter, monkeypatch) -> None:
    """b measures the highlighted variant's file (toolkit bench) in a worker; e runs toolkit export with the
    chosen formats for the run's own recipe."""
    from tui import results, runner

    run_dir = fixture_runs / "demo-done"
    _tiny_onnx(run_dir / "variants" / "int8" / "model.onnx")
    calls: list[list[str]] = []

    def fake_tool(argv, timeout=1800):
        if argv[3] == "export":
            calls.append(argv)
            return 2, "", "error: an example of the command's own one-line message"
        return real_tool(argv, timeout)

    real_tool = runner.run_tool
    monkeypatch.setattr(runner, "run_tool", fake_tool)

    async def body() -> None:
        app = ToolkitApp(run_dir)
        async with app.run_test(size=(80, 24)) as pilot:
            await waiter(pilot, lambda: type(app.screen).__name__ == "ResultsScreen", what="results")
            screen = app.screen
            table = screen.query_one("#results-table")
            await waiter(pilot, lambda: table.row_count == 4, what="rows")
            table.focus()
            table.move_cursor(row=3)  # int8
            await pilot.press("b")
            await waiter(pilot, lambda: type(app.screen).__name__ == "BenchDialog", what="dialog")
            await pilot.press("ctrl+s")
            await waiter(pilot, lambda: "host" in screen.bench_results.get("int8", {}), timeout=120, what="bench")
            assert screen.bench_results["int8"]["host"]["p50_ms"] > 0
            assert "benchmarked here on host" in str(screen.query_one("#detail").render())

            await pilot.press("e")
            await waiter(pilot, lambda: type(app.screen).__name__ == "ExportDialog", what="export dialog")
            await pilot.press("ctrl+s")
            await waiter(pilot, lambda: bool(calls), what="export command")
            await waiter(pilot, lambda: any("one-line message" in n.message for n in app._notifications),
                         what="the command's error shown")
    run(body())
    (argv,) = calls
    assert argv[3:7] == ["export", str(run_dir / "recipe.toml"), "--out", str(run_dir)]
    assert argv[-2:] == ["--set", 'export.formats=["onnx", "ort"]']  # what report.json lists as exported
    assert results.export_argv(run_dir, ["pte"])[-1] == 'export.formats=["pte"]'
