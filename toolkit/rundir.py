"""The run directory (DESIGN.md): layout, atomic writes, hashing, the manifest and the lock.

Writes are atomic (temporary file, fsync, rename), so a crash or a full disk never leaves a half-written
artifact recorded: a file is entered in the manifest only after it is complete.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
import shutil
import socket
import tempfile
import time
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

from toolkit.errors import UserError

MANIFEST_SCHEMA = 1
LIBRARIES = ("torch", "transformers", "tokenizers", "onnx", "onnxruntime", "optimum-onnx", "torchao",
             "executorch", "numpy", "scikit-learn", "sacrebleu", "rouge-score", "textual")


class RunDir:
    """Paths of one run directory; nothing is created until something is written."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).absolute()  # relative to the cwd, never to a recipe's folder

    recipe = property(lambda self: self.path / "recipe.toml")
    manifest = property(lambda self: self.path / "manifest.json")
    events = property(lambda self: self.path / "events.jsonl")
    lock = property(lambda self: self.path / "run.lock")
    train = property(lambda self: self.path / "train")
    checkpoints = property(lambda self: self.path / "train" / "checkpoints")
    final = property(lambda self: self.path / "train" / "final")
    metrics = property(lambda self: self.path / "train" / "metrics.jsonl")
    variants = property(lambda self: self.path / "variants")
    report_json = property(lambda self: self.path / "report.json")
    report_md = property(lambda self: self.path / "report.md")

    def variant(self, name: str) -> Path:
        return self.variants / name

    def check_owner(self, name: str, task: str, force: bool) -> None:
        """Refuse a run directory that holds another recipe's run, unless ``force``."""
        if not self.manifest.exists() or force:
            return
        try:
            m = json.loads(self.manifest.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, OSError):
            raise UserError(f"{self.manifest}: unreadable manifest; use --force to start this run directory over") from None
        if (m.get("run"), m.get("task")) != (name, task):
            raise UserError(
                f"{self.path}: holds run '{m.get('run')}' ({m.get('task')}), not '{name}' ({task}); "
                f"use another --out or --force to start over")

    def reset(self) -> None:
        """--force: remove what an earlier run left (the folder itself stays, and the lock of the command that is
        starting over, which it took first)."""
        if self.path.exists():
            for child in self.path.iterdir():
                if child.name == self.lock.name:
                    continue
                if child.is_dir() and not child.is_symlink():
                    shutil.rmtree(child)
                else:
                    child.unlink()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def umask_mode(mode: int = 0o666) -> int:
    """``mode`` with the process's umask applied: what an ordinary ``open(path, "w")`` would give the file
    (mkstemp and mkdtemp make 0600 / 0700 files, which other users of a shared run directory could not read)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    Raises:
        OSError: as the system says, with ``filename`` set to ``path`` (a full disk names the file it was writing).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, umask_mode())
        os.replace(tmp, path)
    except OSError as e:
        Path(tmp).unlink(missing_ok=True)
        if e.filename is None:
            raise OSError(e.errno, e.strerror, str(path)) from e
        raise
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")


@contextmanager
def atomic_dir(final: str | Path) -> Iterator[Path]:
    """Yield a temporary folder beside ``final``; on success fsync its files and rename it into place.

    On an exception the temporary folder is removed and ``final`` (if it existed) is untouched until the
    rename, which replaces it whole.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.tmp-", dir=final.parent))
    os.chmod(tmp, umask_mode(0o777))
    try:
        yield tmp
        for p in tmp.rglob("*"):
            if p.is_file():
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
        fsync_dir(tmp)
        if final.exists():
            old = final.with_name(f".{final.name}.old-{os.getpid()}")
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
        fsync_dir(final.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_path(path: str | Path) -> str:
    """sha256 of a file, or of a folder (its files' relative names and hashes, in order)."""
    p = Path(path)
    if p.is_file():
        return sha256_file(p)
    h = hashlib.sha256()
    for f in sorted(q for q in p.rglob("*") if q.is_file()):
        h.update(f.relative_to(p).as_posix().encode() + b"\0" + sha256_file(f).encode() + b"\n")
    return h.hexdigest()


def library_versions() -> dict[str, str]:
    out = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return out


class TornFile(UserError):
    """A file of the run directory that is not the JSON its writer wrote (cut short, or edited by hand)."""


def read_json_file(path: Path, what: str, fix: str) -> dict[str, Any]:
    """A run directory's JSON file; a torn one is a TornFile naming it, ``what`` it is and how to recover."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise TornFile(f"{path}: the {what} is torn (not valid JSON: {str(e).splitlines()[0]}); {fix}") from None
    if not isinstance(data, dict):
        raise TornFile(f"{path}: the {what} is not a JSON object; {fix}")
    return data


def load_manifest(run: RunDir) -> dict[str, Any]:
    if run.manifest.exists():
        return read_json_file(run.manifest, "manifest", "start the run directory over with --force, or restore "
                                                       "the file from a copy")
    return {}


def init_manifest(run: RunDir, name: str, task: str, seed: int) -> dict[str, Any]:
    """Create or refresh manifest.json's header (versions, seed); artifacts recorded so far stay."""
    from toolkit import __version__

    m = load_manifest(run)
    m.update({
        "schema_version": MANIFEST_SCHEMA, "run": name, "task": task, "seed": seed,
        "toolkit": __version__, "python": platform.python_version(), "libraries": library_versions(),
    })
    m.setdefault("data", {})
    m.setdefault("artifacts", [])
    m.setdefault("verification", {})
    atomic_write_json(run.manifest, m)
    return m


def update_manifest(run: RunDir, **sections: Any) -> dict[str, Any]:
    """Merge top-level sections (dicts are merged one level deep) into manifest.json, atomically."""
    m = load_manifest(run)
    for key, value in sections.items():
        if isinstance(value, dict) and isinstance(m.get(key), dict):
            m[key].update(value)
        else:
            m[key] = value
    atomic_write_json(run.manifest, m)
    return m


def record_artifact(run: RunDir, name: str, kind: str, path: str | Path, stage: str,
                    parent: str | None = None, config_hash: str = "", **extra: Any) -> dict[str, Any]:
    """Enter a finished artifact (file or folder) in the manifest, replacing one of the same name."""
    p = Path(path)
    entry = {"name": name, "kind": kind, "path": p.relative_to(run.path).as_posix() if p.is_absolute() and
             p.is_relative_to(run.path) else str(p), "sha256": sha256_path(p), "parent": parent,
             "stage": stage, "config_hash": config_hash, **extra}
    m = load_manifest(run)
    m["artifacts"] = [a for a in m.get("artifacts", []) if a.get("name") != name] + [entry]
    atomic_write_json(run.manifest, m)
    return entry


# ---- run.lock: pid + host + heartbeat ---------------------------------------------------------------

HEARTBEAT_S = 5.0
STALE_S = 30.0


def read_lock(run: RunDir) -> dict[str, Any] | None:
    try:
        return json.loads(run.lock.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def lock_is_live(info: dict[str, Any] | None, now: float | None = None) -> bool:
    """A lock is live while its heartbeat is fresh and, on this host, its process exists."""
    if not info:
        return False
    now = time.time() if now is None else now
    if now - float(info.get("heartbeat", 0)) > STALE_S:
        return False
    if info.get("host") == socket.gethostname():
        try:
            os.kill(int(info.get("pid", -1)), 0)
        except (ProcessLookupError, ValueError):
            return False
        except PermissionError:
            return True
    return True


class RunLock:
    """Holds run.lock while a process works in a run directory; a thread refreshes the heartbeat."""

    def __init__(self, run: RunDir, command: str) -> None:
        self.run, self.command = run, command
        self._stop = None
        self._thread = None

    def _write(self) -> None:
        atomic_write_json(self.run.lock, {"pid": os.getpid(), "host": socket.gethostname(),
                                          "command": self.command, "started": self._started,
                                          "heartbeat": time.time()})

    def __enter__(self) -> "RunLock":
        import threading

        if self.run.path.exists() and not self.run.path.is_dir():
            raise UserError(f"{self.run.path} is a file, not a run directory: give --out a folder (new or a run's)")
        info = read_lock(self.run)
        if lock_is_live(info) and int(info.get("pid", -1)) != os.getpid():
            raise UserError(f"{self.run.path}: a live run holds it (pid {info.get('pid')} on {info.get('host')}, "
                            f"'{info.get('command')}'); wait for it or stop it first")
        try:
            self.run.path.mkdir(parents=True, exist_ok=True)
            self._started = time.time()
            self._write()
        except PermissionError:
            raise UserError(f"{self.run.path}: cannot write there (permission denied); choose another --out or "
                            f"make the folder writable") from None
        self._stop = threading.Event()

        def beat() -> None:
            while not self._stop.wait(HEARTBEAT_S):
                try:
                    self._write()
                except OSError:
                    continue

        self._thread = threading.Thread(target=beat, name="run.lock heartbeat", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join(timeout=2)
        self.run.lock.unlink(missing_ok=True)


def quiet_onnxruntime() -> None:
    """ONNX Runtime logs a warning per unused initializer when it loads an exported graph (harmless graph
    clean-up); at warning level these flood the terminal display. Errors still show. torch.export's pytree
    FutureWarning about LeafSpec (raised inside ExecuTorch lowering, not our code) is silenced likewise."""
    import warnings

    import onnxruntime

    warnings.filterwarnings("ignore", message=".*LeafSpec.*", category=FutureWarning)
    onnxruntime.set_default_logger_severity(3)
