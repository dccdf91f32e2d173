"""The exported folder is usable alone: tokenizer, labels and preprocessing travel with the model."""
from __future__ import annotations

import json

import numpy as np
import pytest
from transformers import PreTrainedTokenizerFast

from toolkit.errors import UserError
from toolkit.export.bundle import copy_bundle_files
from toolkit.export.onnx import export_onnx
from toolkit.onnxrt import open_session


def test_bundle_files_are_copied_and_the_folder_predicts_alone(bert_dir, tmp_path):
    out = tmp_path / "bundle"
    export_onnx(bert_dir, out, "text-classification")
    copied = copy_bundle_files(bert_dir, out)
    assert {p.name for p in copied} == {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                                        "labels.json", "preprocess.json"}
    assert (out / "config.json").is_file() and "config.json" not in {p.name for p in copied}  # optimum wrote it
    assert all((out / p.name).read_bytes() == (bert_dir / p.name).read_bytes() for p in copied)

    # only the bundle folder from here on
    tok = PreTrainedTokenizerFast.from_pretrained(out)
    labels = json.loads((out / "labels.json").read_text())
    session = open_session(out / "model.onnx")
    enc = tok(["the cat sat on the mat"], return_tensors="np")
    logits = session.run(["logits"], {i.name: enc[i.name].astype(np.int64) for i in session.get_inputs()})[0]
    assert logits.shape == (1, 3) and labels[int(logits.argmax())] in {"negative", "neutral", "positive"}
    assert enc["input_ids"][0].tolist()[0] == tok.cls_token_id and tok.unk_token_id not in enc["input_ids"][0]


def test_only_present_files_are_copied(tmp_path):
    src = tmp_path / "model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    (src / "labels.json").write_text('["a", "b"]')
    copied = copy_bundle_files(src, tmp_path / "out")
    assert [p.name for p in copied] == ["labels.json", "config.json"]
    with pytest.raises(UserError, match="not a model directory"):
        copy_bundle_files(tmp_path / "missing", tmp_path / "out")
