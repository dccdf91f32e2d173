"""Recipes: loading, typed overrides, and one-line errors that name the file and key."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from toolkit.config import Recipe, dumps_toml, fields_of, load_recipe, parse_override, recipe_from_dict
from toolkit.errors import UserError
from toolkit.resources import packaged_recipes

FIX = Path(__file__).parent / "fixtures" / "recipes"


def test_defaults_and_docs_everywhere():
    import dataclasses

    def walk(cls):
        for name, f in fields_of(cls).items():
            assert f.metadata.get("doc"), f"{cls.__name__}.{name} has no doc string"
            assert f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
            if dataclasses.is_dataclass(f.type if not isinstance(f.type, str) else None):
                walk(f.type)
    walk(Recipe)
    r = Recipe()
    assert r.train.lr > 0 and r.data.split == [0.7, 0.2, 0.1]


def test_load_ok_and_overrides_are_typed():
    r = load_recipe(FIX / "ok.toml", ["train.lr=3e-4", "train.epochs=5", "train.precision=bf16",
                                      "data.clean=[\"html\", \"pii\"]", "train.deterministic=true", "seed=7"])
    assert r.train.lr == pytest.approx(3e-4) and isinstance(r.train.epochs, float) and r.train.epochs == 5.0
    assert r.train.precision == "bf16" and r.data.clean == ["html", "pii"] and r.train.deterministic is True
    assert r.seed == 7 and r.name == "ok"
    # relative paths resolve against the recipe's folder
    assert r.resolve_path("a.tsv") == FIX / "a.tsv"


def test_override_string_field_keeps_text():
    r = recipe_from_dict({"name": "x", "task": "seq2seq"}, "x.toml", ["model.source=123"])
    assert r.model.source == "123"


def test_resolved_recipe_round_trips():
    r = load_recipe(FIX / "ok.toml", ["train.lr=0.002"])
    import tomllib

    again = recipe_from_dict(tomllib.loads(dumps_toml(r)), "again.toml")
    assert again == r


@pytest.mark.parametrize("fixture, expected", [
    ("malformed.toml", "not valid TOML"),
    ("unknown_key.toml", "unknown key 'learning_rte' in [train]; did you mean 'lr'?"),
    ("wrong_type.toml", "train.epochs = \"three\": expected a number"),
    ("negative_lr.toml", "train.lr = -1.0: must be a positive number"),
    ("zero_batch.toml", "train.batch_size = 0: must be at least 1"),
    ("bad_split.toml", "data.split = [0.7, 0.2, 0.2]: must be three non-negative fractions"),
    ("unknown_task.toml", "did you mean 'image-classification'?"),
])
def test_bad_recipes_name_file_and_key(fixture, expected):
    with pytest.raises(UserError) as e:
        load_recipe(FIX / fixture)
    msg = str(e.value)
    assert expected in msg and fixture in msg and "\n" not in msg


def test_bad_override():
    with pytest.raises(UserError, match="unknown key 'lrr' in \\[train\\]; did you mean 'lr'"):
        load_recipe(FIX / "ok.toml", ["train.lrr=1"])
    with pytest.raises(UserError, match="expected key=value"):
        load_recipe(FIX / "ok.toml", ["train.lr"])
    with pytest.raises(UserError, match="train.batch_size = \"big\": expected an integer"):
        load_recipe(FIX / "ok.toml", ["train.batch_size=big"])


def test_parse_override_values():
    assert parse_override("a.b=1") == (["a", "b"], 1)
    assert parse_override("a=bf16") == (["a"], "bf16")
    assert parse_override("a=[1, 2]") == (["a"], [1, 2])


@pytest.mark.parametrize("name", sorted(packaged_recipes()))
def test_packaged_recipes_load(name):
    r = load_recipe(packaged_recipes()[name])
    assert r.name and r.task


@pytest.mark.parametrize("fixture", ["malformed.toml", "unknown_key.toml", "negative_lr.toml"])
def test_cli_bad_recipe_exits_2_with_one_line(fixture, tmp_path):
    p = subprocess.run([sys.executable, "-m", "toolkit", "train", str(FIX / fixture), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fixture in lines[0]
    assert "Traceback" not in p.stderr
    assert not (tmp_path / "r").exists()


def test_missing_recipe_file(tmp_path):
    p = subprocess.run([sys.executable, "-m", "toolkit", "train", str(tmp_path / "nope.toml")],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "no such recipe file" in p.stderr


def test_package_list_covers_every_subpackage():
    """Wheels only ship packages listed in pyproject.toml: every toolkit/ folder with code must be there."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    for init in (root / "toolkit").rglob("__init__.py"):
        pkg = ".".join(init.parent.relative_to(root).parts)
        assert pkg in listed, f"{pkg} is missing from [tool.setuptools] packages"


def test_core_imports_without_textual():
    code = ("import sys; sys.modules['textual'] = None\n"
            "import toolkit, toolkit.config, toolkit.rundir, toolkit.train.loop, toolkit.__main__\n"
            "print('ok')")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


def test_readme_recipe_reference_is_current():
    """The README's recipe reference is generated from the dataclasses; regenerate it when a key changes."""
    from toolkit.config import reference_markdown

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert reference_markdown().strip() in readme
