"""Checkpoints that make a crash cost nothing.

A checkpoint is a folder ``step-NNNNNN/`` holding the model, optimizer, scheduler and scaler state, the
loop's position (step, epoch, batch inside the epoch), every RNG state (python, numpy, torch, cuda) and a
sha256 per file. It is written into a temporary folder, fsynced and renamed into place, so a SIGKILL while
writing leaves the previous checkpoint as the newest complete one. Everything loads with
``torch.load(..., weights_only=True)``: a checkpoint can carry tensors and plain data, never code.

Under DDP, rank 0 writes the checkpoint with every rank's RNG state (``rng_ranks``, one per rank, and the
``world_size``); each rank restores its own, so a resumed job needs the same number of processes. A LoRA
model's checkpoint holds only what trains (adapters, the task head) and the buffers: the frozen base is
referenced by path and sha256 in the manifest, not copied into every checkpoint.
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


def step_dir(folder: Path, step: int) -> Path:
    return Path(folder) / f"step-{step:06d}"


def trains_partially(model: torch.nn.Module) -> bool:
    """A peft (LoRA) model: only its adapters and saved modules train, the base stays as loaded."""
    return hasattr(model, "peft_config") and any(not p.requires_grad for p in model.parameters())


def model_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """What a checkpoint keeps of the model: everything, or for a LoRA model the trainable parameters and
    the buffers (the frozen base is rebuilt from its source on resume)."""
    state = model.state_dict()
    if not trains_partially(model):
        return state
    keep = {n for n, p in model.named_parameters() if p.requires_grad} | {n for n, _ in model.named_buffers()}
    return {k: v for k, v in state.items() if k in keep}


def load_model_state(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load a full or a LoRA checkpoint's model state. Raises UserError when it does not fit the model."""
    if not trains_partially(model):
        try:
            model.load_state_dict(state)
        except RuntimeError as e:
            raise UserError(f"{path}: does not fit this model ({str(e).splitlines()[0][:160]}); "
                            f"use --force to start over") from None
        return
    missing, unexpected = model.load_state_dict(state, strict=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    if unexpected or trainable & set(missing):
        raise UserError(f"{path}: does not fit this LoRA model (unexpected {sorted(unexpected)[:3]}, missing "
                        f"{sorted(trainable & set(missing))[:3]}); undo the change to [train.lora] or use --force")


def save_checkpoint(folder: Path, step: int, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    extra: dict[str, Any], keep: int, rng_ranks: list[dict[str, Any]] | None = None) -> Path:
    """Write ``step-NNNNNN`` atomically, then prune to the newest ``keep`` checkpoints.

    ``rng_ranks``: every rank's :func:`capture_rng` under DDP (default: this process's alone).
    """
    final = step_dir(folder, step)
    rng_ranks = rng_ranks if rng_ranks is not None else [capture_rng()]
    with atomic_dir(final) as tmp:
        torch.save(model_state(model), tmp / "model.pt")
        torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
        torch.save({**extra, "rng": rng_ranks[0], "rng_ranks": rng_ranks, "world_size": len(rng_ranks)},
                   tmp / "state.pt")
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
    load_model_state(model, safe_load(ckpt.path / "model.pt"), ckpt.path / "model.pt")
    optimizer.load_state_dict(safe_load(ckpt.path / "optimizer.pt"))
    return safe_load(ckpt.path / "state.pt")


def check_world_size(folder: Path, world: int) -> None:
    """Before any work: the newest checkpoint must come from ``world`` processes (UserError otherwise)."""
    for ckpt in reversed(list_checkpoints(folder)):
        try:
            extra = safe_load(ckpt.path / "state.pt")
        except (UserError, FileNotFoundError):
            continue  # a broken checkpoint: the loop falls back past it (and says so)
        rng_of_rank(extra, 0, world, ckpt.path)
        return


def rng_of_rank(extra: dict[str, Any], rank: int, world: int, path: Path) -> dict[str, Any]:
    """This rank's RNG state from a checkpoint's extra state. Raises UserError when the checkpoint was made
    by another number of processes (each rank's data shard and RNG stream depend on it)."""
    saved = int(extra.get("world_size", 1))
    if saved != world:
        how = "without --nproc" if saved == 1 else f"with --nproc {saved}"
        raise UserError(f"{path}: saved by {saved} process(es), this run has {world}; resume {how} "
                        f"(or use --force to start over)")
    return extra.get("rng_ranks", [extra["rng"]])[rank]
