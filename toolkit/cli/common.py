"""Arguments and helpers shared by the commands that work on a recipe and a run directory."""
from __future__ import annotations

import argparse
from pathlib import Path

from toolkit.config import Recipe, load_recipe
from toolkit.resources import demo_recipe


def add_recipe_arguments(p: argparse.ArgumentParser, optional: bool = False) -> None:
    if optional:
        p.add_argument("recipe", nargs="?", help="recipe TOML file (default: the packaged demo)")
    else:
        p.add_argument("recipe", help="recipe TOML file")
    p.add_argument("--out", metavar="RUN_DIR", help="run directory (default: runs/<recipe name>)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe key, e.g. --set train.lr=3e-4 (repeatable)")
    p.add_argument("--force", action="store_true", help="start over: clear the run directory first")
    p.add_argument("--quiet", action="store_true", help="print only the result")


def resolve_recipe(args: argparse.Namespace) -> Recipe:
    path = args.recipe or str(demo_recipe())
    return load_recipe(path, args.overrides)


def run_dir_for(args: argparse.Namespace, recipe: Recipe) -> Path:
    return Path(args.out) if args.out else Path("runs") / recipe.name
