"""Run directories as the home screen lists them: task, state and best variant, read from the files alone.

A run is *running* only while its run.lock heartbeat is fresh (``toolkit.rundir.lock_is_live``); otherwise the
last events say how it ended: done, failed (an error event) or interrupted (an interrupted event, or events
that stop mid-stage: the process was killed). No Textual here.
"""
from __future__ import annotations

import json
import os
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from toolkit.rundir import RunDir, lock_is_live, read_lock
from tui.follow import SIGNIFICANT, read_tail

STATES = ("running", "done", "failed", "interrupted", "new")


@dataclass
class RunInfo:
    """One run directory as listed on the home screen."""

    path: Path
    name: str
    task: str
    state: str
    detail: str
    best: str
    updated: float
    has_report: bool


def is_run_dir(path: Path) -> bool:
    """A folder that a toolkit command wrote into (it has a manifest, events or a lock)."""
    return path.is_dir() and any((path / f).exists() for f in ("manifest.json", "events.jsonl", "run.lock"))


def run_state(path: Path, events: list[dict[str, Any]] | None = None) -> tuple[str, str]:
    """(state, one-line detail) of a run directory; see the module doc for the rules."""
    run = RunDir(path)
    lock = read_lock(run)
    if lock_is_live(lock):
        return "running", f"pid {lock.get('pid')} on {lock.get('host')}"
    events = read_tail(run.events) if events is None else events
    last = next((e for e in reversed(events) if e.get("kind") in SIGNIFICANT), None)
    if last is None:
        if lock is not None:
            return "interrupted", "the process stopped before its first event (stale run.lock)"
        return "new", "no events yet"
    kind, stage = last.get("kind"), last.get("stage", "?")
    if kind == "error":
        return "failed", f"{stage}: {last.get('message', '')}"
    if kind == "interrupted":
        step = last.get("step")
        return "interrupted", f"{stage} stopped" + (f" at step {step}" if step is not None else "")
    if kind in ("done", "skip"):
        if stage == "session":
            return "done", "report.json written" if run.report_json.exists() else "session finished"
        starts = [i for i, e in enumerate(events) if e.get("stage") == "session" and e.get("kind") == "start"]
        ended = bool(starts) and any(e.get("stage") == "session" and e.get("kind") in ("done", "error",
                                     "interrupted") for e in events[starts[-1]:])
        if starts and not ended:
            # A session ends with its own done event; a stage's done without it means the process stopped.
            return "interrupted", f"stopped after the {stage} stage"
        # A single-stage command (toolkit train, or an export after the session): its done is the end.
        return "done", f"{stage} finished" + (" (after the session)" if ended else "")
    return "interrupted", f"{stage} stopped without finishing (the process ended)"


def load_report(path: Path) -> dict[str, Any] | None:
    """report.json of a run directory, or None when absent or unreadable."""
    return read_report(path)[0]


def read_report(path: Path) -> tuple[dict[str, Any] | None, str | None]:
    """(report, None); (None, None) when report.json is not there; (None, why) when it is there but cannot be
    read (torn by a crash mid-write, edited by hand): the results screen says which, and how to rebuild it."""
    file = Path(path) / "report.json"
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, None
    except (OSError, UnicodeDecodeError) as e:
        return None, f"cannot be read: {e}"
    except json.JSONDecodeError as e:
        return None, f"torn or not JSON: {e}"
    if not isinstance(data, dict):
        return None, f"not a report: a JSON {type(data).__name__}, not an object"
    return data, None


def best_variant(report: dict[str, Any] | None) -> str:
    """The recommendation for the first target ('int8 @host'), '+N' when other targets differ."""
    if not report:
        return ""
    rec = report.get("recommendation") or {}
    if not isinstance(rec, dict) or not rec:
        return ""
    target, name = next(iter(rec.items()))
    others = sum(1 for v in rec.values() if v != name)
    shown = f"{name or '—'} @{target}"
    return shown + (f" +{others}" if others else "")


def run_task(path: Path) -> str:
    for name in ("manifest.json",):
        try:
            task = json.loads((path / name).read_text(encoding="utf-8")).get("task")
            if task:
                return str(task)
        except (OSError, json.JSONDecodeError, AttributeError):
            pass
    try:
        return str(tomllib.loads((path / "recipe.toml").read_text(encoding="utf-8")).get("task", ""))
    except (OSError, tomllib.TOMLDecodeError):
        return ""


_CACHE: dict[Path, tuple[tuple, RunInfo]] = {}


def _stamp(path: Path) -> tuple:
    """What changes when a run directory's state can: its events, lock and report files."""
    out = []
    for name in ("events.jsonl", "run.lock", "report.json", "manifest.json"):
        try:
            st = os.stat(path / name)
            out.append((st.st_mtime_ns, st.st_size))
        except OSError:
            out.append(None)
    return tuple(out)


def run_info(path: Path) -> RunInfo:
    """Everything the home screen shows for one run directory (re-read only when its files changed, or while
    it holds a lock, whose liveness depends on the time)."""
    path = Path(path)
    stamp = _stamp(path)
    cached = _CACHE.get(path.resolve())
    if cached is not None and cached[0] == stamp and stamp[1] is None:
        return cached[1]
    info = _read_run_info(path)
    _CACHE[path.resolve()] = (stamp, info)
    return info


def _read_run_info(path: Path) -> RunInfo:
    events = read_tail(path / "events.jsonl")
    state, detail = run_state(path, events)
    report = load_report(path)
    updated = float(events[-1].get("t", 0.0)) if events else 0.0
    return RunInfo(path=path, name=path.name, task=run_task(path), state=state, detail=detail,
                   best=best_variant(report), updated=updated, has_report=report is not None)


def scan_runs(roots: list[Path]) -> list[RunInfo]:
    """Run directories directly under each root (or a root that is one itself), newest activity first."""
    seen: set[Path] = set()
    found: list[RunInfo] = []
    for root in roots:
        root = Path(root)
        candidates = [root] if is_run_dir(root) else sorted(p for p in root.iterdir() if p.is_dir()) \
            if root.is_dir() else []
        for p in candidates:
            key = p.resolve()
            if key in seen or not is_run_dir(p):
                continue
            seen.add(key)
            found.append(run_info(p))
    found.sort(key=lambda r: (-r.updated, r.name))
    return found


@dataclass
class RecipeEntry:
    """A recipe that can be started: a packaged one or a file in ./recipes."""

    name: str
    path: Path
    origin: str  # "built-in" | the folder it was found in
    task: str
    description: str


def list_recipes(folders: list[Path] | None = None) -> list[RecipeEntry]:
    """Packaged recipes, then the .toml files in ``folders`` (default: ./recipes) that are not the same files."""
    from toolkit.resources import packaged_recipes

    out: list[RecipeEntry] = []
    seen: set[Path] = set()
    for name, p in packaged_recipes().items():
        seen.add(p.resolve())
        out.append(_recipe_entry(name, p, "built-in"))
    for folder in folders if folders is not None else [Path("recipes")]:
        if folder.is_dir():
            for p in sorted(folder.glob("*.toml")):
                if p.resolve() not in seen:
                    seen.add(p.resolve())
                    out.append(_recipe_entry(p.stem, p, str(folder)))
    return out


def _recipe_entry(name: str, path: Path, origin: str) -> RecipeEntry:
    """Task from the file; description from its first comment line (recipes open with one)."""
    task, description = "", ""
    try:
        text = path.read_text(encoding="utf-8")
        task = str(tomllib.loads(text).get("task", ""))
        first = next((ln for ln in text.splitlines() if ln.strip()), "")
        if first.startswith("#"):
            description = first.lstrip("# ").strip()
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError):
        description = "unreadable recipe"
    return RecipeEntry(name=name, path=path, origin=origin, task=task, description=description)
