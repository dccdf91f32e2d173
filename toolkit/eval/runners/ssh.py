"""The ``ssh`` runner: copy the model and ``remote_bench.py`` to the device, run it there, read its JSON back.

Every call is an argument list (never a local shell); host keys are checked (``StrictHostKeyChecking=yes``, against
the profile's known_hosts file when it names one), nothing prompts (``BatchMode=yes``), connections give up after
``ConnectTimeout`` and the whole measurement after ``timeout`` seconds. ssh hands the remote command to the
remote user's shell as one string, so each remote word is quoted (``shlex.quote``). Files land in a fresh
``mktemp -d`` folder, removed afterwards; the model keeps its file name (ONNX external data refers to it). The device needs Python 3 with numpy and the
runtime (onnxruntime, or executorch for .pte); its interpreter is ``python`` (default $TOOLKIT_REMOTE_PYTHON, else
``python3``).
"""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from toolkit.errors import UserError
from toolkit.eval.runners import result_fields, save_inputs
from toolkit.eval.runners.local import _last_json, _last_line

SCRIPT = Path(__file__).with_name("remote_bench.py")
_REMOTE_DIR = re.compile(r"^/[A-Za-z0-9._/-]+$")
REMOTE_TRT_CACHE = ".cache/edge-toolkit/trt"
"""TensorRT's engine cache on the device, relative to the remote user's home (kept between measurements)"""


class SshRunner:
    """Measures on a device reached over ssh (``target.reach``: host, user, port, key, known_hosts).

    Args:
        target: the profile.
        python: the interpreter on the device (default $TOOLKIT_REMOTE_PYTHON, else ``python3``).
        connect_timeout: seconds each connection may take to open.
        timeout: seconds the whole measurement may take (copy, run, clean up).
    """

    def __init__(self, target: Any, python: str | None = None, connect_timeout: int = 5,
                 timeout: float = 900.0) -> None:
        self.target = target
        self.python = python or os.environ.get("TOOLKIT_REMOTE_PYTHON") or "python3"
        self.connect_timeout = int(connect_timeout)
        self.timeout = float(timeout)
        r = target.reach
        self.where = f"{r.user}@{r.host}:{r.port}"

    # -- the commands ------------------------------------------------------------------------------------------

    def ssh_args(self, words: list[str]) -> list[str]:
        """ssh ... -- user@host 'quoted words': the remote shell splits it back into exactly ``words``."""
        from toolkit.reach import ssh_command

        return ssh_command(self.target.reach, self.connect_timeout) + [shlex.join(words)]

    def scp_args(self, files: list[Path], remote_dir: str) -> list[str]:
        """scp with the same options as ssh (-P for the port), local paths after ``--``."""
        from toolkit.reach import ssh_command

        options = ssh_command(self.target.reach, self.connect_timeout)[1:-2]  # between "ssh" and "-- user@host"
        options = ["-P" if o == "-p" else o for o in options]
        r = self.target.reach
        host = f"[{r.host}]" if ":" in r.host else r.host  # an IPv6 address
        return ["scp", "-q", *options, "--", *[str(f.resolve()) for f in files], f"{r.user}@{host}:{remote_dir}/"]

    def _run(self, args: list[str], deadline: float, what: str) -> str:
        left = deadline - time.monotonic()
        if left <= 0:
            raise UserError(f"{self.where}: no answer within {self.timeout:g} s (target '{self.target.name}')")
        try:
            proc = subprocess.run(args, capture_output=True, text=True, timeout=left, stdin=subprocess.DEVNULL)
        except FileNotFoundError:
            raise UserError(f"{self.where}: the {args[0]} client is not installed (apt install openssh-client)") from None
        except subprocess.TimeoutExpired:
            raise UserError(f"{self.where}: no answer within {self.timeout:g} s while {what} "
                            f"(target '{self.target.name}')") from None
        if proc.returncode == 255 or (args[0] == "scp" and proc.returncode != 0):
            raise UserError(f"{self.where}: cannot reach target '{self.target.name}' ({what}): "
                            f"{_last_line(proc.stderr) or f'{args[0]} exited with {proc.returncode}'}")
        if proc.returncode != 0:
            result = _last_json(proc.stdout)
            why = (result or {}).get("error") or _last_line(proc.stderr) or f"exit status {proc.returncode}"
            raise UserError(f"{self.where}: {what} failed on target '{self.target.name}': {why}")
        return proc.stdout

    # -- measuring ---------------------------------------------------------------------------------------------

    def measure(self, model_file: Path, *, batch: int = 1, seq_len: int = 64, warmup: int = 20, runs: int = 200,
                threads: int | None = None, inputs: dict[str, np.ndarray] | None = None, provider: str = "cpu",
                cache_dir: Path | None = None) -> dict[str, Any]:
        """Copy, run, read back, clean up; see :class:`toolkit.eval.runners.Runner`. ``cache_dir`` is a local
        folder and means nothing on the device: TensorRT's engines stay there in ``REMOTE_TRT_CACHE`` (relative
        to the remote user's home), outside the per-measurement folder that is removed, so later measurements
        reuse them.

        Raises:
            UserError: the host cannot be reached or does not answer in time (naming it), or the benchmark fails
                there (the device's own message).
        """
        model = Path(model_file)
        if not model.is_file():
            raise UserError(f"{model}: no such model file to measure")
        r = self.target.reach
        for label, path in (("key", r.key), ("known_hosts", r.known_hosts)):
            if path and not Path(path).expanduser().is_file():
                raise UserError(f"{self.where}: reach.{label} file not found: {path} (target '{self.target.name}')")
        threads = threads or self.target.threads
        deadline = time.monotonic() + self.timeout
        with tempfile.TemporaryDirectory(prefix="edge-bench-") as tmp:
            feed = inputs if inputs is not None else synthetic_inputs(model, batch, seq_len)
            files = [model, *_external_data(model), SCRIPT, save_inputs(feed, Path(tmp) / "inputs.npz")]
            remote_dir = self._run(self.ssh_args(["mktemp", "-d", "/tmp/edge-bench.XXXXXX"]), deadline,
                                   "making a folder").strip()
            if not _REMOTE_DIR.match(remote_dir):
                raise UserError(f"{self.where}: mktemp -d answered {remote_dir[:80]!r}, not a folder path")
            try:
                self._run(self.scp_args(files, remote_dir), deadline, "copying the model")
                words = self.bench_words(remote_dir, model.name, threads=threads, batch=batch, seq_len=seq_len,
                                         warmup=warmup, runs=runs, provider=provider)
                out = self._run(self.ssh_args(words), deadline, "running the benchmark")
            finally:
                # clean up even after a failure, within its own short limit
                self._cleanup(remote_dir)
        result = _last_json(out)
        if result is None or "error" in result:
            raise UserError(f"{self.where}: the benchmark gave no result: {(result or {}).get('error') or out[-200:]}")
        return result_fields(result, self.target, f"ssh {self.where}")

    def bench_words(self, remote_dir: str, model_name: str, *, threads: int, batch: int, seq_len: int, warmup: int,
                    runs: int, provider: str = "cpu") -> list[str]:
        """The remote command: the interpreter, remote_bench.py and its arguments (an argument list, quoted by
        :meth:`ssh_args`)."""
        words = [self.python, f"{remote_dir}/{SCRIPT.name}", f"{remote_dir}/{model_name}",
                 "--threads", str(threads), "--batch", str(batch), "--seq-len", str(seq_len),
                 "--warmup", str(warmup), "--runs", str(runs), "--inputs", f"{remote_dir}/inputs.npz"]
        if provider != "cpu":
            words += ["--provider", provider, "--trt-cache", REMOTE_TRT_CACHE]
        return words

    def _cleanup(self, remote_dir: str) -> None:
        try:
            subprocess.run(self.ssh_args(["rm", "-rf", "--", remote_dir]), capture_output=True,
                           timeout=self.connect_timeout + 10, stdin=subprocess.DEVNULL)
        except (subprocess.TimeoutExpired, OSError):
            pass  # a folder left in the device's /tmp is not worth failing a measurement for


def synthetic_inputs(model: Path, batch: int, seq_len: int) -> dict[str, np.ndarray]:
    """The inputs the local harness would make for ``model`` (same rules, same seed), built here so the device
    and this machine time the same arrays; ExecuTorch inputs in the program's order."""
    from toolkit.eval.backends import make_runner, runtime_for
    from toolkit.eval.inputs import synthetic_batch

    runner = make_runner(runtime_for(model), 1)
    runner.import_runtime(model)
    runner.load(model)
    try:
        return synthetic_batch(runner.input_specs(), batch=batch, seq_len=seq_len, model=str(model)).feeds[0]
    finally:
        runner.close()


def _external_data(model: Path) -> list[Path]:
    """ONNX external-data files beside the model (they must keep their names)."""
    return [p for p in (model.with_name(model.name + "_data"), model.with_name(model.name + ".data")) if p.is_file()]
