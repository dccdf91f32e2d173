"""Reaching a target: whether a device profile's ``[reach]`` works (local, ssh, none), and the ssh argument list
the remote runner and ``targets --check`` share (host keys checked, no prompts, never a shell string)."""
from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from toolkit.targets import Reach, Target, _f


@dataclass(frozen=True)
class Reachability:
    """The outcome of trying to reach a target."""

    status: str = _f("reachable | unreachable | estimate only")
    reason: str = _f("why, in one line (ssh's own message where it gave one)")


def ssh_command(reach: Reach, connect_timeout: int = 5) -> list[str]:
    """The ssh argument list up to and including ``user@host``; append the remote command's words.

    Host keys are checked (StrictHostKeyChecking=yes) and nothing prompts (BatchMode=yes). An argument list,
    never a shell string: names and paths cannot inject options or commands.
    """
    args = ["ssh", "-o", "BatchMode=yes", "-o", f"ConnectTimeout={connect_timeout}",
            "-o", "StrictHostKeyChecking=yes", "-p", str(reach.port)]
    if reach.key:
        args += ["-i", str(Path(reach.key).expanduser()), "-o", "IdentitiesOnly=yes"]
    if reach.known_hosts:
        args += ["-o", f"UserKnownHostsFile={Path(reach.known_hosts).expanduser()}"]
    return args + ["--", f"{reach.user}@{reach.host}"]


def check_reach(target: Target, connect_timeout: int = 5) -> Reachability:
    """Try to reach ``target``: local is reachable; ssh runs `true` there; none is estimate only. Never hangs."""
    r = target.reach
    if r.kind == "local":
        return Reachability("reachable", "this machine")
    if r.kind == "none":
        return Reachability("estimate only", "no way to reach it is configured (reach.kind = \"none\")")
    where = f"{r.user}@{r.host}:{r.port}"
    for label, path in (("key", r.key), ("known_hosts", r.known_hosts)):
        if path and not Path(path).expanduser().is_file():
            return Reachability("unreachable", f"{where}: reach.{label} file not found: {path}")
    limit = connect_timeout + 10  # the connection has connect_timeout; `true` itself takes no time
    try:
        proc = subprocess.run(ssh_command(r, connect_timeout) + ["true"], capture_output=True, text=True,
                              stdin=subprocess.DEVNULL, timeout=limit)
    except FileNotFoundError:
        return Reachability("unreachable", f"{where}: the ssh client is not installed (apt install openssh-client)")
    except subprocess.TimeoutExpired:
        return Reachability("unreachable", f"{where}: no answer within {limit} s")
    if proc.returncode == 0:
        return Reachability("reachable", f"{where}: ssh ok")
    lines = [line.strip() for line in proc.stderr.splitlines() if line.strip()]
    return Reachability("unreachable", lines[-1] if lines else f"{where}: ssh exited with {proc.returncode}")
