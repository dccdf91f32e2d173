"""model.source: built-in names, folders that are not models, and what the error says."""
from __future__ import annotations

import re

import pytest

from toolkit.config import Recipe
from toolkit.data.types import Splits
from toolkit.errors import UserError
from toolkit.models import check_model_dir, load_tokenizer, resolve_source
from toolkit.models.builtin import dims
from toolkit.tasks import get_task

NOT_MODELS = {
    "readme_only": "has no config.json: point model.source at a folder written by save_pretrained",
    "broken_config": r"config.json does not load \(not valid JSON: ",
    "unknown_model_type": r"config.json does not load \(model_type 'no-such-architecture' is unknown to transformers",
    "no_weights": r"has no weights \(model.safetensors or pytorch_model.bin\)",
}


@pytest.mark.parametrize("name", sorted(NOT_MODELS))
def test_a_folder_that_is_not_a_model_is_a_one_line_user_error(name, fixtures):
    folder = fixtures / "models" / name
    with pytest.raises(UserError, match=NOT_MODELS[name]) as err:
        check_model_dir(folder)
    assert str(folder) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(NOT_MODELS))
def test_prepare_refuses_a_non_model_folder(name, fixtures, tmp_path):
    folder = fixtures / "models" / name
    r = Recipe(task="text-classification")
    r.model.source = str(folder)
    splits = Splits(train=[{"text": "a", "label": "x"}, {"text": "b", "label": "y"}], validation=[], eval=[],
                    labels=["x", "y"])
    with pytest.raises(UserError, match=re.escape(str(folder))):
        get_task("text-classification").prepare(r, splits, tmp_path)


def test_missing_folder_and_plain_file(tmp_path):
    with pytest.raises(UserError, match=re.escape(f"{tmp_path / 'nope'}: no such folder")):
        check_model_dir(tmp_path / "nope")
    (tmp_path / "weights.bin").write_bytes(b"\0")
    with pytest.raises(UserError, match="is a file, not a model folder"):
        check_model_dir(tmp_path / "weights.bin")


def test_a_model_folder_without_a_tokenizer(fixtures, tmp_path):
    with pytest.raises(UserError, match=re.escape(f"{fixtures / 'models' / 'readme_only'} has no tokenizer files")):
        load_tokenizer(fixtures / "models" / "readme_only")


def test_builtin_names_and_defaults():
    r = Recipe(task="seq2seq")
    assert str(resolve_source(r)) == "builtin:bart-tiny"
    r.model.source = "builtin:bart-tiny"
    assert resolve_source(r).kind == "builtin"
    r.model.source = "builtin:bart-tiyn"
    with pytest.raises(UserError, match="did you mean 'bart-tiny'"):
        resolve_source(r)
    r.model.source = "builtin:bert-tiny"
    with pytest.raises(UserError, match="is a text-classification model; for task 'seq2seq' use builtin:bart-tiny"):
        resolve_source(r)
    for task, name in [("text-classification", "bert-tiny"), ("language-modeling", "gpt2-tiny"),
                       ("image-classification", "cnn-small")]:
        assert resolve_source(Recipe(task=task)).name == name


def test_relative_folders_resolve_against_the_recipe(tmp_path):
    r = Recipe(task="text-classification", source_path=str(tmp_path / "recipes" / "r.toml"))
    r.model.source = "../models/minilm"
    src = resolve_source(r)
    assert src.kind == "dir" and src.path == tmp_path / "recipes" / ".." / "models" / "minilm"
    r.model.source = "model.onnx"
    with pytest.raises(UserError, match="an .onnx file has no PyTorch weights"):
        resolve_source(r)


def test_size_overrides_and_head_check():
    r = Recipe(task="text-classification")
    assert dims(r, "bert-tiny") == (128, 2, 2)
    r.model.hidden_size = 256
    assert dims(r, "bert-tiny") == (256, 2, 4)  # heads follow the width: hidden / 64
    r.model.hidden_size, r.model.heads = 100, 3
    with pytest.raises(UserError, match="model.hidden_size = 100 is not divisible by model.heads = 3"):
        dims(r, "bert-tiny")
