"""Results: variants × targets (quality, size, latency, speed-up), the Pareto plot and the recommendation per
target from report.json, a detail pane per variant; actions: export more formats, benchmark, report.md path."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static, TabbedContent, TabPane
from textual_plotext import PlotextPlot

from tui import runner
from tui.dialogs import BenchDialog, ExportDialog
from tui.report_view import (detail_text, fmt_ms, main_metric, not_reached, pareto_points, recommendation_text,
                             table_legend, targets_of, variant_files, variants_table)
from tui.runs import read_report


class ResultsScreen(Screen):
    """Reads report.json (in a worker) and shows it; the detail follows the highlighted variant."""

    BINDINGS = [
        Binding("b", "bench", "Benchmark", tooltip="Measure the highlighted variant's file on a target"),
        Binding("e", "export", "Export", tooltip="Export every variant to more formats (toolkit export)"),
        Binding("v", "serve", "Serve", tooltip="Serve the highlighted variant over HTTP (toolkit serve); again: stop"),
        Binding("d", "tab('tab-detail')", "Detail", tooltip="What the highlighted variant's step did, its files"),
        Binding("p", "next_target", "Pareto", tooltip="The Pareto plot; again: the next target"),
        Binding("s", "tab('tab-rec')", "Ship", tooltip="The recommendation per target"),
        Binding("m", "report_path", "report.md", tooltip="Show (and copy) the path of report.md"),
        Binding("l", "watch", "Run view", show=False, tooltip="The run's stages, progress and log"),
        Binding("f5", "reload", "Reload", show=False, tooltip="Read report.json again"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self, run_dir: Path) -> None:
        super().__init__()
        self.run_dir = Path(run_dir)
        self.report: dict[str, Any] | None = None
        self.targets: list[str] = []
        self.target_index = 0
        self.bench_results: dict[str, dict[str, dict]] = {}  # variant -> target -> bench JSON
        self.server: runner.Child | None = None  # `toolkit serve` started from this screen
        self.server_url: str | None = None

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("", id="results-summary", classes="hint")
        # The variant column stays put while the target columns scroll sideways (80 columns fit three targets).
        yield DataTable(id="results-table", cursor_type="row", zebra_stripes=True, fixed_columns=1)
        yield Static("", id="results-legend", classes="hint")
        with TabbedContent(id="results-tabs"):
            with TabPane("Detail", id="tab-detail"):
                with VerticalScroll():
                    yield Static("", id="detail")
            with TabPane("Pareto", id="tab-pareto"):
                yield PlotextPlot(id="pareto")
            with TabPane("Recommendation", id="tab-rec"):
                with VerticalScroll():
                    yield Static("", id="recommendation")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = f"results · {self.run_dir}"
        self.action_reload()

    def action_reload(self) -> None:
        self._load()

    @work(thread=True, exclusive=True, group="results-load")
    def _load(self) -> None:
        report, problem = read_report(self.run_dir)
        self.app.call_from_thread(self._show, report, problem)

    def _show(self, report: dict[str, Any] | None, problem: str | None = None) -> None:
        self.report = report
        table = self.query_one("#results-table", DataTable)
        table.clear(columns=True)
        summary = self.query_one("#results-summary", Static)
        legend = self.query_one("#results-legend", Static)
        legend.update("")
        if report is None and problem is not None:
            summary.update(Text("report.json is torn or unreadable: how to rebuild it is below", style="bold red"))
            self.query_one("#detail", Static).update(torn_report_text(self.run_dir, problem))
            self.action_tab("tab-detail")
            return
        if report is None:
            summary.update(Text(f"{self.run_dir}/report.json: not written yet (the session writes it at the end)",
                                style="yellow"))
            return
        data = variants_table(report)
        for i, label in enumerate(data.columns):
            table.add_column(label, key=f"c{i}")
        for name, cells in data.rows:
            table.add_row(*cells, key=name)
        legend.update(table_legend(data))
        self.targets = targets_of(report)
        metric, higher = main_metric(report)
        summary.update(Text.assemble(
            (f"{metric} {'↑' if higher else '↓'}", "bold"), f" {'higher' if higher else 'lower'} is better · ",
            ("targets:", "bold"), f" ms ×speed-up vs {report.get('baseline', 'base')} (host: p10 of rounds)"))
        self.query_one("#recommendation", Static).update(recommendation_text(report))
        self._render_detail()
        self._render_pareto()

    def highlighted_variant(self) -> str | None:
        table = self.query_one("#results-table", DataTable)
        if table.row_count == 0:
            return None
        return table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._render_detail()

    def _render_detail(self) -> None:
        name = self.highlighted_variant()
        if self.report is None or name is None:
            return
        self.query_one("#detail", Static).update(
            detail_text(self.report, name, self.run_dir, self.bench_results.get(name)))

    def _render_pareto(self) -> None:
        plot = self.query_one("#pareto", PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        if not self.report or not self.targets:
            plt.title("no latency in report.json")
            plot.refresh()
            return
        target = self.targets[self.target_index % len(self.targets)]
        points, front = pareto_points(self.report, target)
        metric, _ = main_metric(self.report)
        estimated = any(p[3] for p in points)
        if not points:
            plt.title(f"{target}: no variant has both {metric} and a latency there")
            plot.refresh()
            return
        xs, ys = [p[1] for p in points], [p[2] for p in points]
        # Room around the points so the names written beside them stay inside the frame.
        dx, dy = (max(xs) - min(xs)) or max(xs) or 1.0, (max(ys) - min(ys)) or abs(max(ys)) or 1.0
        plt.xlim(min(xs) - 0.08 * dx, max(xs) + 0.35 * dx)
        plt.ylim(min(ys) - 0.15 * dy, max(ys) + 0.15 * dy)
        ordered = sorted((p for p in points if p[0] in front), key=lambda p: p[1])
        if len(ordered) > 1:
            plt.plot([p[1] for p in ordered], [p[2] for p in ordered], marker="braille", color="green")
        for name, x, y, _ in points:
            on_front = name in front
            plt.scatter([x], [y], marker="●" if on_front else "○", color="green" if on_front else "gray")
            plt.text(" " + name, x + 0.02 * dx, y, alignment="left", color="green" if on_front else "gray")
        plt.title(f"{target}: {metric} vs p50 ms" + (" ~estimated" if estimated else "")
                  + " · ● Pareto front ○ other · p: next")
        plot.refresh()

    def action_next_target(self) -> None:
        """The first press shows the Pareto plot; the next ones step through the targets."""
        if not self.targets:
            return
        tabs = self.query_one("#results-tabs", TabbedContent)
        if tabs.active == "tab-pareto":
            self.target_index = (self.target_index + 1) % len(self.targets)
        tabs.active = "tab-pareto"
        self._render_pareto()

    def action_tab(self, pane: str) -> None:
        self.query_one("#results-tabs", TabbedContent).active = pane

    def action_report_path(self) -> None:
        path = (self.run_dir / "report.md").resolve()
        if not path.exists():
            self.notify(f"{path}: not written (yet)", severity="warning")
            return
        self.app.copy_to_clipboard(str(path))
        self.notify(f"report: {path} (copied)", timeout=10)

    def action_watch(self) -> None:
        from tui.run_view import RunView

        self.app.push_screen(RunView(self.run_dir))

    # ---- benchmark -------------------------------------------------------------------------------------

    def action_bench(self) -> None:
        name = self.highlighted_variant()
        if name is None:
            return
        files = variant_files(self.run_dir, name)
        if not files:
            self.notify(f"{name}: no model file to benchmark (export it first: e)", severity="warning")
            return
        from toolkit.targets import known_names

        targets = list(dict.fromkeys(self.targets + known_names()))
        options = [(str(f.relative_to(self.run_dir)), f) for f in files]

        def chosen(result: tuple[Path, str] | None) -> None:
            if result is not None:
                self.notify(f"benchmarking {name} on {result[1]}…")
                self._bench(name, result[0], result[1])

        self.app.push_screen(BenchDialog(options, targets, title=f"Benchmark {name}"), chosen)

    @work(thread=True, group="bench")
    def _bench(self, name: str, model_file: Path, target: str) -> None:
        from toolkit.errors import UserError

        try:
            result = runner.bench(model_file, target)
            reached = runner.bench_reaches(target)
        except (UserError, OSError) as e:
            self.app.call_from_thread(self.notify, f"bench {name} on {target}: {e}", severity="error", timeout=10)
            return
        except Exception as e:  # a timeout or a broken child: say so, keep the UI
            self.app.call_from_thread(self.notify, f"bench failed: {e}", severity="error", timeout=10)
            return
        self.app.call_from_thread(self._bench_done, name, target, dict(result, reached=reached))

    def _bench_done(self, name: str, target: str, result: dict) -> None:
        """``result``: the bench JSON plus ``reached``, whether the target itself ran it (else this machine)."""
        self.bench_results.setdefault(name, {})[target] = result
        p50, threads, rt = fmt_ms(result.get("p50_ms")), result.get("threads"), result.get("runtime")
        if result["reached"]:
            self.notify(f"{name} on {target}: p50 {p50} ({rt}, {threads} threads)", timeout=15)
        else:
            variant = next((v for v in (self.report or {}).get("variants", []) if v.get("name") == name), {})
            source = ((variant.get("latency") or {}).get(target) or {}).get("source")
            self.notify(f"{name}: p50 {p50} measured on this machine with {target}'s {threads} threads ({rt}); "
                        f"{not_reached(target, source)}", severity="warning", timeout=20)
        self.action_tab("tab-detail")
        self._render_detail()

    # ---- serve -----------------------------------------------------------------------------------------

    def action_serve(self) -> None:
        if self.server is not None and self.server.alive:
            self._stop_server()
            return
        name = self.highlighted_variant()
        if name is None:
            return
        log = runner.state_dir() / "serve" / f"{self.run_dir.resolve().name}-{name}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        log.write_text("", encoding="utf-8")
        argv = runner.toolkit_argv("serve", str(self.run_dir.resolve()), "--variant", name, "--port", "0")
        self.server = runner.start_tool(argv, log)
        self.notify(f"starting a server for {name}…")
        self._await_server(self.server, name)

    @work(thread=True, group="serve")
    def _await_server(self, child: runner.Child, name: str) -> None:
        import re
        import time

        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            found = next((m.group(1) for line in child.tail(40) if (m := re.search(r" at (http://\S+)", line))), None)
            if found:
                self.app.call_from_thread(self._serving, child, name, found)
                return
            if not child.alive:
                why = runner.last_line("\n".join(child.tail(5)))
                self.app.call_from_thread(self.notify, f"serve {name}: {why}", severity="error", timeout=15)
                return
            time.sleep(0.2)

    def _serving(self, child: runner.Child, name: str, url: str) -> None:
        if child is not self.server:
            return
        self.server_url = url
        self.sub_title = f"results · {self.run_dir} · serving {name} at {url}"
        self.notify(f"serving {name} at {url} (docs: {url}/docs); v stops it", timeout=20)

    def _stop_server(self, quiet: bool = False) -> None:
        import signal

        if self.server is not None and self.server.alive:
            self.server.proc.send_signal(signal.SIGTERM)  # finishes the requests in flight, then exits 0
            if not quiet:
                self.notify(f"stopping the server at {self.server_url or 'starting up'}")
        self.server, self.server_url = None, None
        self.sub_title = f"results · {self.run_dir}"

    def on_unmount(self) -> None:
        self._stop_server(quiet=True)  # a server outlives neither the screen nor the UI that started it

    # ---- export ----------------------------------------------------------------------------------------

    def action_export(self) -> None:
        from toolkit.registry import format_names

        def chosen(formats: list[str] | None) -> None:
            if formats:
                self.notify(f"exporting every variant to {', '.join(formats)}…")
                self._export(formats)

        self.app.push_screen(ExportDialog(format_names(), self._current_formats()), chosen)

    def _current_formats(self) -> list[str]:
        found = set()
        for v in (self.report or {}).get("variants", []):
            # A format listed with no size was skipped (an extra not installed), not exported.
            found |= {f.get("format") for f in v.get("files") or [] if f.get("size_bytes")}
        return [f for f in ("onnx", "ort", "pte", "torchscript") if f in found]

    @work(thread=True, exclusive=True, group="export")
    def _export(self, formats: list[str]) -> None:
        argv = export_argv(self.run_dir, formats)
        try:
            code, out, err = runner.run_tool(argv)
        except Exception as e:  # the command could not run at all
            self.app.call_from_thread(self.notify, f"export: {e}", severity="error", timeout=10)
            return
        if code != 0:
            self.app.call_from_thread(self.notify, f"export: {runner.describe_exit(code)}: "
                                      f"{runner.last_line(err) or runner.last_line(out)}", severity="error", timeout=30)
            return
        self.app.call_from_thread(self.notify, f"exported: {', '.join(formats)}", timeout=6)
        self._load()


def run_recipe(run_dir: Path) -> tuple[str, list[str]]:
    """The run's own recipe and ``--set`` items: the command that started it, when the UI knows it; else the
    run's resolved recipe.toml (which already holds every override)."""
    run_dir = Path(run_dir).resolve()
    recipe: str = str(run_dir / "recipe.toml")
    overrides: list[str] = []
    saved = runner.saved_command(run_dir)
    if saved and "run" in saved:
        rest = saved[saved.index("run") + 1:]
        if rest and not rest[0].startswith("--"):
            recipe = rest[0]
        overrides = [rest[i + 1] for i, a in enumerate(rest[:-1]) if a == "--set"]
    return recipe, overrides


def export_argv(run_dir: Path, formats: list[str]) -> list[str]:
    """``python -m toolkit export RECIPE --out RUN --set export.formats=[...]`` for the run's own recipe."""
    from tui.form import toml_literal

    run_dir = Path(run_dir).resolve()  # a relative --out would be read against the recipe's folder
    recipe, overrides = run_recipe(run_dir)
    overrides = [o for o in overrides if not o.startswith("export.formats=")]
    argv = runner.toolkit_argv("export", recipe, "--out", str(run_dir))
    for item in overrides + [f"export.formats={toml_literal(formats)}"]:
        argv += ["--set", item]
    return argv


def rebuild_command(run_dir: Path) -> str:
    """The shell command that writes report.json again: ``toolkit eval`` runs the eval stage, then the report."""
    import shlex

    from tui.home import shown_path

    recipe, overrides = run_recipe(run_dir)
    words = ["python", "-m", "toolkit", "eval", shown_path(Path(recipe)), "--out", shown_path(Path(run_dir))]
    for item in overrides:
        words += ["--set", item]
    return shlex.join(words)


def torn_report_text(run_dir: Path, problem: str) -> Text:
    """What the results screen shows for a report.json that exists but cannot be read."""
    out = Text()
    out.append("report.json ", style="bold red")
    out.append(f"{problem}\n", style="red")
    out.append("A process stopped while writing it, or the file was edited. The variants are still in the run "
               "directory; this evaluates them again and rebuilds report.json and report.md:\n")
    out.append(f"  {rebuild_command(run_dir)}\n", style="bold")
    out.append("then f5 reads it again.", style="dim")
    return out
