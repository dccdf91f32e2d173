"""Data-parallel training on PyTorch's own engine: DDP launched by ``torchrun`` (gloo on CPU, nccl on GPU).

Two ways in, one code path:

- ``torchrun --nproc_per_node=N -m toolkit train RECIPE``: every worker runs the ordinary ``train`` command;
  :func:`init` sees torchrun's environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and joins the group.
- ``python -m toolkit train RECIPE --nproc N``: :func:`launch` runs torchrun for the user (an argument list,
  never a shell string) on 127.0.0.1 and a free port, then turns the workers' outcome into one exit code
  and one line (DESIGN.md), whichever rank failed first.

How a global batch is shared: every rank computes the same global order (``loop.epoch_order``, which plays
the part of ``DistributedSampler.set_epoch``) and takes the strided shard ``batch[rank::world]``, then splits
it into ``grad_accum`` micro-batches. The position in the epoch therefore stays a single number, which is
what makes resume-by-position work at any world size. Rank 0 alone writes files.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import torch

from toolkit.errors import UserError

STATUS_ENV = "TOOLKIT_LAUNCH_STATUS"  # set by launch(): the folder where each worker writes its outcome


@dataclass(frozen=True)
class DistEnv:
    """This process's place in the job; ``world == 1`` is an ordinary single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str = ""

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


SINGLE = DistEnv()
_state: dict[str, Any] = {"env": SINGLE, "control": None}


def under_torchrun() -> bool:
    """True in a worker that torchrun (or another launcher setting its variables) started."""
    return "LOCAL_RANK" in os.environ and "WORLD_SIZE" in os.environ


def env_world() -> int:
    return int(os.environ.get("WORLD_SIZE", "1")) if under_torchrun() else 1


def current() -> DistEnv:
    """The process group this process belongs to (``SINGLE`` when none was initialised)."""
    return _state["env"]


def init(device: str = "auto") -> DistEnv:
    """Join torchrun's process group (idempotent). gloo on CPU, nccl when training on CUDA.

    ``device`` is ``train.device`` (auto | cpu | cuda). Returns ``SINGLE`` outside torchrun or for one process.
    """
    import torch.distributed as dist

    if _state["env"].active:
        return _state["env"]
    world = env_world()
    if world <= 1:
        return SINGLE
    rank, local_rank = int(os.environ["RANK"]), int(os.environ["LOCAL_RANK"])
    cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if cuda:
        if not torch.cuda.is_available():
            raise UserError("train.device = 'cuda' but no CUDA device is visible; use 'auto' or 'cpu'")
        if local_rank >= torch.cuda.device_count():
            raise UserError(f"{world} processes on this machine but only {torch.cuda.device_count()} CUDA "
                            f"device(s): use --nproc {torch.cuda.device_count()} or fewer")
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    env = DistEnv(rank=rank, world=world, local_rank=local_rank, backend=backend)
    # Host-side agreement (stop flags, token counts, small objects) goes through gloo even when the
    # gradients use nccl, so it never makes the host wait for the GPU.
    _state["control"] = dist.new_group(backend="gloo") if backend != "gloo" else dist.group.WORLD
    _state["env"] = env
    _die_with_parent()
    return env


def shutdown() -> None:
    """Leave the process group (end of a worker)."""
    import torch.distributed as dist

    if _state["env"].active and dist.is_initialized():
        dist.destroy_process_group()
    _state.update(env=SINGLE, control=None)


def finish(env: DistEnv, wait: bool = True, timeout_s: float = 120.0) -> None:
    """End of a worker: wait for every rank (so no rank exits, and makes torchrun stop the others, while
    rank 0 still writes), then leave the group. ``wait=False`` after an internal error, where the other
    ranks may be stuck in a collective and only torchrun can end them."""
    import datetime

    import torch.distributed as dist

    if not env.active:
        return
    if wait:
        try:
            dist.monitored_barrier(group=_state["control"], timeout=datetime.timedelta(seconds=timeout_s))
        except RuntimeError:
            pass  # a rank is gone or late; torchrun reports it
    shutdown()


def _die_with_parent() -> None:
    # torchrun starts each worker in its own session: if torchrun itself is killed, the workers would live
    # on. Ask Linux to send SIGTERM then, which the loop treats as "checkpoint and stop".
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6", use_errno=True)
        libc.prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        return


# ---- collectives (no-ops for one process) -------------------------------------------------------------

def barrier(env: DistEnv) -> None:
    if env.active:
        import torch.distributed as dist

        dist.barrier(group=_state["control"])


@contextlib.contextmanager
def main_first(env: DistEnv) -> Iterator[None]:
    """Rank 0 runs the block first (it may write caches); the others run it after, reading them."""
    if env.active and not env.is_main:
        barrier(env)
    yield
    if env.active and env.is_main:
        barrier(env)


def broadcast_object(env: DistEnv, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not env.active:
        return obj
    import torch.distributed as dist

    box = [obj]
    dist.broadcast_object_list(box, src=0, group=_state["control"])
    return box[0]


def gather_objects(env: DistEnv, obj: Any) -> list[Any] | None:
    """Every rank's ``obj``, in rank order, on rank 0 (None on the others)."""
    if not env.active:
        return [obj]
    import torch.distributed as dist

    out: list[Any] | None = [None] * env.world if env.is_main else None
    dist.gather_object(obj, out, dst=0, group=_state["control"])
    return out


def agree(env: DistEnv, stop: bool, tokens: int) -> tuple[bool, int]:
    """One host-side all-reduce per step: does any rank want to stop, and the global token count."""
    if not env.active:
        return stop, tokens
    import torch.distributed as dist

    t = torch.tensor([int(stop), tokens], dtype=torch.int64)
    dist.all_reduce(t, group=_state["control"])
    return bool(t[0] > 0), int(t[1])


def all_reduce_sum(env: DistEnv, tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over the ranks in place, on its device (asynchronous to the host on CUDA)."""
    if env.active:
        import torch.distributed as dist

        dist.all_reduce(tensor)
    return tensor


# ---- sharding -----------------------------------------------------------------------------------------

def shard(indices: Sequence[int], env: DistEnv) -> list[int]:
    """This rank's share of a global batch: every ``world``-th item from ``rank`` (DistributedSampler's
    interleaving). A short last batch can leave a rank with nothing; the loop handles that."""
    return list(indices[env.rank::env.world])


def check_batch(batch_size: int, grad_accum: int, world: int, file: str = "the recipe") -> None:
    """The global batch must split evenly over processes × accumulation steps. Raises UserError."""
    parts = world * grad_accum
    if world > 1 and batch_size % parts:
        good = max(parts, batch_size // parts * parts)
        raise UserError(f"{file}: train.batch_size = {batch_size} does not split evenly over {world} processes × "
                        f"{grad_accum} accumulation step(s); use a multiple of {parts} (e.g. {good}) or another --nproc")


def wrap(model: torch.nn.Module, env: DistEnv, device: torch.device) -> torch.nn.Module:
    """``DistributedDataParallel(model)`` when there are several ranks, else the model itself."""
    if not env.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    ids = [device.index] if device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=ids)


# ---- worker outcome, for the launcher -----------------------------------------------------------------

def write_status(code: int, line: str) -> None:
    """Record this worker's exit code and one-line message where the launcher looks (if it launched us)."""
    folder = os.environ.get(STATUS_ENV)
    if not folder:
        return
    rank = int(os.environ.get("RANK", "0"))
    path = Path(folder) / f"rank-{rank}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps({"rank": rank, "code": code, "line": line, "t": time.time()}))
    os.replace(tmp, path)


def silence_stderr() -> None:
    """Non-zero ranks under the launcher say nothing: rank 0 speaks for the job, and the launcher
    reports any rank's error from its status file."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 2)
    os.close(devnull)


# ---- the launcher: python -m toolkit train RECIPE --nproc N --------------------------------------------

# torch's own log lines ("W1128 17:50:34.981000 19714 torch/...py:630] ...") and torchrun's banner.
_TORCH_LOG = re.compile(r"^\[?[IWEF]\d{4} \d\d:\d\d:\d\d\.\d+ +\d+ ")
_WORKER_FINAL = ("error: ", "interrupted: ", "internal error: ")


def free_port() -> int:
    """A TCP port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_command(nproc: int, port: int, toolkit_args: list[str]) -> list[str]:
    """The torchrun command line that runs ``python -m toolkit <toolkit_args>`` on ``nproc`` processes."""
    return [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc),
            "--master_addr", "127.0.0.1", "--master_port", str(port), "-m", "toolkit", *toolkit_args]


def launch(toolkit_args: list[str], nproc: int, debug: bool = False) -> int:
    """Run ``python -m toolkit <toolkit_args>`` on ``nproc`` local processes under torchrun; returns the exit
    code of the job (0, 2 user error, 3 check failed, 130 interrupted, 1 internal) after printing one line
    for a failure.

    Ctrl-C (SIGINT) and SIGTERM are passed to torchrun once, which passes them to every worker: they agree
    on a step, save a checkpoint and stop. torchrun's own failure report is shown with --debug only.
    """
    env = dict(os.environ)
    # One BLAS thread pool per core, not per process × core (torchrun would set 1 and warn).
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // nproc)))
    if sys.platform.startswith("linux"):
        env.setdefault("GLOO_SOCKET_IFNAME", "lo")  # one machine: keep gloo's sockets on the loopback
    env.setdefault("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    status_dir = Path(tempfile.mkdtemp(prefix="toolkit-launch-"))
    env[STATUS_ENV] = str(status_dir)
    cmd = torchrun_command(nproc, free_port(), toolkit_args)
    proc = subprocess.Popen(cmd, env=env, stderr=subprocess.PIPE, start_new_session=True)
    received: list[int] = []

    def forward(signum: int, _frame: Any) -> None:
        # The first signal asks for a checkpoint; a second one stops torchrun at once (its workers get
        # SIGTERM from the kernel when it dies: see _die_with_parent).
        received.append(signum)
        if proc.poll() is None:
            proc.send_signal(signum if len(received) == 1 else signal.SIGKILL)

    old = {s: signal.signal(s, forward) for s in (signal.SIGINT, signal.SIGTERM)}
    pump = threading.Thread(target=_pump_stderr, args=(proc.stderr, debug), daemon=True)
    pump.start()
    try:
        rc = proc.wait()
        pump.join(timeout=5)
    finally:
        for s, h in old.items():
            signal.signal(s, h)
    try:
        return _outcome(status_dir, nproc, rc)
    finally:
        import shutil

        shutil.rmtree(status_dir, ignore_errors=True)


def _pump_stderr(stream: Any, debug: bool) -> None:
    """Pass the workers' stderr through, minus torch's log lines and torchrun's failure report (the
    launcher prints the root cause itself), unless --debug."""
    dropping = False
    for raw in iter(stream.readline, b""):
        line = raw.decode("utf-8", "replace")
        if not debug:
            if _TORCH_LOG.match(line):
                dropping = dropping or line.lstrip("[")[:1] == "E"  # torchrun reports a failed worker
                continue
            # Workers print no tracebacks without --debug: one here is torchrun's own report of a failure
            # or a forwarded signal, and everything after it is too.
            dropping = dropping or line.startswith("Traceback (most recent call last)")
            if dropping or line.startswith(_WORKER_FINAL) or line.strip() == "interrupted":
                continue
        sys.stderr.write(line)
        sys.stderr.flush()


def _outcome(status_dir: Path, nproc: int, rc: int) -> int:
    statuses = []
    for p in status_dir.glob("rank-*.json"):
        try:
            statuses.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    failed = [s for s in statuses if s["code"] != 0]
    if not failed and rc == 0 and len(statuses) == nproc:
        return 0
    if not failed:
        print(f"internal error: a worker process died without reporting (torchrun exit code {rc}); "
              f"rerun with --debug to see torchrun's report", file=sys.stderr)
        return 1
    # The root cause: a user error, failed check or interruption beats the internal errors that other
    # ranks hit when a peer left; rank 0 speaks first among equals, else the earliest.
    primary = [s for s in failed if s["code"] != 1] or failed
    root = min(primary, key=lambda s: (s["rank"] != 0, s["t"]))
    line = root["line"]
    if root["rank"] != 0 and not any(s["rank"] == 0 and s["line"] == line for s in statuses):
        line = f"{line} (rank {root['rank']})"
    print(line, file=sys.stderr)
    return int(root["code"])
