"""``python -m toolkit score``: score a predictions file against references, one example per line.

Any system's outputs can be scored the way the toolkit scores its own variants: BLEU and chrF with sacrebleu
(0-100, with the signature), ROUGE with rouge-score (F-measure fractions), accuracy and macro-F1 with
scikit-learn (fractions; each line is a label).
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from toolkit.errors import UserError, did_you_mean

HELP = "score a predictions file against references (bleu, chrf, rouge, accuracy, f1)"

METRICS = ("bleu", "chrf", "rouge", "accuracy", "f1")
_ALIASES = {**{m: m for m in METRICS}, "acc": "accuracy", "f1_macro": "f1", "macro-f1": "f1", "sacrebleu": "bleu",
            "chrf++": "chrf", "rouge-l": "rouge", "rougel": "rouge", "rouge1": "rouge", "rouge2": "rouge",
            "rougelsum": "rouge"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # --metric is checked by hand, not with argparse `choices`, so a typo gets one line with the nearest name
    parser.add_argument("--metric", required=True, metavar="NAME", help="bleu | chrf | rouge | accuracy | f1")
    parser.add_argument("--pred", required=True, metavar="FILE", help="predictions, one per line (UTF-8)")
    parser.add_argument("--ref", required=True, nargs="+", metavar="FILE",
                        help="references, one per line, line-aligned with --pred; several files = several "
                             "references per line (bleu, chrf, rouge)")
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--tokenize", default=None, metavar="NAME",
                        help="sacrebleu tokenizer for bleu (default 13a; also none, intl, char, zh, ...)")
    parser.add_argument("--stemmer", action=argparse.BooleanOptionalAction, default=None,
                        help="Porter stemming for rouge (default: on)")


def read_lines(path: Path, flag: str) -> list[str]:
    """The lines of a UTF-8 text file (no line ends; a final newline does not make an extra line).

    Raises:
        UserError: a missing file, a directory, an empty file (no non-blank line), a line that is not UTF-8.
    """
    if not path.exists():
        raise UserError(f"{flag} {path}: no such file")
    if path.is_dir():
        raise UserError(f"{flag} {path}: is a directory; give a text file with one example per line")
    raw = path.read_bytes()
    if raw.startswith(b"\xef\xbb\xbf"):  # a UTF-8 byte-order mark is not part of the first line
        raw = raw[3:]
    chunks = raw.split(b"\n")
    if chunks and chunks[-1] == b"":
        chunks.pop()
    lines = []
    for number, chunk in enumerate(chunks, start=1):
        try:
            lines.append(chunk.decode("utf-8").rstrip("\r"))
        except UnicodeDecodeError as e:
            raise UserError(f"{flag} {path}: line {number} is not valid UTF-8 (byte 0x{chunk[e.start]:02x} at "
                            f"column {e.start + 1}); save the file as UTF-8") from None
    if not any(line.strip() for line in lines):
        raise UserError(f"{flag} {path} is empty; expected one example per line")
    return lines


def _check_flags(metric: str, args: argparse.Namespace) -> None:
    if args.tokenize is not None and metric != "bleu":
        raise UserError(f"--tokenize applies to --metric bleu only, not {metric}")
    if args.stemmer is not None and metric != "rouge":
        raise UserError(f"--stemmer/--no-stemmer applies to --metric rouge only, not {metric}")
    if len(args.ref) > 1 and metric in ("accuracy", "f1"):
        raise UserError(f"--metric {metric} takes one --ref file, got {len(args.ref)}")


def _score_labels(metric: str, preds: list[str], refs: list[str], pred_path: str, ref_path: str) -> dict[str, Any]:
    from toolkit.eval.metrics import classification_metrics

    for lines, flag, path in ((preds, "--pred", pred_path), (refs, "--ref", ref_path)):
        blank = next((i for i, line in enumerate(lines, start=1) if not line.strip()), None)
        if blank is not None:
            raise UserError(f"{flag} {path}: line {blank} is blank; every line needs a label")
    p = [s.strip() for s in preds]
    r = [s.strip() for s in refs]
    labels = sorted(set(r) | set(p))
    index = {name: i for i, name in enumerate(labels)}
    m = classification_metrics([index[x] for x in r], [index[x] for x in p], None, labels)
    key = "accuracy" if metric == "accuracy" else "f1_macro"
    convention = m["conventions"][key] + "; labels are the lines' text, stripped"
    return {"metric": metric, "score": m[key], "convention": convention, "n": len(r), "labels": len(labels)}


def score(metric: str, preds: list[str], refs: list[list[str]], tokenize: str | None = None,
          stemmer: bool | None = None, pred_path: str = "", ref_paths: tuple[str, ...] = ()) -> dict[str, Any]:
    """Score line-aligned predictions; ``refs`` is one list of lines per reference file."""
    from toolkit.eval import metrics as M

    if metric in ("accuracy", "f1"):
        return _score_labels(metric, preds, refs[0], pred_path, ref_paths[0] if ref_paths else "")
    per_example: list[Any] = refs[0] if len(refs) == 1 else [list(t) for t in zip(*refs)]
    if metric == "bleu":
        r = M.bleu(preds, per_example, tokenize=tokenize or "13a")
        return {"metric": "bleu", "score": r["bleu"], "signature": r["signature"], "convention": r["convention"],
                "n": len(preds)}
    if metric == "chrf":
        r = M.chrf(preds, per_example)
        return {"metric": "chrf", "score": r["chrf"], "signature": r["signature"], "convention": r["convention"],
                "n": len(preds)}
    r = M.rouge(preds, per_example, use_stemmer=True if stemmer is None else stemmer)
    return {"metric": "rouge", "score": {t: r[t] for t in M.ROUGE_TYPES}, "convention": r["convention"],
            "use_stemmer": r["use_stemmer"], "n": len(preds)}


def format_line(result: dict[str, Any]) -> str:
    """The readable one-line form, e.g. ``BLEU = 34.21  (nrefs:1|case:mixed|...)``."""
    metric, s = result["metric"], result["score"]
    if metric == "bleu":
        return f"BLEU = {s:.2f}  ({result['signature']})"
    if metric == "chrf":
        return f"chrF2 = {s:.2f}  ({result['signature']})"
    if metric == "rouge":
        parts = "  ".join(f"ROUGE-{t[5:]} = {v:.4f}" for t, v in s.items())
        stem = "on" if result["use_stemmer"] else "off"
        return (f"{parts}  (rouge-score F-measure, mean over {result['n']} lines, fractions in [0, 1], "
                f"stemmer={stem})")
    name = "accuracy" if metric == "accuracy" else "f1_macro"
    return f"{name} = {s:.4f}  (n={result['n']}, {result['labels']} labels; {result['convention']})"


def run(args: argparse.Namespace) -> int:
    metric = args.metric.strip().lower()
    if metric not in METRICS:
        raise UserError(f"--metric '{args.metric}' is not a metric{did_you_mean(metric, _ALIASES)}")
    _check_flags(metric, args)
    preds = read_lines(Path(args.pred), "--pred")
    refs = [read_lines(Path(f), "--ref") for f in args.ref]
    for f, lines in zip(args.ref, refs):
        if len(lines) != len(preds):
            raise UserError(f"--pred {args.pred} has {len(preds)} lines but --ref {f} has {len(lines)}; "
                            f"one prediction per reference line is needed")
    result = score(metric, preds, refs, tokenize=args.tokenize, stemmer=args.stemmer, pred_path=args.pred,
                   ref_paths=tuple(args.ref))
    if args.json:
        out = {k: v for k, v in result.items() if k != "labels"}
        print(json.dumps(out, ensure_ascii=False))
    else:
        print(format_line(result))
    return 0
