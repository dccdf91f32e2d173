"""Reading data files into rows of named columns, and rows into a task's examples.

Formats, by extension:
- ``.csv``: comma-separated with the usual double-quote quoting.
- ``.tsv``: tab-separated, read literally: quotes are part of the text (as in GLUE's and AG News' files, where a
  quote-aware reader would glue lines together).
- ``.jsonl``: one JSON object a line; its keys are the columns.
- ``.txt``: plain text for language modelling, one example per non-empty line ({"text": line}); the task later
  concatenates the lines and cuts blocks, so where a line ends matters little.
- two line-aligned files ``[source, target]`` (any extensions) for seq2seq.

csv/tsv may have a header or not (``data.header``). Without one the columns are named by position "0", "1", …; a
configured column left at its default name ("text", "label", "source", "target") then means the first column
(text/source) or the last one (label/target). A position is accepted as a column name in any case.

Every problem is a ``UserError`` with one line naming the file, the line and what to do.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from toolkit.data.types import Example
from toolkit.errors import UserError

TABLE_FORMATS = (".csv", ".tsv", ".jsonl")
TEXT_FORMATS = TABLE_FORMATS + (".txt",)
# Column defaults that, absent from a headerless file, fall back to a position: field -> (default name, index).
POSITIONAL_DEFAULTS = {"text": ("text", 0), "source": ("source", 0), "label": ("label", -1), "target": ("target", -1)}


@dataclass
class Part:
    """Examples read from one source, with where each came from (for error messages after cleaning)."""

    examples: list[Example]
    where: list[str]
    """per example: "line N" or a file name inside an image folder"""
    path: str
    """the file (or files, joined with ' + ') as the user named it, for messages and Splits.sources"""
    notes: list[str] = field(default_factory=list)


@dataclass
class Table:
    """Rows of one csv/tsv/jsonl file: column names, values and 1-based line numbers."""

    columns: list[str]
    rows: list[list[str]]
    lines: list[int]
    has_header: bool


def missing_file(path: Path, key: str, what: str = "file") -> UserError:
    """The error for a data path that does not exist."""
    return UserError(f"{path}: no such {what}; check {key} in the recipe")


def read_text(path: Path, key: str) -> str:
    """The file's text, checked to be UTF-8 (a leading BOM is dropped) and not empty.

    Raises:
        UserError: missing file, a folder, a non-UTF-8 line (its 1-based number) or an empty file.
    """
    if not path.exists():
        raise missing_file(path, key)
    if path.is_dir():
        raise UserError(f"{path}: is a folder, expected a file; check {key} in the recipe")
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        raise UserError(f"{path}: line {line} is not valid UTF-8; save the file as UTF-8") from None
    text = text.removeprefix("\ufeff")
    if not text.strip():
        raise UserError(f"{path}: the file is empty; check {key} in the recipe")
    return text


def split_lines(text: str) -> list[str]:
    """Lines ended by LF or CR LF. Not str.splitlines(): it also breaks at form feeds, U+2028 and others, which
    may sit inside a line (and inside a JSON string), and would shift line numbers and the alignment of paired
    files."""
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def read_lines(path: Path, key: str) -> list[str]:
    """All lines of a text file (blank ones included, so two files stay aligned), without line ends."""
    return split_lines(read_text(path, key))


def read_table(path: Path, key: str, header: bool | str, names: list[str]) -> Table:
    """A csv/tsv/jsonl file as a Table.

    Args:
        header: csv/tsv only: True, False or "auto" (a header when the first row holds one of ``names``).
        names: the configured column names the task needs, for header detection.
    """
    text = read_text(path, key)
    if path.suffix.lower() == ".jsonl":
        return _read_jsonl(path, text)
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows: list[list[str]] = []
    lines: list[int] = []
    last = 0
    try:
        for row in reader:
            start, last = last + 1, reader.line_num
            if not row or all(not v.strip() for v in row):
                continue  # blank lines separate nothing in a table
            rows.append(row)
            lines.append(start)
    except csv.Error as e:
        raise UserError(f"{path}: line {reader.line_num}: {e}; check the quoting") from None
    if not rows:
        raise UserError(f"{path}: the file is empty; check {key} in the recipe")
    first = [v.strip() for v in rows[0]]
    # Positions ("0", "1") are not header names: a headerless row can hold them as values (a label "0").
    wanted = {n for n in names if n and not n.isdigit()}
    has_header = header is True or (header == "auto" and bool(wanted & set(first)))
    if has_header:
        columns, rows, lines = first, rows[1:], lines[1:]
        if not rows:
            raise UserError(f"{path}: only a header, no data rows; check {key} in the recipe")
    else:
        columns = [str(i) for i in range(len(rows[0]))]
    for row, line in zip(rows, lines):
        if len(row) != len(columns):
            what = "the header has" if has_header else "the first row has"
            sep = "tabs" if delimiter == "\t" else "commas and quotes"
            raise UserError(f"{path}: line {line} has {len(row)} columns but {what} {len(columns)}; check the {sep} on that line")
    return Table(columns, rows, lines, has_header)


def _read_jsonl(path: Path, text: str) -> Table:
    objects: list[dict[str, Any]] = []
    lines: list[int] = []
    for number, line in enumerate(split_lines(text), 1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{path}: line {number} is not JSON ({e.msg}); write one JSON object per line") from None
        if not isinstance(obj, dict):
            raise UserError(f"{path}: line {number} is a JSON {type(obj).__name__}, expected an object like {{\"text\": ..., \"label\": ...}}")
        objects.append(obj)
        lines.append(number)
    columns: list[str] = []
    for obj in objects:
        columns += [k for k in obj if k not in columns]
    rows = []
    for obj, number in zip(objects, lines):
        rows.append([_json_cell(path, number, k, obj[k]) if k in obj else None for k in columns])
    return Table(columns, rows, lines, has_header=True)  # type: ignore[arg-type]  # None marks a missing key


def _json_cell(path: Path, line: int, key: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (str, int, float)):
        return str(value)
    raise UserError(f"{path}: line {line}: '{key}' holds a JSON {type(value).__name__}, expected text or a number")


def column_index(table: Table, path: Path, field_name: str, configured: str, key: str) -> int:
    """The index of the column configured for ``field_name`` (e.g. "text" <- data.text_column).

    Raises:
        UserError: the column does not exist; the message lists the columns that do.
    """
    if configured in table.columns:
        return table.columns.index(configured)
    if configured.isdigit() and int(configured) < len(table.columns):
        return int(configured)
    default, position = POSITIONAL_DEFAULTS.get(field_name, (None, 0))
    if not table.has_header and configured == default:
        return position % len(table.columns)
    if table.has_header:
        have = ", ".join(f"'{c}'" for c in table.columns)
        raise UserError(f"{path}: no column '{configured}'; the columns are {have}; set {key} to one of them")
    raise UserError(f"{path}: no column '{configured}': the file has no header, so its columns are named by "
                    f"position 0..{len(table.columns) - 1}; set {key} to a position, e.g. \"0\"")


def table_part(table: Table, path: Path, shown: str, fields: dict[str, tuple[str, str]], split: str) -> Part:
    """Examples from a table: ``fields`` maps an example field to (configured column, recipe key).

    A row missing a field (an empty cell, a JSON null or key) is dropped and counted in the notes.
    """
    index = {f: column_index(table, path, f, col, key) for f, (col, key) in fields.items()}
    if len(set(index.values())) < len(index):
        taken = ", ".join(f"{f} = column {i}" for f, i in index.items())
        raise UserError(f"{path}: two fields read the same column ({taken}); set the data.*_column keys to different columns")
    part = Part([], [], shown)
    dropped = 0
    for row, line in zip(table.rows, table.lines):
        example = {}
        for f, i in index.items():
            value = row[i]
            if value is None:
                have = ", ".join(c for c, v in zip(table.columns, row) if v is not None)
                raise UserError(f"{path}: line {line} has no '{table.columns[i]}' (it has {have}); add it or set {fields[f][1]}")
            example[f] = value.strip() if f in ("label", "group") else value
        if any(not example[f].strip() for f in index if f != "group"):
            dropped += 1
            continue
        part.examples.append(example)
        part.where.append(f"line {line}")
    if dropped:
        part.notes.append(f"{shown}: dropped {dropped} {split} rows with an empty field")
    _warn_header_guess(table, index, part, shown)
    return part


def _warn_header_guess(table: Table, index: dict[str, int], part: Part, shown: str) -> None:
    """A header row read as data shows as a label seen only once, on the first row: say so."""
    col = index.get("label")
    if table.has_header or col is None or len(table.rows) < 10:
        return
    first = table.rows[0][col].strip()
    if not first.isdigit() and sum(row[col].strip() == first for row in table.rows) == 1:
        part.notes.append(f"{shown}: no header detected, but the first row's label '{first}' occurs nowhere else; "
                          "if that row is a header, set data.header = true and the data.*_column keys to its names")


def txt_part(path: Path, shown: str, key: str) -> Part:
    """A plain-text file for language modelling: one {"text": line} per non-empty line."""
    part = Part([], [], shown)
    for number, line in enumerate(read_lines(path, key), 1):
        if line.strip():
            part.examples.append({"text": line})
            part.where.append(f"line {number}")
    return part


def _trim_end(lines: list[str]) -> list[str]:
    # Blank lines at the very end are an editor's doing, not a missing translation.
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def parallel_part(paths: list[Path], shown: list[str], key: str) -> Part:
    """Two line-aligned files (source, target) for seq2seq: one example per line pair.

    Pairs where either side is blank are dropped and counted.
    Raises:
        UserError: the files have different numbers of lines.
    """
    src, tgt = (_trim_end(read_lines(p, key)) for p in paths)
    if len(src) != len(tgt):
        raise UserError(f"{shown[0]} has {len(src)} lines but {shown[1]} has {len(tgt)}; "
                        f"the two files of {key} must be line-aligned (one translation per line)")
    part = Part([], [], " + ".join(shown))
    dropped = 0
    for number, (s, t) in enumerate(zip(src, tgt), 1):
        if not s.strip() or not t.strip():
            dropped += 1
            continue
        part.examples.append({"source": s, "target": t})
        part.where.append(f"line {number}")
    if dropped:
        part.notes.append(f"{part.path}: dropped {dropped} line pairs with a blank side")
    return part
