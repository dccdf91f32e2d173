"""Reading every supported format, and every broken input as a one-line UserError naming file and line."""
from __future__ import annotations

from pathlib import Path

import pytest

from toolkit.config import load_recipe
from toolkit.data import load_splits
from toolkit.errors import UserError


def read_all(make_recipe, path, **kw):
    """All rows of ``path`` as read (the same file as train, validation and eval: nothing is carved)."""
    paths = {k: path for k in ("train", "validation", "eval")}
    return load_splits(make_recipe(**paths, **kw))


def user_error(recipe) -> str:
    with pytest.raises(UserError) as info:
        load_splits(recipe)
    message = str(info.value)
    assert "\n" not in message, "a user error is one line"
    return message


# ---- formats -----------------------------------------------------------------------------------------------

def test_csv_with_header_reads_quotes_and_group(make_recipe, data_dir):
    s = read_all(make_recipe, data_dir / "reviews.csv", group_column="lang")
    assert s.train == [
        {"text": "A great, warm film", "label": "pos", "group": "en"},
        {"text": "dull and slow", "label": "neg", "group": "en"},
        {"text": 'She said "wow"', "label": "pos", "group": "fr"},
        {"text": "<b>boring</b> &amp; long", "label": "neg", "group": "fr"},
    ]
    assert s.labels == ["neg", "pos"]
    assert s.sources == {k: str(data_dir / "reviews.csv") for k in ("train", "validation", "eval")}


def test_csv_without_header_defaults_to_first_and_last_column(make_recipe, data_dir):
    s = read_all(make_recipe, data_dir / "reviews_noheader.csv")  # header = "auto", text/label at their defaults
    assert s.train == [{"text": "A great film", "label": "pos"}, {"text": "dull and slow", "label": "neg"},
                       {"text": "loved it", "label": "pos"}]


def test_csv_without_header_by_position(make_recipe, data_dir):
    s = read_all(make_recipe, data_dir / "reviews_noheader.csv", header=False, text_column="0", label_column="1")
    assert [e["label"] for e in s.train] == ["2017", "2018", "2019"]
    assert s.labels == ["2017", "2018", "2019"]


def test_tsv_is_read_literally(make_recipe, data_dir):
    s = read_all(make_recipe, data_dir / "reviews.tsv", text_column="sentence")
    assert s.train[0] == {"text": "it 's \"fine\" really", "label": "1"}  # quotes stay part of the text
    assert len(s.train) == 3 and s.labels == ["0", "1"]


def test_jsonl_numbers_become_label_strings_and_blank_lines_are_skipped(make_recipe, data_dir):
    s = read_all(make_recipe, data_dir / "reviews.jsonl", group_column="group")
    assert s.train == [{"text": "good one", "label": "1", "group": "a"}, {"text": "bad one", "label": "0", "group": "b"},
                       {"text": "fine", "label": "1", "group": "a"}]


def test_txt_for_language_modelling_is_one_example_per_non_empty_line(make_recipe, data_dir):
    s = read_all(make_recipe, data_dir / "play.txt", task="language-modeling")
    assert s.train == [{"text": "First line of the play."}, {"text": "  Second line."}, {"text": "Third line"}]
    assert s.labels == []


def test_parallel_files_for_seq2seq(make_recipe, data_dir):
    pair = (data_dir / "pairs.en", data_dir / "pairs.de")
    s = load_splits(make_recipe(task="seq2seq", train=pair, validation=pair, eval=pair))
    assert s.train[1] == {"source": "Two cats sleep.", "target": "Zwei Katzen schlafen."}
    assert len(s.eval) == 3
    assert s.sources["train"] == f"{data_dir / 'pairs.en'} + {data_dir / 'pairs.de'}"


def test_seq2seq_from_named_columns(make_recipe, data_dir):
    s = read_all(make_recipe, data_dir / "pairs.tsv", task="seq2seq", source_column="en", target_column="de")
    assert s.train == [{"source": "A dog runs.", "target": "Ein Hund rennt."},
                       {"source": "Two cats.", "target": "Zwei Katzen."}]


def test_paths_resolve_against_the_recipe_folder(data_dir):
    recipe = load_recipe(data_dir / "relative.toml")
    s = load_splits(recipe)
    assert s.sources["train"] == str(data_dir / "reviews.csv")
    assert len(s.train) == 4


def test_limit_keeps_the_first_rows(make_recipe, data_dir):
    s = read_all(make_recipe, data_dir / "reviews.csv", limit=2)
    assert [e["text"] for e in s.train] == ["A great, warm film", "dull and slow"]
    assert any("data.limit = 2: kept the first 2 of 4" in n for n in s.notes)


# ---- broken inputs: one line naming the file and what to do ----------------------------------------------

def test_missing_file_is_named_relative_to_the_recipe(data_dir):
    recipe = load_recipe(data_dir / "missing_train.toml")
    with pytest.raises(UserError, match="no such file; check data.train in the recipe") as info:
        load_splits(recipe)
    assert str(data_dir / "no_such_file.tsv") in str(info.value)


@pytest.mark.parametrize("name, kw, expected", [
    ("empty.csv", {}, "empty.csv: the file is empty; check data.train"),
    ("header_only.csv", {}, "header_only.csv: only a header, no data rows"),
    ("other_columns.csv", {"text_column": "review"},
     "other_columns.csv: no column 'label'; the columns are 'review', 'stars'; set data.label_column to one of them"),
    ("reviews_noheader.csv", {"text_column": "sentence"},
     "reviews_noheader.csv: no column 'sentence': the file has no header, so its columns are named by position 0..2"),
    ("not_utf8.tsv", {}, "not_utf8.tsv: line 7 is not valid UTF-8; save the file as UTF-8"),
    ("bad_json.jsonl", {}, "bad_json.jsonl: line 3 is not JSON"),
    ("not_object.jsonl", {}, "not_object.jsonl: line 2 is a JSON list, expected an object"),
    ("missing_key.jsonl", {}, "missing_key.jsonl: line 2 has no 'label' (it has text)"),
    ("ragged.csv", {}, "ragged.csv: line 3 has 3 columns but the header has 2"),
    ("table.xlsx", {}, "table.xlsx: unknown data format '.xlsx'; use .csv, .tsv, .jsonl or .txt"),
    ("play.txt", {}, "play.txt: a .txt file is plain text for language modelling"),
])
def test_bad_file(make_recipe, data_dir, name, kw, expected):
    message = user_error(make_recipe(train=data_dir / name, **kw))
    assert expected in message
    assert message.startswith(str(data_dir / name))


def test_unknown_label_in_eval_names_file_line_and_known_labels(make_recipe, data_dir):
    recipe = make_recipe(train=data_dir / "reviews.csv", eval=data_dir / "eval_unknown_label.csv")
    assert user_error(recipe) == (f"{data_dir / 'eval_unknown_label.csv'}: unknown label 'meh' in eval data (line 4); "
                                  "the training data's labels are: neg, pos")


def test_parallel_files_of_different_lengths(make_recipe, data_dir):
    message = user_error(make_recipe(task="seq2seq", train=(data_dir / "misaligned.en", data_dir / "misaligned.de")))
    assert message.startswith(f"{data_dir / 'misaligned.en'} has 4 lines but {data_dir / 'misaligned.de'} has 2")
    assert "must be line-aligned" in message


def test_a_file_pair_needs_the_seq2seq_task(make_recipe, data_dir):
    message = user_error(make_recipe(train=(data_dir / "pairs.en", data_dir / "pairs.de")))
    assert "a pair of line-aligned files is for the seq2seq task" in message


def test_unknown_builtin_lists_the_known_ones(make_recipe):
    message = user_error(make_recipe(task="image-classification", train="builtin:mnist"))
    assert message == "data.train = 'builtin:mnist': no such built-in data set; known: builtin:digits"


def test_builtin_for_the_wrong_task(make_recipe):
    assert "is a set of labelled images" in user_error(make_recipe(train="builtin:digits"))


def test_single_class_training_data(make_recipe, tmp_path: Path):
    (tmp_path / "one.csv").write_text("text,label\na,x\nb,x\n", encoding="utf-8")
    assert "classification needs at least two classes" in user_error(make_recipe(train=tmp_path / "one.csv"))


# ---- details -----------------------------------------------------------------------------------------------

def test_bom_and_crlf_line_ends(make_recipe, tmp_path: Path):
    path = tmp_path / "win.tsv"
    path.write_bytes("\ufefftext\tlabel\r\nfirst\tpos\r\nsecond\tneg\r\n".encode("utf-8"))
    s = read_all(make_recipe, path)
    assert s.train == [{"text": "first", "label": "pos"}, {"text": "second", "label": "neg"}]


def test_rows_with_an_empty_field_are_dropped_and_counted(make_recipe, tmp_path: Path):
    path = tmp_path / "gaps.csv"
    path.write_text("text,label\ngood,pos\n  ,neg\nbad,\nfine,neg\n", encoding="utf-8")
    s = read_all(make_recipe, path)
    assert [e["text"] for e in s.train] == ["good", "fine"]
    assert f"{path}: dropped 2 train rows with an empty field" in s.notes


def test_a_header_that_names_no_configured_column_is_flagged(make_recipe, data_dir):
    # header = "auto" finds neither "text" nor "label" in the first row, so it reads it as data: say so
    s = read_all(make_recipe, data_dir / "unnamed_header.csv")
    assert s.train[0] == {"text": "review", "label": "sentiment"}
    assert any("no header detected, but the first row's label 'sentiment' occurs nowhere else" in n for n in s.notes)
    fixed = read_all(make_recipe, data_dir / "unnamed_header.csv", text_column="review", label_column="sentiment")
    assert fixed.labels == ["neg", "pos"] and len(fixed.train) == 12


def test_only_newlines_end_lines(make_recipe, tmp_path: Path):
    """U+2028 and form feeds are characters inside a line, not line ends (str.splitlines would split there)."""
    (tmp_path / "a.en").write_text("one\u2028still one\nform\x0cfeed\n", encoding="utf-8")
    (tmp_path / "a.de").write_text("eins\nzwei\n", encoding="utf-8")
    pair = (tmp_path / "a.en", tmp_path / "a.de")
    s = load_splits(make_recipe(task="seq2seq", train=pair, validation=pair, eval=pair))
    assert [e["source"] for e in s.train] == ["one\u2028still one", "form\x0cfeed"]
    (tmp_path / "j.jsonl").write_text('{"text": "a\u2028b", "label": "x"}\n{"text": "c", "label": "y"}\n', encoding="utf-8")
    assert read_all(make_recipe, tmp_path / "j.jsonl").train[0]["text"] == "a\u2028b"
