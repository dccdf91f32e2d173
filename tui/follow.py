"""Following a run: tail events.jsonl incrementally and fold the events into what the run view shows.

No Textual here: the run view's worker polls an ``EventFollower`` and feeds a ``RunTracker``; both are plain
objects that tests drive directly. The events are DESIGN.md's (start | progress | metric | log | artifact | skip
| done | error | interrupted), written by any process — a session the UI started, or one started from the CLI.
"""
from __future__ import annotations

import json
import os
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

# The stages of a session in order (DESIGN.md "The flow"); a stage not listed is shown after them.
STAGES = ("train", "compress", "export", "eval", "report")
# The session's own events (start of an attempt, end of the run) carry this stage name (toolkit.session).
SESSION = "session"
# Events that move a stage's state; logs, metrics and artifacts do not.
SIGNIFICANT = ("start", "progress", "done", "skip", "error", "interrupted")
_STATE_OF = {"start": "running", "progress": "running", "done": "done", "skip": "skipped", "error": "failed",
             "interrupted": "interrupted"}
FINISHED = ("done", "skipped", "failed", "interrupted")
# A stage skipped (no work in the recipe, or unchanged since its last run) has nothing left to do: done.
DONE = ("done", "skipped")


class EventFollower:
    """Reads the complete new lines of an events.jsonl file at each ``poll()``.

    A last line without its newline (the writer is mid-write, or died there) waits in a buffer until it is
    complete; a line that is not JSON (a torn write followed by a restart) is skipped. When the file is replaced
    or shrinks (``--force`` starts the run over) the next poll starts from the top and says so.
    """

    def __init__(self, path: str | Path, chunk: int = 4 << 20) -> None:
        self.path = Path(path)
        self.chunk = chunk
        self._offset = 0
        self._buffer = b""
        self._inode: int | None = None

    def poll(self) -> tuple[list[dict[str, Any]], bool]:
        """Returns (new complete events, whether the file started over since the last poll)."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            restarted = self._inode is not None
            self._offset, self._buffer, self._inode = 0, b"", None
            return [], restarted
        restarted = False
        if self._inode is not None and (st.st_ino != self._inode or st.st_size < self._offset):
            self._offset, self._buffer, restarted = 0, b"", True
        self._inode = st.st_ino
        events: list[dict[str, Any]] = []
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            while data := fh.read(self.chunk):
                self._offset += len(data)
                lines = (self._buffer + data).split(b"\n")
                self._buffer = lines.pop()  # b"" after a newline, else the torn tail
                events += _parse(lines)
        return events, restarted


def _parse(lines: Iterable[bytes]) -> list[dict[str, Any]]:
    out = []
    for line in lines:
        if not line.strip():
            continue
        try:
            event = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            continue
        if isinstance(event, dict) and "kind" in event:
            out.append(event)
    return out


def read_tail(path: str | Path, max_bytes: int = 256 << 10) -> list[dict[str, Any]]:
    """The complete events in the last ``max_bytes`` of an events file (cheap for a long run's file)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            size = fh.tell()
            fh.seek(max(0, size - max_bytes))
            data = fh.read()
    except OSError:
        return []
    lines = data.split(b"\n")
    if size > max_bytes:
        lines = lines[1:]  # the first line is probably cut
    if data and not data.endswith(b"\n"):
        lines = lines[:-1]  # torn last line
    return _parse(lines)


@dataclass
class StageState:
    """What the run view shows for one stage."""

    name: str
    state: str = "pending"  # pending | running | done | skipped | failed | interrupted
    step: int = 0
    total: int | None = None
    detail: str = ""
    # (event time, step) of the first progress event of this attempt: the ETA's rate starts there.
    _first: tuple[float, int] | None = None
    _last: tuple[float, int] | None = None
    # seconds left as the stage itself said (a budgeted search: `toolkit tune`), which beats a rate
    _left: float | None = None

    def eta_s(self) -> float | None:
        """Seconds left at the rate seen so far (event times, not the wall clock), or None."""
        if self.state == "running" and self._left is not None:
            return self._left
        if self.state != "running" or not self.total or not self._first or not self._last:
            return None
        (t0, s0), (t1, s1) = self._first, self._last
        if s1 <= s0 or t1 <= t0:
            return None
        return max(0.0, (self.total - s1) * (t1 - t0) / (s1 - s0))

    @property
    def fraction(self) -> float | None:
        return min(1.0, self.step / self.total) if self.total else None


@dataclass
class LogLine:
    t: float
    stage: str
    level: str
    message: str


@dataclass
class RunTracker:
    """Folds events into stage states, progress, metric series and log lines (newest attempt wins)."""

    max_log: int = 2000
    max_points: int = 5000
    stages: dict[str, StageState] = field(default_factory=dict)
    series: dict[str, list[tuple[float, float]]] = field(default_factory=dict)
    logs: deque = field(default_factory=deque)
    last_kind: str | None = None
    last_error: str = ""
    events_seen: int = 0
    logs_total: int = 0  # lines ever logged: a view writes those past its own count (the deque drops old ones)
    current: str | None = None  # the stage of the newest significant event
    session_seen: bool = False  # the file holds a session's start event (toolkit.session marks attempts)
    last_model: str = ""  # the model whose metrics came last ("" = the trained base, else the variant)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget everything (the events file started over)."""
        self.stages = {name: StageState(name) for name in STAGES}
        self.series = {}
        self.logs = deque(maxlen=self.max_log)
        self.last_kind, self.last_error, self.events_seen, self.logs_total = None, "", 0, 0
        self.current, self.session_seen, self.last_model = None, False, ""

    @property
    def running_stage(self) -> StageState | None:
        running = [s for s in self.stages.values() if s.state == "running"]
        return running[-1] if running else None

    def feed(self, events: Iterable[dict[str, Any]]) -> None:
        for event in events:
            self._one(event)

    def _new_attempt(self, stage: str, kind: str) -> bool:
        """A rerun of the command (resume): the previous attempt ended, or an earlier stage starts again.

        A session marks its attempts itself (its start event), so this guess is only for files without one;
        a single-stage command run after a session (an export from the results screen) is no new attempt."""
        if self.session_seen:
            return False
        if self.last_kind in ("error", "interrupted"):
            return True
        if kind not in ("start", "skip"):
            return False
        order = list(self.stages)
        here = order.index(stage) if stage in order else len(order)
        # A stage may start several times in one attempt (one per compression step), so only an earlier
        # stage starting again while a later one has moved marks a rerun.
        return any(s.state != "pending" for s in list(self.stages.values())[here + 1:])

    def _one(self, e: dict[str, Any]) -> None:
        kind, stage = e.get("kind"), str(e.get("stage", "?"))
        t = float(e.get("t", 0.0))
        self.events_seen += 1
        if stage == SESSION:
            self._session(e, kind, t)
            return
        if kind in SIGNIFICANT and self._new_attempt(stage, kind):
            for s in self.stages.values():
                s.state, s.detail, s._first, s._last = "pending", "", None, None
        st = self.stages.setdefault(stage, StageState(stage))
        if kind in SIGNIFICANT:
            self.last_kind = kind
            self.current = stage
            st.state = _STATE_OF[kind]
        if kind == "start":
            # A stage may start sub-parts (a compression step's training): each has its own total and ETA.
            st.total = _int(e.get("total")) or st.total
            st.step = _int(e.get("resumed_from")) or 0
            st._first, st._last, st._left = None, None, None
            st.detail = " ".join(str(e[k]) for k in ("variant", "phase") if e.get(k))
        elif kind == "progress":
            st.step = _int(e.get("step")) or st.step
            st.total = _int(e.get("total")) or st.total
            if st._first is None:
                st._first = (t, st.step)
            st._last = (t, st.step)
            if isinstance(e.get("seconds_left"), (int, float)):
                st._left = float(e["seconds_left"])
            if isinstance(e.get("best"), dict) and e["best"]:
                # a search's best so far per target (`toolkit tune`): what the user waits to see
                st.detail = "best: " + ", ".join(f"{target} {b.get('speedup', 0):.2f}x"
                                                 for target, b in e["best"].items() if isinstance(b, dict))
        elif kind == "done":
            if st.total:
                st.step = st.total
        elif kind == "skip":
            st.detail = str(e.get("reason", ""))
            # The stage list has room for "skipped" only; why (no work, or up to date) goes to the log.
            self._log(t, stage, "info", f"skipped: {st.detail}" if st.detail else "skipped")
        elif kind == "error":
            self.last_error = st.detail = str(e.get("message", ""))
            self._log(t, stage, "error", self.last_error)
        elif kind == "interrupted":
            st.detail = f"at step {e.get('step')}" if e.get("step") is not None else ""
            self._log(t, stage, "warning", "interrupted " + st.detail + "; checkpoint saved")
        elif kind == "log":
            self._log(t, stage, str(e.get("level", "info")), str(e.get("message", "")))
        elif kind == "metric":
            self._metric(stage, e.get("values") or {}, e.get("variant"))

    def _session(self, e: dict[str, Any], kind: Any, t: float) -> None:
        """The session's own events: its start opens an attempt (and names the stages); done ends the run."""
        if kind == "start":
            self.session_seen = True
            names = [str(n) for n in e.get("stages") or []] or list(self.stages)
            self.stages = {n: StageState(n) for n in names}
            self._log(t, SESSION, "info", f"session started: {', '.join(names)}")
        elif kind in ("done", "error", "interrupted"):
            self.last_kind, self.current = kind, SESSION
            if kind == "error":
                self.last_error = str(e.get("message", ""))
                self._log(t, SESSION, "error", self.last_error)
            elif kind == "done":
                self._log(t, SESSION, "info", "session finished" + (f" in {e['seconds']:.0f} s" if isinstance(
                    e.get("seconds"), (int, float)) else ""))
        elif kind == "log":
            self._log(t, SESSION, str(e.get("level", "info")), str(e.get("message", "")))

    def _metric(self, stage: str, values: dict[str, Any], variant: Any = None) -> None:
        step = values.get("step")
        if not isinstance(step, (int, float)):
            return
        for key, value in values.items():
            if key in ("val_examples",) or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue
            if key == "loss" or key.startswith("val_"):
                # One series per model: a compression step's training counts its steps from 1 again.
                model = str(variant) if variant else "" if stage == "train" else stage
                name = f"{model} {key}" if model else key
                self.last_model = model
                points = self.series.setdefault(name, [])
                if points and points[-1][0] >= step:
                    # A resumed run repeats steps after its checkpoint: the newest values replace them.
                    while points and points[-1][0] >= step:
                        points.pop()
                points.append((float(step), float(value)))
                if len(points) > self.max_points:
                    del points[: len(points) - self.max_points]

    def _log(self, t: float, stage: str, level: str, message: str) -> None:
        self.logs.append(LogLine(t, stage, level, message))
        self.logs_total += 1


def _int(v: Any) -> int | None:
    return int(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def shown_states(tracker: RunTracker, recorded: dict[str, str], run_state: str) -> list[tuple[str, str]]:
    """(stage, state) as the run view shows them.

    The newest attempt's events decide. While no process works on the run, a stage its events leave pending
    takes the status the manifest recorded (``toolkit.session.stage_states``: a run whose events file is
    gone or was started over still shows what is done); while one does, the events alone say what this
    attempt has reached, so a stage it has yet to redo is not shown done. A stage whose events stop mid-way
    with no process on it ended as the run did (failed, else interrupted).
    """
    live = run_state == "running"
    out = []
    for name, st in tracker.stages.items():
        state = st.state
        if state == "pending" and not live and recorded.get(name, "pending") != "pending":
            state = recorded[name]
        if state == "running" and not live:
            state = "failed" if run_state == "failed" else "interrupted"
        out.append((name, state))
    return out


def overall(states: list[tuple[str, str]]) -> tuple[int, int, int]:
    """(stages done, of how many, how many of the done were skipped)."""
    done = [s for _, s in states if s in DONE]
    return len(done), len(states), sum(1 for s in done if s == "skipped")
