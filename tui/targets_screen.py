"""Targets: the device profiles, a reachability check, and a benchmark of a variant's file on a target."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rich.text import Text
from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Static

from tui import runner
from tui.dialogs import BenchDialog
from tui.home import shown_path
from tui.report_view import fmt_ms

CHECK_STYLE = {"reachable": "green", "unreachable": "bold red", "estimate only": "yellow"}
CHECK_MARK = {"reachable": "✓", "unreachable": "✗", "estimate only": "~"}
NOT_CHECKED = "·"


def default_targets() -> list[Any]:
    from toolkit.targets import list_targets

    return list_targets()


class TargetsScreen(Screen):
    """Profiles load in a worker (host detection reads /proc); checks and benchmarks run in workers too."""

    BINDINGS = [
        Binding("c", "check", "Check reach", tooltip="Try to reach every target (ssh runs `true` there)"),
        Binding("b", "bench", "Benchmark", tooltip="Measure a variant's model file on the highlighted target"),
        Binding("escape", "app.pop_screen", "Back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.targets: list[Any] = []
        self.checks: dict[str, Any] = {}
        self.bench: dict[str, tuple[str, dict]] = {}  # target -> (file shown, result)

    def compose(self) -> ComposeResult:
        yield Header()
        yield DataTable(id="targets-table", cursor_type="row", zebra_stripes=True)
        yield Static("", id="targets-legend", classes="hint")
        with VerticalScroll(id="target-detail-box"):
            yield Static("loading profiles…", id="target-detail")
        yield Footer()

    def on_mount(self) -> None:
        self.sub_title = "device profiles"
        table = self.query_one("#targets-table", DataTable)
        # arch, description and the ssh address are in the detail pane: the table fits 80 columns.
        for label in ("target", "cores", "runtime", "INT8", "reach", "ok"):
            table.add_column(label, key=label)
        self._load()

    @work(thread=True, exclusive=True, group="targets-load")
    def _load(self) -> None:
        from toolkit.errors import UserError

        loader = self.app.targets_loader or default_targets
        try:
            targets = loader()
        except UserError as e:
            self.app.call_from_thread(self.query_one("#target-detail", Static).update, Text(str(e), style="red"))
            return
        self.app.call_from_thread(self._show, targets)

    def _show(self, targets: list[Any]) -> None:
        self.targets = targets
        table = self.query_one("#targets-table", DataTable)
        table.clear()
        for t in targets:
            table.add_row(*self._cells(t), key=t.name)
        self._render_legend()
        self._render_detail()

    def _render_legend(self) -> None:
        """The cores column's two numbers, and each mark the ok column shows now."""
        out = Text.assemble(("cores:", "bold"), " cores/threads   ", ("ok:", "bold"))
        statuses = [self.checks[t.name].status if t.name in self.checks else None for t in self.targets]
        if None in statuses:
            out.append(f" {NOT_CHECKED} not checked (c checks)", style="dim")
        for status, mark in CHECK_MARK.items():
            if status in statuses:
                out.append(f"  {mark}", style=CHECK_STYLE[status])
                out.append(f" {status}")
        self.query_one("#targets-legend", Static).update(out)

    def _cells(self, t: Any) -> list[Text]:
        check = self.checks.get(t.name)
        check_cell = Text(CHECK_MARK.get(check.status, "?"), style=CHECK_STYLE.get(check.status, "")) if check \
            else Text(NOT_CHECKED, style="dim")
        return [Text(t.name, style="bold"), Text(f"{t.cores}/{t.threads}"), Text(t.runtime),
                Text(t.int8.label), Text(t.reach.kind), check_cell]

    def highlighted(self) -> Any | None:
        table = self.query_one("#targets-table", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((t for t in self.targets if t.name == key), None)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        self._render_detail()

    def _render_detail(self) -> None:
        t = self.highlighted()
        box = self.query_one("#target-detail", Static)
        if t is None:
            box.update("no profiles")
            return
        out = Text()
        out.append(f"{t.name}", style="bold")
        out.append(f"  {t.description}\n")
        out.append("ISA ", style="bold")
        out.append(", ".join(t.isa) or "—")
        out.append(f"   memory {t.memory_mb:,} MB   formats {', '.join(t.formats)}\n")
        out.append("peak ", style="bold")
        out.append(f"{t.peak.gflops_fp32:g} GFLOP/s fp32, {t.peak.gops_int8:g} GOP/s int8, "
                   f"{t.peak.bandwidth_gbs:g} GB/s\n")
        out.append(f"  source: {t.peak.source}\n", style="dim")
        out.append("budget ", style="bold")
        out.append(f"model ≤ {t.budget.max_model_mb:g} MB, memory ≤ {t.budget.max_memory_mb:g} MB\n")
        out.append(f"arch {t.arch}", style="bold")
        out.append(f"   cores {t.cores}, runtime threads {t.threads}\n")
        out.append("reach ", style="bold")
        out.append(t.reach.label)
        check = self.checks.get(t.name)
        if check is not None:
            out.append(f"  {check.status}", style=CHECK_STYLE.get(check.status, ""))
            out.append(f": {check.reason}")
        out.append("\n")
        if t.name in self.bench:
            shown, r = self.bench[t.name]
            out.append("benchmark ", style="bold")
            out.append(f"{shown}: p50 {fmt_ms(r.get('p50_ms'))}, p90 {fmt_ms(r.get('p90_ms'))}, "
                       f"{r.get('threads')} threads, {r.get('runtime')}")
            if runner.measures_on(t):
                out.append(f", on {t.name}\n")
            else:
                out.append(f", measured on this machine with {t.name}'s threads\n")
                out.append(f"  {t.name} itself was not reached; the report's latency for it is estimated unless "
                           "the eval stage measured it there\n", style="yellow")
        box.update(out)

    # ---- reachability ----------------------------------------------------------------------------------

    def action_check(self) -> None:
        if not self.targets:
            return
        self.notify("checking reachability…")
        self._check(list(self.targets))

    @work(thread=True, exclusive=True, group="targets-check")
    def _check(self, targets: list[Any]) -> None:
        from toolkit.reach import check_reach

        # ssh checks wait on the network: side by side, n hosts take one timeout, not n.
        with ThreadPoolExecutor(max_workers=min(8, len(targets)) or 1) as pool:
            results = dict(zip((t.name for t in targets), pool.map(check_reach, targets)))
        self.app.call_from_thread(self._checked, results)

    def _checked(self, results: dict[str, Any]) -> None:
        self.checks.update(results)
        self._show(self.targets)
        bad = [n for n, c in results.items() if c.status == "unreachable"]
        self.notify(f"unreachable: {', '.join(bad)}" if bad else "every target checked",
                    severity="warning" if bad else "information")

    # ---- benchmark -------------------------------------------------------------------------------------

    def action_bench(self) -> None:
        target = self.highlighted()
        if target is None:
            return
        files = model_files(self.app.runs_roots)
        if not files:
            self.notify("no variant model files under the run directories yet", severity="warning")
            return

        def chosen(result: tuple[Path, str] | None) -> None:
            if result is not None:
                self.notify(f"benchmarking {shown_path(result[0])} on {result[1]}…")
                self._bench(result[0], result[1])

        self.app.push_screen(BenchDialog([(shown_path(f), f) for f in files], [t.name for t in self.targets],
                                         target=target.name, title=f"Benchmark on {target.name}"), chosen)

    def _spec(self, name: str) -> str:
        """What `toolkit bench --target` takes: the name of a known profile, else the profile's file."""
        from toolkit.targets import known_names

        t = next((t for t in self.targets if t.name == name), None)
        return t.file if t is not None and t.file and name not in known_names() else name

    @work(thread=True, group="targets-bench")
    def _bench(self, model_file: Path, target: str) -> None:
        try:
            result = runner.bench(model_file, self._spec(target))
        except Exception as e:  # UserError from the command, a timeout: reported, never raised into the UI
            self.app.call_from_thread(self.notify, f"bench on {target}: {e}", severity="error", timeout=10)
            return
        self.app.call_from_thread(self._benched, target, shown_path(model_file), result)

    def _benched(self, target: str, shown: str, result: dict) -> None:
        self.bench[target] = (shown, result)
        t = next((t for t in self.targets if t.name == target), None)
        p50 = fmt_ms(result.get("p50_ms"))
        if t is not None and runner.measures_on(t):
            self.notify(f"{shown} on {target}: p50 {p50}", timeout=8)
        else:
            self.notify(f"{shown}: p50 {p50} on this machine with {target}'s {result.get('threads')} threads "
                        f"({result.get('runtime')}); {target} itself was not reached", severity="warning",
                        timeout=15)
        self._render_detail()


def model_files(roots: list[Path]) -> list[Path]:
    """Every variant model file (onnx, ort, pte, ts) in the run directories under ``roots``."""
    from tui.report_view import variant_files
    from tui.runs import is_run_dir

    found: list[Path] = []
    for root in roots:
        runs = [root] if is_run_dir(root) else sorted(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        for run in runs:
            variants = run / "variants"
            if variants.is_dir():
                for v in sorted(p for p in variants.iterdir() if p.is_dir()):
                    found += variant_files(run, v.name)
    return found
