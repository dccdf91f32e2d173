"""ExecuTorch .pte through XNNPACK: classifiers and CNNs must lower and match PyTorch in executorch.runtime;
decoders and encoder-decoders are best-effort (static shapes, logits only, no KV cache)."""
from __future__ import annotations

import sys

import pytest
import torch

from toolkit.errors import UserError
from toolkit.export.executorch import export_pte
from toolkit.export.verify import verify

pytest.importorskip("executorch.exir", reason="ExecuTorch is an optional extra: pip install 'edge-toolkit[executorch]'")


def test_classifier_lowers_with_dynamic_shapes_and_matches(bert_dir, tmp_path, text_samples):
    r = export_pte(bert_dir, tmp_path, "text-classification")
    assert r.lowered and r.files == [tmp_path / "model.pte"] and r.exporter.startswith("executorch ")
    assert [i["shape"] for i in r.inputs] == [["batch_size", "sequence_length"]] * 2
    [res] = verify(r, bert_dir, text_samples)  # batches (3, 8) and (3, 9); exported with (2, 8)
    assert res["verified"] is True and res["samples"] == 6 and res["max_abs_diff"] < 1e-5
    assert res["runtime"].startswith("executorch ")


def test_cnn_lowers_and_matches(cnn, cnn_example, tmp_path, image_samples):
    r = export_pte(cnn, tmp_path, "image-classification", example_inputs=cnn_example)
    assert r.lowered and r.inputs[0]["shape"] == ["batch_size", 3, 16, 16]
    [res] = verify(r, cnn, image_samples)
    assert res["verified"] is True and res["samples"] == 8 and res["max_abs_diff"] < 1e-5


class _DataDependent(torch.nn.Module):
    """Branches on a tensor's value: torch.export cannot capture it."""

    def __init__(self):
        super().__init__()
        self.emb = torch.nn.Embedding(16, 4)

    def forward(self, input_ids, attention_mask):
        h = self.emb(input_ids).mean(1)
        return h * 2 if attention_mask.sum() > 3 else h


def test_a_model_that_does_not_lower(tmp_path):
    example = {"input_ids": torch.ones(1, 4, dtype=torch.long), "attention_mask": torch.ones(1, 4, dtype=torch.long)}
    r = export_pte(_DataDependent(), tmp_path, "language-modeling", example_inputs=example)
    assert r.lowered is False and r.files == [] and "data-dependent" in r.reason and "\n" not in r.reason
    assert verify(r, _DataDependent(), example) == []
    with pytest.raises(UserError, match="did not lower to ExecuTorch"):  # required for classifiers
        export_pte(_DataDependent(), tmp_path, "text-classification", example_inputs=example)
    assert not (tmp_path / "model.pte").exists()


def test_missing_extra_is_named(monkeypatch, cnn, tmp_path):
    monkeypatch.setitem(sys.modules, "executorch.exir", None)  # import fails as if not installed
    with pytest.raises(UserError, match=r"pip install 'edge-toolkit\[executorch\]'") as err:
        export_pte(cnn, tmp_path, "image-classification")
    assert err.value.exit_code == 2


@pytest.mark.slow  # about 30 s on two cores: lowering GPT-2 and BART graphs
def test_decoder_and_encoder_decoder_lower_best_effort(gpt2_dir, bart_dir, tmp_path, text_samples):
    gpt = export_pte(gpt2_dir, tmp_path / "gpt2", "language-modeling", seq_len=12)
    assert gpt.lowered and gpt.extra["kv_cache"] is False and gpt.inputs[0]["shape"] == [1, 12]
    [res] = verify(gpt, gpt2_dir, text_samples)  # rows of 8 and 9 tokens, right-padded to 12
    assert res["verified"] is True and res["samples"] == 6 and res["max_abs_diff"] < 1e-5
    bart = export_pte(bart_dir, tmp_path / "bart", "seq2seq", seq_len=12)
    assert bart.lowered and [i["name"] for i in bart.inputs] == [
        "input_ids", "attention_mask", "decoder_input_ids", "decoder_attention_mask"]
    samples = [dict(b, decoder_input_ids=b["input_ids"][:, :5]) for b in text_samples]
    [res] = verify(bart, bart_dir, samples)
    assert res["verified"] is True and res["samples"] == 6 and res["max_abs_diff"] < 1e-5


def test_pt2e_int8_program_verifies_as_lossy(cnn, image_samples, tmp_path):
    """The compression stage's INT8 path: a PT2E-quantized GraphModule lowers and is compared by agreement and
    cosine similarity with its float parent."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer, get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = torch.as_tensor(image_samples[0]["pixel_values"][:2])
    prepared = prepare_pt2e(torch.export.export(cnn, (example,)).module(),
                            XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
    for batch in image_samples:
        prepared(torch.as_tensor(batch["pixel_values"][:2]))
    r = export_pte(convert_pt2e(prepared), tmp_path, "image-classification", example_inputs={"pixel_values": example})
    assert r.lowered and r.inputs[0]["shape"][1:] == [3, 16, 16]
    [res] = verify(r, cnn, image_samples, lossy=True)
    assert res["verified"] is True and res["samples"] == 8 and res["mode"] == "lossy"
    assert res["agreement"] >= 0.95 and res["cosine"] >= 0.98 and 0 < res["max_abs_diff"] < 0.1


class _OnlyBatchTwo(torch.nn.Module):
    """Exports only at batch 2 (a view with a fixed batch), like a program captured at a fixed batch size."""

    def __init__(self, cnn):
        super().__init__()
        self.cnn = cnn

    def forward(self, pixel_values):
        return self.cnn(pixel_values.view(2, 3, 16, 16))


def test_a_static_batch_program_is_fed_in_groups(cnn, image_samples, tmp_path):
    model = _OnlyBatchTwo(cnn).eval()
    r = export_pte(model, tmp_path, "image-classification", example_inputs={"pixel_values": torch.zeros(2, 3, 16, 16)})
    assert r.lowered and r.inputs[0]["shape"] == [2, 3, 16, 16] and "dynamic_shapes_failed" in r.extra
    [res] = verify(r, model, image_samples)  # 3 rows -> 2 + (1 + filler), 5 rows -> 2 + 2 + (1 + filler)
    assert res["verified"] is True and res["samples"] == 8 and res["max_abs_diff"] < 1e-5
