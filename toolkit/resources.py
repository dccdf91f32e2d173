"""Packaged recipes and target profiles, found through importlib.resources (clone and wheel alike)."""
from __future__ import annotations

import importlib.resources
from pathlib import Path


def _folder(package: str, fallback: str) -> Path:
    try:
        return Path(str(importlib.resources.files(package)))
    except ModuleNotFoundError:
        # Running from a source tree that was never installed: the folder beside the package.
        return Path(__file__).resolve().parent.parent / fallback


def recipes_dir() -> Path:
    """The folder of the packaged recipes (recipes/ in the repository)."""
    return _folder("toolkit.recipes", "recipes")


def targets_dir() -> Path:
    """The folder of the packaged device profiles (targets/ in the repository)."""
    return _folder("toolkit.target_profiles", "targets")


def packaged_recipes() -> dict[str, Path]:
    """Packaged recipes by name (file stem)."""
    return {p.stem: p for p in sorted(recipes_dir().glob("*.toml"))}


def demo_recipe() -> Path:
    return recipes_dir() / "demo.toml"
