"""Beside each exported model: what a program needs to use it alone (tokenizer, preprocessing, labels, config)."""
from __future__ import annotations

import shutil
from pathlib import Path

from toolkit.errors import UserError

BUNDLE_FILES = (
    "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json",
    "vocab.txt", "vocab.json", "merges.txt", "spiece.model", "sentencepiece.bpe.model", "source.spm", "target.spm",
    "labels.json", "preprocess.json", "preprocessor_config.json",
)
"""copied when present (tokenizer files of the WordPiece, BPE and SentencePiece families, our label map and
preprocessing, HF's image processor config)"""

IF_ABSENT = ("config.json", "generation_config.json")
"""copied only when the exporter did not write its own (optimum writes config.json beside model.onnx)"""


def copy_bundle_files(model_dir: str | Path, out_dir: str | Path) -> list[Path]:
    """Copy the tokenizer, label map and preprocessing files of ``model_dir`` into ``out_dir``.

    Returns:
        The files copied (paths in ``out_dir``), in a fixed order.
    Raises:
        UserError: ``model_dir`` is not a directory.
    """
    src, dst = Path(model_dir), Path(out_dir)
    if not src.is_dir():
        raise UserError(f"{src}: not a model directory to take tokenizer/labels/preprocessing files from")
    dst.mkdir(parents=True, exist_ok=True)
    if src.resolve() == dst.resolve():
        return []
    copied = []
    for name in BUNDLE_FILES + IF_ABSENT:
        source = src / name
        target = dst / name
        if not source.is_file() or (name in IF_ABSENT and target.exists()):
            continue
        shutil.copy2(source, target)
        copied.append(target)
    return copied
