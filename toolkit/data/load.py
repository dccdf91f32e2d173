"""The data stage: read the recipe's data, check and clean it, carve the missing splits, fingerprint them.

Order of work, per given split: read -> ``data.limit`` (the first N rows) -> drop constant images -> clean
(text fields) -> check labels against the training data's; then carve validation/eval from train where the
recipe names none, and fingerprint the three splits.
"""
from __future__ import annotations

from typing import Any, Callable

from toolkit.config import Recipe
from toolkit.data.builtin import load_builtin
from toolkit.data.clean import clean_examples
from toolkit.data.fingerprint import fingerprint
from toolkit.data.images import drop_constant, read_image_folder
from toolkit.data.readers import TABLE_FORMATS, Part, missing_file, parallel_part, read_table, table_part, txt_part
from toolkit.data.split import carve, carve_size, natural_sorted, too_few
from toolkit.data.types import Example, Splits
from toolkit.errors import UserError

SPLITS = ("train", "validation", "eval")
CARVED = "carved from train"
ImageTarget = tuple[tuple[int, int], str]  # (width, height) and mode: builtin:digits' size, which image folders follow


def load_splits(recipe: Recipe, log: Callable[[str], None] | None = None) -> Splits:
    """Read, clean and split the recipe's data (see ``toolkit.data``)."""
    from toolkit.registry import TASKS

    d, task = recipe.data, recipe.task
    spec = TASKS.get(task, "task").data
    notes: list[str] = []
    note = notes.append  # notes go back in Splits.notes (the caller emits them); ``log`` gets progress only
    say = log or (lambda message: None)

    given = {s: getattr(d, s) for s in SPLITS}
    if not given["train"]:
        raise UserError(f"{recipe.source_path or 'the recipe'}: data.train is empty; name the training data "
                        "(a file, an image folder or builtin:digits)")
    parts: dict[str, Part] = {}
    image_target = None
    for split in SPLITS:
        if not given[split]:
            continue
        say(f"{split}: reading {given[split]}")
        part, image_target = _read(recipe, spec, given[split], split, image_target)
        for n in part.notes:
            note(n)
        if d.limit and len(part.examples) > d.limit:
            note(f"{part.path}: data.limit = {d.limit}: kept the first {d.limit} of {len(part.examples)} {split} rows")
            part.examples, part.where = part.examples[:d.limit], part.where[:d.limit]
        if spec.images and d.flag_constant_images:
            part, message = drop_constant(part)
            if message:
                note(message)
        if d.clean and spec.text_keys:
            _clean(part, d.clean, split, note)
        if not part.examples:
            raise UserError(f"{part.path}: no {split} examples left after reading and cleaning; check data.{split} "
                            "and data.clean")
        say(f"{split}: {len(part.examples)} examples from {part.path}")
        parts[split] = part
    if d.clean and not spec.text_keys:
        note(f"data.clean is ignored: {task} has no text fields")
    if d.group_column and not spec.groups:
        note(f"data.group_column is ignored: {task} reads no group column")

    labels: list[str] = []
    if spec.labels:
        labels = natural_sorted([e["label"] for e in parts["train"].examples])
        if len(labels) < 2:
            raise UserError(f"{parts['train'].path}: every training example has the label '{labels[0]}'; "
                            "classification needs at least two classes")
        for split in ("validation", "eval"):
            if split in parts:
                _check_labels(parts[split], split, labels)

    out, sources = _carve_missing(recipe, spec, parts, note)
    if labels:
        missing = sorted(set(labels) - {e["label"] for e in out["train"]})
        if missing:
            note(f"the train split has no example of {', '.join(repr(m) for m in missing)} (all carved out)")
    if spec.text_keys and "eval" in parts:
        _note_overlap(out["train"], out["eval"], spec.text_keys, note)
    splits = Splits(out["train"], out["validation"], out["eval"], labels=labels,
                    fingerprints={s: fingerprint(out[s]) for s in SPLITS}, notes=notes, sources=sources)
    return splits


def _read(recipe: Recipe, spec: Any, value: str | list[str], split: str,
          image_target: ImageTarget | None) -> tuple[Part, ImageTarget | None]:
    """One split's data as a Part, dispatched on its shape; returns the image (size, mode) for the next split."""
    from toolkit.registry import TASKS

    d, task, key = recipe.data, recipe.task, f"data.{split}"
    if isinstance(value, list):
        if not spec.pairs:
            pairs = [n for n, t in TASKS.items() if t.data.pairs]
            raise UserError(f"{key} = {value!r}: a pair of line-aligned files is for the {' / '.join(pairs)} task; "
                            f"the recipe's task is {task}")
        paths = [recipe.resolve_path(v) for v in value]
        return parallel_part(paths, [str(p) for p in paths], key), image_target
    if value.startswith("builtin:"):
        part = load_builtin(value, task, key, spec.images)
        if spec.images and image_target is None:
            h, w = part.examples[0]["image"].shape[:2]  # image folders for the other splits follow its size
            image_target = ((w, h), "L" if part.examples[0]["image"].ndim == 2 else "RGB")
        return part, image_target
    path = recipe.resolve_path(value)
    suffix = path.suffix.lower()
    if spec.images:
        if path.exists() and not path.is_dir() or suffix in TABLE_FORMATS + (".txt",):
            raise UserError(f"{path}: {task} reads an image folder (one subfolder per class) or "
                            f"builtin:digits; check {key} in the recipe")
        return read_image_folder(path, str(path), key, image_target)
    if not path.exists():
        raise missing_file(path, key)
    if not path.is_dir() and not path.is_file():  # reading a FIFO would wait forever for a writer
        raise UserError(f"{path}: not a regular file (a FIFO, device or socket); point {key} at a data file")
    if path.is_dir():
        raise UserError(f"{path}: is a folder; {task} reads a csv, tsv, jsonl or txt file; check {key}")
    if suffix == ".txt":
        if not spec.text_files:
            columns = " and ".join(col.removeprefix("data.").removesuffix("_column")
                                   for _, col in TASKS.get(task).fields(d).values())
            hint = ("give two line-aligned files [source, target] or a csv/tsv/jsonl with " if spec.pairs else
                    "use a csv, tsv or jsonl file with ") + f"{columns} columns"
            raise UserError(f"{path}: a .txt file is plain text for language modelling; for {task} {hint}")
        return txt_part(path, str(path), key), image_target
    if suffix not in TABLE_FORMATS:
        raise UserError(f"{path}: unknown data format '{suffix or path.name}'; use .csv, .tsv, .jsonl or .txt "
                        "(or an image folder, or builtin:digits)")
    fields = TASKS.get(task).fields(d)
    table = read_table(path, key, d.header, [col for col, _ in fields.values()])
    return table_part(table, path, str(path), fields, split), image_target


def _clean(part: Part, steps: list[str], split: str, note: Callable[[str], None]) -> None:
    kept, examples, dropped = clean_examples(part.examples, steps)
    part.examples, part.where = examples, [part.where[i] for i in kept]
    if dropped["dedup"]:
        note(f"{part.path}: dedup dropped {dropped['dedup']} duplicate {split} examples (the first of each kept)")
    if dropped["empty"]:
        note(f"{part.path}: cleaning ({', '.join(steps)}) left {dropped['empty']} {split} examples empty; dropped")


def _check_labels(part: Part, split: str, labels: list[str]) -> None:
    known = set(labels)
    for e, where in zip(part.examples, part.where):
        if e["label"] not in known:
            shown = ", ".join(labels[:20]) + (f", … ({len(labels)} in all)" if len(labels) > 20 else "")
            raise UserError(f"{part.path}: unknown label '{e['label']}' in {split} data ({where}); "
                            f"the training data's labels are: {shown}")


def _carve_missing(recipe: Recipe, spec: Any, parts: dict[str, Part],
                   note: Callable[[str], None]) -> tuple[dict[str, list[Example]], dict[str, str]]:
    """The three splits' examples and sources, carving from train what the recipe does not name."""
    a, b, c = recipe.data.split
    train = parts["train"]
    n = len(train.examples)
    out: dict[str, list[Example]] = {s: parts[s].examples for s in parts}
    sources = {s: parts[s].path for s in parts}
    plan = []  # (split, how many examples to carve), eval first: language modelling takes the very end for it
    if "validation" not in parts and "eval" not in parts:
        plan = [("eval", carve_size(n, c)), ("validation", carve_size(n, b))]
    elif "validation" not in parts:
        plan = [("validation", carve_size(n, b / (a + b)))]
    elif "eval" not in parts:
        plan = [("eval", carve_size(n, c / (a + c)))]
    if plan and sum(k for _, k in plan) >= n:
        raise too_few(n, sorted(s for s, _ in plan), train.path)
    classify = spec.labels
    how = ("contiguous, from the end" if spec.contiguous
           else f"seed {recipe.seed}" + (", stratified by label" if classify else ""))
    rest = train.examples
    for split, k in plan:
        labels = [e["label"] for e in rest] if classify else None
        kept, carved, warning = carve(len(rest), k, recipe.seed, labels, spec.contiguous,
                                      split, train.path)
        if warning:
            note(warning)
        out[split] = [rest[i] for i in carved]
        rest = [rest[i] for i in kept]
        sources[split] = CARVED
        shown = f"seed {recipe.seed}, not stratified" if warning else how
        note(f"{split}: {len(carved)} of {len(kept) + len(carved)} training examples carved from {train.path} ({shown})")
    out["train"] = rest
    return out, {s: sources[s] for s in SPLITS}


def _note_overlap(train: list[Example], eval_: list[Example], keys: tuple[str, ...],
                  note: Callable[[str], None]) -> None:
    """Say how many eval examples repeat a training text: leakage that flatters the eval metrics."""
    fields = [f for f in keys if eval_ and f in eval_[0]]
    seen = {tuple(e[f] for f in fields) for e in train}
    same = sum(tuple(e[f] for f in fields) in seen for e in eval_)
    if same:
        note(f"{same} of {len(eval_)} eval examples have the same text as a training example")
