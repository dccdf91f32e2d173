"""Sessions and tools as child processes: ``python -m toolkit run|export|bench ...`` (argument lists only).

A session runs in its own process session (``start_new_session``), with its output in a log file, so quitting
the UI (or the UI crashing) neither stops nor corrupts it, and a crashing run never takes the UI down. Cancel
sends SIGINT: the training loop checkpoints and the process exits 130. Resume runs the same command again.

The UI keeps, per run directory, the command it started and the child's console output, under
``$EDGE_TOOLKIT_STATE`` (default ``$XDG_STATE_HOME/edge-toolkit``, else ``~/.local/state/edge-toolkit``):
outside the run directory, because ``--force`` empties that.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from toolkit.errors import UserError
from toolkit.rundir import RunDir, lock_is_live, read_lock


def toolkit_argv(*args: str) -> list[str]:
    """``python -m toolkit ARGS`` with this interpreter."""
    return [sys.executable, "-m", "toolkit", *args]


def run_argv(recipe: str | Path | None, out: str | Path, overrides: list[str] = (), force: bool = False) -> list[str]:
    """The session command: ``python -m toolkit run [RECIPE] --out DIR [--set k=v ...] [--force]``."""
    args = ["run"] + ([str(recipe)] if recipe else []) + ["--out", str(out)]
    for item in overrides:
        args += ["--set", item]
    return toolkit_argv(*args) + (["--force"] if force else [])


def state_dir() -> Path:
    if os.environ.get("EDGE_TOOLKIT_STATE"):
        return Path(os.environ["EDGE_TOOLKIT_STATE"])
    base = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
    return Path(base) / "edge-toolkit"


def _record_dir(run_dir: Path) -> Path:
    key = hashlib.sha256(str(Path(run_dir).resolve()).encode()).hexdigest()[:16]
    return state_dir() / "tui" / key


def console_log(run_dir: Path) -> Path:
    """Where the output of the last command the UI started for ``run_dir`` goes."""
    return _record_dir(run_dir) / "console.log"


def saved_command(run_dir: Path) -> list[str] | None:
    """The session command the UI last started for ``run_dir`` (for resume), or None."""
    try:
        data = json.loads((_record_dir(run_dir) / "command.json").read_text(encoding="utf-8"))
        argv = data.get("argv")
        return [str(a) for a in argv] if isinstance(argv, list) and argv else None
    except (OSError, json.JSONDecodeError, AttributeError):
        return None


def resume_argv(run_dir: Path) -> list[str]:
    """The command that continues a run: the one that started it (the same command again), else the run's
    own resolved recipe.toml into the same directory (a CLI-started run whose command the UI never saw)."""
    saved = saved_command(run_dir)
    if saved:
        return [a for a in saved if a != "--force"]  # resuming must not start over
    recipe = Path(run_dir) / "recipe.toml"
    if not recipe.is_file():
        raise UserError(f"{run_dir}: no recipe.toml to resume from; start the session again from a recipe")
    return run_argv(recipe.resolve(), Path(run_dir).resolve())


@dataclass
class Child:
    """A process the UI started: a session (with a run directory) or a one-off tool."""

    argv: list[str]
    run_dir: Path | None
    log: Path
    proc: subprocess.Popen
    returncode: int | None = None
    on_exit: list[Callable[["Child"], None]] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def alive(self) -> bool:
        return self.returncode is None and self.proc.poll() is None

    def tail(self, lines: int = 20) -> list[str]:
        """The last lines of the child's console output."""
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return []
        return text.splitlines()[-lines:]


def start(argv: list[str], run_dir: Path, on_exit: Callable[[Child], None] | None = None,
          cwd: Path | None = None) -> Child:
    """Start a session command for ``run_dir`` as a detached child; ``on_exit`` runs in a thread when it ends.

    Raises:
        UserError: a live process already holds the run directory.
    """
    run_dir = Path(run_dir)
    info = read_lock(RunDir(run_dir))
    if lock_is_live(info):
        raise UserError(f"{run_dir}: a live run holds it (pid {info.get('pid')} on {info.get('host')}); "
                        "watch it, or cancel it first")
    record = _record_dir(run_dir)
    record.mkdir(parents=True, exist_ok=True)
    (record / "command.json").write_text(json.dumps({"run_dir": str(run_dir.resolve()), "argv": argv,
                                                     "cwd": str(cwd or Path.cwd())}, indent=1), encoding="utf-8")
    return _spawn(argv, run_dir, record / "console.log", on_exit, cwd)


def start_tool(argv: list[str], log: Path, on_exit: Callable[[Child], None] | None = None) -> Child:
    """Start a one-off command (export) with its output in ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    return _spawn(argv, None, log, on_exit, None)


def _spawn(argv: list[str], run_dir: Path | None, log: Path, on_exit: Callable[[Child], None] | None,
           cwd: Path | None) -> Child:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    with open(log, "ab") as fh:
        fh.write(("$ " + " ".join(argv) + "\n").encode())
        fh.flush()
        # Own process session: the terminal's Ctrl+C and hang-up reach the UI, not the run; output to a file,
        # not a pipe, so the child never blocks on (or dies from) a UI that stopped reading.
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True, cwd=cwd, env=env)
    child = Child(argv=argv, run_dir=run_dir, log=log, proc=proc, on_exit=[on_exit] if on_exit else [])

    def reap() -> None:
        child.returncode = proc.wait()
        for callback in child.on_exit:
            callback(child)

    threading.Thread(target=reap, name=f"reap {proc.pid}", daemon=True).start()
    return child


def cancel(run_dir: Path, child: Child | None = None) -> int:
    """Ask the process working in ``run_dir`` to stop: SIGINT, so it checkpoints and exits 130.

    The UI's own child if it is alive, else the pid in run.lock when the lock is live and on this host (a run
    started from the CLI). Returns the pid signalled.

    Raises:
        UserError: nothing is running there, or it runs on another host.
    """
    if child is not None and child.alive:
        os.kill(child.pid, signal.SIGINT)
        return child.pid
    info = read_lock(RunDir(run_dir))
    if not lock_is_live(info):
        raise UserError(f"{run_dir}: nothing is running there")
    if info.get("host") != socket.gethostname():
        raise UserError(f"{run_dir}: the run works on host {info.get('host')}; cancel it there")
    pid = int(info.get("pid", -1))
    os.kill(pid, signal.SIGINT)
    return pid


def run_tool(argv: list[str], timeout: float = 1800) -> tuple[int, str, str]:
    """Run a short command to completion (in a worker thread): (exit code, stdout, stderr)."""
    proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=timeout,
                          env=dict(os.environ, PYTHONUNBUFFERED="1"))
    return proc.returncode, proc.stdout, proc.stderr


def bench(model_file: Path, target: str, runs: int | None = None) -> dict[str, Any]:
    """``python -m toolkit bench FILE --target T --json``: DESIGN.md's latency fields.

    Raises:
        UserError: the command failed (its last stderr line).
    """
    argv = toolkit_argv("bench", str(model_file), "--target", target, "--json")
    if runs:
        argv += ["--runs", str(runs)]
    code, out, err = run_tool(argv)
    if code != 0:
        raise UserError(last_line(err) or f"bench exited with {code}")
    try:
        return json.loads(out)
    except json.JSONDecodeError:
        raise UserError(f"bench printed no JSON: {last_line(out)}") from None


def last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else ""


EXIT_MEANING = {0: "finished", 1: "internal error", 2: "user error", 3: "a check failed", 130: "interrupted"}


def describe_exit(code: int | None) -> str:
    if code is None:
        return "running"
    if code < 0:
        return f"killed by signal {-code}"
    return f"exit {code} ({EXIT_MEANING.get(code, 'error')})"


def measures_on(target: Any) -> bool:
    """Whether ``toolkit bench --target`` measures on the target (a device profile) itself: only when it is
    this machine (host, or a profile reached as local). Any other profile lends its thread count and runtime
    to a measurement made here."""
    return target.name == "host" or target.reach.kind == "local"


def bench_reaches(target: str) -> bool:
    """``measures_on`` for a target named as ``toolkit bench --target`` takes it."""
    if target == "host":
        return True
    try:
        from toolkit.targets import load_target

        return measures_on(load_target(target))
    except Exception:  # an unknown name or a broken profile: nothing says it is this machine
        return False
