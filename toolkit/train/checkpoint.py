"""Checkpoints that make a crash cost nothing.

A checkpoint is a folder ``step-NNNNNN/`` holding the model, optimizer, scheduler and scaler state, the
loop's position (step, epoch, batch inside the epoch), every RNG state (python, numpy, torch, cuda) and a
sha256 per file. It is written into a temporary folder, fsynced and renamed into place, so a SIGKILL while
writing leaves the previous checkpoint as the newest complete one. Everything loads with
``torch.load(..., weights_only=True)``: a checkpoint can carry tensors and plain data, never code.
"""
from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from toolkit.errors import UserError
from toolkit.rundir import atomic_dir, sha256_file

STEP_DIR = re.compile(r"^step-(\d{6,})$")
FILES = ("model.pt", "optimizer.pt", "state.pt")


def capture_rng() -> dict[str, Any]:
    """Every RNG state the loop touches, as tensors and plain data (weights_only-loadable)."""
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss = random.getstate()
    return {
        "python": {"version": version, "state": list(internal), "gauss": gauss},
        "numpy": {"kind": kind, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def restore_rng(state: dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["cached"]))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


@dataclass
class Checkpoint:
    path: Path
    step: int


def list_checkpoints(folder: Path) -> list[Checkpoint]:
    """Complete-looking checkpoint folders, oldest first (temporary folders are ignored)."""
    if not folder.is_dir():
        return []
    found = [Checkpoint(p, int(m.group(1))) for p in folder.iterdir()
             if p.is_dir() and (m := STEP_DIR.match(p.name))]
    return sorted(found, key=lambda c: c.step)


def save_checkpoint(folder: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict[str, Any], keep: int) -> Path:
    """Write ``step-NNNNNN`` atomically, then prune to the newest ``keep`` checkpoints."""
    final = folder / f"step-{step:06d}"
    with atomic_dir(final) as tmp:
        torch.save(model.state_dict(), tmp / "model.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({**extra, "rng": capture_rng()}, tmp / "state.pt")
        sums = {name: sha256_file(tmp / name) for name in FILES}
        (tmp / "checksums.json").write_text(json.dumps({"step": step, "sha256": sums}, indent=1))
    for old in list_checkpoints(folder)[:-keep]:
        shutil.rmtree(old.path, ignore_errors=True)
    return final


def clean_partial(folder: Path) -> list[Path]:
    """Remove temporary folders a killed writer left behind; returns what was removed."""
    removed = []
    if folder.is_dir():
        for p in folder.iterdir():
            if p.name.startswith(".") and p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
                removed.append(p)
    return removed


def check_checkpoint(ckpt: Checkpoint) -> str | None:
    """None if every file is present and matches its checksum; else why not."""
    sums_file = ckpt.path / "checksums.json"
    if not sums_file.exists():
        return "no checksums.json (an incomplete write)"
    try:
        sums = json.loads(sums_file.read_text())["sha256"]
    except (json.JSONDecodeError, KeyError):
        return "checksums.json is unreadable"
    for name in FILES:
        f = ckpt.path / name
        if not f.exists():
            return f"{name} is missing"
        if sha256_file(f) != sums.get(name):
            return f"{name} does not match its checksum (truncated or modified)"
    return None


def safe_load(path: Path) -> Any:
    """torch.load with weights_only=True; a file that needs code to unpickle is refused (UserError)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else "unsafe pickle"
        raise UserError(f"{path}: refused to load: it holds more than tensors and plain data ({first[:160]}); "
                        f"only load checkpoints you wrote") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise UserError(f"{path}: unreadable checkpoint file ({type(e).__name__}: {str(e)[:120]})") from None


def newest_valid(folder: Path, warn: Callable[[str], None]) -> Checkpoint | None:
    """The newest checkpoint whose files all check out; each broken newer one is named in a warning."""
    for ckpt in reversed(list_checkpoints(folder)):
        problem = check_checkpoint(ckpt)
        if problem is None:
            return ckpt
        warn(f"checkpoint {ckpt.path} is unusable ({problem}); trying the previous one")
    return None


def load_checkpoint(ckpt: Checkpoint, model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """Load model and optimizer state in place; returns the extra state (RNG not yet restored)."""
    model.load_state_dict(safe_load(ckpt.path / "model.pt"))
    optimizer.load_state_dict(safe_load(ckpt.path / "optimizer.pt"))
    return safe_load(ckpt.path / "state.pt")
