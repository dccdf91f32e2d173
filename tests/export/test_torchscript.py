"""TorchScript by tracing: the CNN and the classifier trace and match; a decoder that does not trace says why."""
from __future__ import annotations

import torch

from toolkit.export.torchscript import export_torchscript
from toolkit.export.verify import verify


def test_cnn_traces_and_matches(cnn, cnn_example, tmp_path, image_samples):
    r = export_torchscript(cnn, tmp_path, "image-classification", example_inputs=cnn_example)
    assert r.lowered and r.files == [tmp_path / "model.ts"] and r.exporter.startswith("torch.jit ")
    loaded = torch.jit.load(str(r.files[0]))
    assert loaded(torch.zeros(7, 3, 16, 16)).shape == (7, 4)  # traced at batch 2, runs at 7
    [res] = verify(r, cnn, image_samples)
    assert res["verified"] is True and res["samples"] == 8 and res["max_abs_diff"] < 1e-5


def test_classifier_traces_and_matches(bert_dir, tmp_path, text_samples):
    r = export_torchscript(bert_dir, tmp_path, "text-classification")
    assert r.lowered and [i["name"] for i in r.inputs] == ["input_ids", "attention_mask"]
    [res] = verify(r, bert_dir, text_samples)
    assert res["verified"] is True and res["samples"] == 6 and res["max_abs_diff"] < 1e-5


def test_a_decoder_that_does_not_trace_gives_a_reason(gpt2_dir, tmp_path):
    r = export_torchscript(gpt2_dir, tmp_path, "language-modeling")
    assert r.lowered is False and r.files == [] and r.reason.startswith("torch.jit.trace: ")
    assert not (tmp_path / "model.ts").exists()
