"""Following events.jsonl: incremental reads, torn lines, restarts, and the tracker's stages, ETA and series."""
from __future__ import annotations

import json
import os
from pathlib import Path

from tui.follow import EventFollower, RunTracker, read_tail


def line(**e) -> bytes:
    return (json.dumps(e) + "\n").encode()


def test_follower_reads_only_new_complete_lines(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    f = EventFollower(path)
    assert f.poll() == ([], False)  # no file yet
    path.write_bytes(line(t=1, stage="train", kind="start", total=4))
    events, restarted = f.poll()
    assert [e["kind"] for e in events] == ["start"] and not restarted
    assert f.poll() == ([], False)
    # A writer caught mid-line: the half line waits for its newline.
    with open(path, "ab") as fh:
        fh.write(b'{"t": 2, "stage": "train", "kind": "prog')
    assert f.poll() == ([], False)
    with open(path, "ab") as fh:
        fh.write(b'ress", "step": 1, "total": 4}\n')
    events, _ = f.poll()
    assert events == [{"t": 2, "stage": "train", "kind": "progress", "step": 1, "total": 4}]


def test_follower_skips_a_torn_line_followed_by_a_restarted_writer(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    # A process died mid-write; the rerun appends whole lines after the fragment.
    path.write_bytes(line(t=1, stage="train", kind="start") + b'{"t": 2, "kind": "prog' + b"\n"
                     + line(t=3, stage="train", kind="start"))
    events, _ = EventFollower(path).poll()
    assert [e["t"] for e in events] == [1, 3]


def test_follower_starts_over_when_the_file_is_replaced(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    path.write_bytes(line(t=1, stage="train", kind="start") * 3)
    f = EventFollower(path)
    assert len(f.poll()[0]) == 3
    path.unlink()  # --force empties the run directory
    assert f.poll() == ([], True)
    path.write_bytes(line(t=9, stage="train", kind="start"))
    events, restarted = f.poll()
    assert [e["t"] for e in events] == [9] and not restarted
    # Truncated in place and rewritten shorter: detected by the size.
    with open(path, "r+b") as fh:
        fh.truncate(0)
    os.utime(path)
    assert f.poll()[1] is True


def test_read_tail_drops_the_cut_first_line_and_the_torn_last(tmp_path: Path) -> None:
    path = tmp_path / "events.jsonl"
    body = b"".join(line(t=i, stage="train", kind="progress", step=i) for i in range(200))
    path.write_bytes(body + b'{"t": 999, "kin')
    tail = read_tail(path, max_bytes=1000)
    assert tail and tail[-1]["t"] == 199
    assert all(isinstance(e, dict) for e in tail) and len(tail) < 200


def test_tracker_stage_states_progress_and_eta() -> None:
    tr = RunTracker()
    tr.feed([
        {"t": 0, "stage": "session", "kind": "start", "stages": ["train", "compress", "export", "eval", "report"]},
        {"t": 1, "stage": "train", "kind": "start", "index": 0, "of": 5},
        {"t": 1, "stage": "train", "kind": "start", "total": 100, "resumed_from": 0},
        {"t": 2, "stage": "train", "kind": "progress", "step": 10, "total": 100},
        {"t": 4, "stage": "train", "kind": "progress", "step": 30, "total": 100},
    ])
    st = tr.stages["train"]
    assert st.state == "running" and st.step == 30 and st.total == 100
    # 20 steps in 2 s of event time -> 70 steps left take 7 s.
    assert abs(st.eta_s() - 7.0) < 1e-9
    assert [s.state for s in tr.stages.values()] == ["running", "pending", "pending", "pending", "pending"]
    tr.feed([{"t": 5, "stage": "train", "kind": "done"},
             {"t": 6, "stage": "compress", "kind": "start", "total": 20, "variant": "student", "phase": "distill"}])
    assert tr.stages["train"].state == "done" and tr.stages["train"].step == 100
    assert tr.running_stage.name == "compress" and tr.running_stage.detail == "student distill"


def test_tracker_new_attempt_after_interrupt_and_series_per_model() -> None:
    tr = RunTracker()
    tr.feed([
        {"t": 1, "stage": "train", "kind": "start", "total": 100},
        {"t": 2, "stage": "train", "kind": "metric", "values": {"step": 10, "loss": 2.0}},
        {"t": 3, "stage": "train", "kind": "metric", "values": {"step": 20, "loss": 1.5}},
        {"t": 4, "stage": "train", "kind": "interrupted", "step": 20},
    ])
    assert tr.stages["train"].state == "interrupted"
    assert tr.logs[-1].level == "warning"
    tr.feed([
        {"t": 10, "stage": "train", "kind": "log", "level": "info", "message": "resumed from step-000020"},
        {"t": 11, "stage": "train", "kind": "start", "total": 100, "resumed_from": 20},
        {"t": 12, "stage": "train", "kind": "metric", "values": {"step": 20, "loss": 1.4}},
        {"t": 13, "stage": "compress", "kind": "metric", "variant": "student", "values": {"step": 10, "loss": 0.9}},
    ])
    st = tr.stages["train"]
    assert st.state == "running" and st.step == 20
    # The repeated step replaced the old value; the student's steps are its own series.
    assert tr.series["loss"] == [(10.0, 2.0), (20.0, 1.4)]
    assert tr.series["student loss"] == [(10.0, 0.9)]
    assert tr.logs_total == 2


def test_tracker_rerun_of_a_finished_session_resets_later_stages() -> None:
    tr = RunTracker()
    done = [{"t": i, "stage": s, "kind": k} for i, (s, k) in enumerate(
        [("train", "start"), ("train", "done"), ("compress", "start"), ("compress", "error")])]
    done[-1]["message"] = "prune: sparsity 1.5 is not in [0, 1)"
    tr.feed(done)
    assert tr.stages["compress"].state == "failed" and tr.last_error.startswith("prune: sparsity")
    tr.feed([{"t": 9, "stage": "train", "kind": "skip", "reason": "up to date"}])
    assert tr.stages["train"].state == "skipped" and tr.stages["compress"].state == "pending"


def test_tracker_session_marks_attempts_and_a_later_export_keeps_the_stages() -> None:
    tr = RunTracker()
    names = ["train", "compress", "export", "eval", "report"]
    session = [{"t": 0, "stage": "session", "kind": "start", "stages": names}]
    session += [{"t": 1, "stage": s, "kind": "done"} for s in names]
    session += [{"t": 2, "stage": "session", "kind": "done", "seconds": 2.0}]
    tr.feed(session)
    assert [s.state for s in tr.stages.values()] == ["done"] * 5
    # `toolkit export` from the results screen: only its own stage moves.
    tr.feed([{"t": 3, "stage": "export", "kind": "start", "total": 4},
             {"t": 4, "stage": "export", "kind": "done"}])
    assert [s.state for s in tr.stages.values()] == ["done"] * 5
    # A rerun of the session starts a new attempt: every stage pending until it is reached.
    tr.feed([{"t": 5, "stage": "session", "kind": "start", "stages": names},
             {"t": 6, "stage": "train", "kind": "skip", "reason": "up to date"}])
    assert [s.state for s in tr.stages.values()] == ["skipped"] + ["pending"] * 4


def test_tracker_follows_a_tune_search_live() -> None:
    """`toolkit tune` reports trials done, the best so far per target and the seconds its budget has left."""
    tr = RunTracker()
    tr.feed([{"t": 1, "stage": "train", "kind": "skip", "reason": "up to date"},
             {"t": 2, "stage": "tune", "kind": "start", "targets": ["host", "raspberry-pi-4"], "budget_s": 120},
             {"t": 5, "stage": "tune", "kind": "progress", "step": 3, "total": 60, "seconds_left": 110.0,
              "best": {"host": {"trial": "ab12", "speedup": 1.95}}},
             {"t": 9, "stage": "tune", "kind": "progress", "step": 4, "total": 60, "seconds_left": 96.5,
              "best": {"host": {"trial": "cd34", "speedup": 4.93}, "raspberry-pi-4": {"trial": "cd34",
                                                                                     "speedup": 5.71}}}])
    st = tr.stages["tune"]
    assert st.state == "running" and (st.step, st.total) == (4, 60)
    assert st.detail == "best: host 4.93x, raspberry-pi-4 5.71x"
    assert st.eta_s() == 96.5  # the budget, not a rate over 60 possible chains
    tr.feed([{"t": 20, "stage": "tune", "kind": "done", "trials": 17}])
    assert st.state == "done" and st.eta_s() is None
