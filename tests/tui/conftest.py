"""Fixtures for the TUI tests: an isolated working folder and UI state, and a way to wait in pilot tests."""
from __future__ import annotations

import os
import shutil
import signal
import time
from pathlib import Path
from typing import Awaitable, Callable

import pytest

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "tui"


@pytest.fixture
def tui_fixtures() -> Path:
    return FIXTURES


@pytest.fixture
def ui_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The cwd is an empty folder (its runs/ is where sessions go); the UI's records go beside it; UTC clock."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("EDGE_TOOLKIT_STATE", str(tmp_path / "state"))
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    return work


@pytest.fixture
def fixture_runs(ui_home: Path) -> Path:
    """A copy of the fixture run directories under ./runs (tests may write into it)."""
    shutil.copytree(FIXTURES / "rundirs", ui_home / "runs")  # (not "runs": .gitignore ignores it)
    return ui_home / "runs"


@pytest.fixture
def fixture_targets() -> Callable[[], list]:
    """Three fixed profiles (a local box, an unreachable ssh board, an estimate-only phone) instead of the
    detected host, which differs from machine to machine."""
    from toolkit.targets import load_profile

    return lambda: [load_profile(p) for p in sorted((FIXTURES / "targets").glob("*.toml"))]


async def wait_until(pilot, condition: Callable[[], bool], timeout: float = 30.0, step: float = 0.1,
                     what: str = "condition") -> None:
    """Let the app run until ``condition()`` holds; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await pilot.pause(step)


@pytest.fixture
def waiter() -> Callable[..., Awaitable[None]]:
    return wait_until


@pytest.fixture
def reap_children():
    """Kill (by their own pids) any session the test's app started and left running."""
    apps: list = []
    yield apps.append
    for app in apps:
        for child in app.children_by_run.values():
            if child.alive:
                try:
                    os.killpg(child.pid, signal.SIGKILL)  # the child leads its own process group
                except ProcessLookupError:
                    pass
