"""ONNX export of a tiny model of each task, verified against PyTorch on real samples."""
from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from toolkit.errors import CheckFailed, UserError
from toolkit.export.onnx import export_onnx
from toolkit.export.verify import FP32_ATOL, raise_if_failed, verify


@pytest.fixture(scope="module")
def bert_onnx(bert_dir, tmp_path_factory):
    return export_onnx(bert_dir, tmp_path_factory.mktemp("bert_onnx"), "text-classification")


def test_classifier_exports_with_dynamic_axes_and_matches_pytorch(bert_onnx, bert_dir, text_samples):
    r = bert_onnx
    assert [p.name for p in r.files] == ["model.onnx"] and r.files[0].is_file()
    assert r.format == "onnx" and r.opset == 18 and r.exporter.startswith("optimum-onnx ")
    inputs = {i["name"]: i for i in r.inputs}
    assert inputs["input_ids"]["shape"] == ["batch_size", "sequence_length"]
    assert inputs["input_ids"]["dtype"] == "int64" and r.outputs == ["logits"]
    [res] = verify(r, bert_dir, text_samples)
    assert res["verified"] is True and res["samples"] == 6 and res["atol"] == FP32_ATOL == 1e-4
    assert 0 <= res["max_abs_diff"] < 1e-5
    assert res["runtime"].startswith("onnxruntime ")
    manifest_entry = json.loads(json.dumps(r.to_dict()))
    assert manifest_entry["files"] == [str(r.files[0])] and manifest_entry["opset"] == 18


def test_decoder_exports_with_kv_cache_and_first_step_matches(gpt2_dir, tmp_path, text_samples):
    r = export_onnx(gpt2_dir, tmp_path, "language-modeling")
    names = [i["name"] for i in r.inputs]
    assert [p.name for p in r.files] == ["model.onnx"] and r.extra["kv_cache"] is True
    assert "past_key_values.0.key" in names and "past_key_values.1.value" in names and "present.0.key" in r.outputs
    [res] = verify(r, gpt2_dir, text_samples)
    assert res["verified"] is True and res["samples"] == 6 and res["max_abs_diff"] < 1e-5


def test_encoder_decoder_exports_separate_graphs_each_verified(bart_dir, tmp_path, text_samples):
    r = export_onnx(bart_dir, tmp_path, "seq2seq")
    assert [p.name for p in r.files] == ["encoder_model.onnx", "decoder_model_merged.onnx"]
    assert not (tmp_path / "decoder_model.onnx").exists()  # the merged graph holds it
    assert r.graphs["decoder_model_merged.onnx"]["role"] == "decoder"
    assert "use_cache_branch" in [i["name"] for i in r.graphs["decoder_model_merged.onnx"]["inputs"]]
    samples = [dict(b, decoder_input_ids=b["input_ids"][:, :4]) for b in text_samples]
    results = verify(r, bart_dir, samples)
    assert [x["role"] for x in results] == ["encoder", "decoder"]
    assert all(x["verified"] and x["max_abs_diff"] < 1e-5 and x["samples"] == 6 for x in results)


def test_cnn_exports_with_torch_onnx_and_a_dynamic_batch(cnn, cnn_example, tmp_path, image_samples):
    r = export_onnx(cnn, tmp_path, "image-classification", example_inputs=cnn_example)
    assert r.exporter.startswith("torch.onnx ") and r.opset == 18
    assert r.inputs == [{"name": "pixel_values", "shape": ["batch_size", 3, 16, 16], "dtype": "float32"}]
    [res] = verify(r, cnn, image_samples)  # batches of 3 and 5, exported with 2
    assert res["verified"] is True and res["samples"] == 8 and res["max_abs_diff"] < 1e-5


def _tamper(src, dst, scale: float):
    model = onnx.load(str(src))
    biggest = max(model.graph.initializer, key=lambda t: np.prod(t.dims))
    biggest.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(biggest) * scale, biggest.name))
    onnx.save(model, str(dst))


def test_tampered_export_fails_verification(bert_onnx, bert_dir, text_samples, tmp_path):
    tampered = tmp_path / "model.onnx"
    _tamper(bert_onnx.files[0], tampered, 1.05)
    r = type(bert_onnx)(**{**bert_onnx.__dict__, "files": [tampered]})
    [res] = verify(r, bert_dir, text_samples)
    assert res["verified"] is False and res["max_abs_diff"] > res["atol"]
    with pytest.raises(CheckFailed, match=r"model\.onnx \(onnx\): max \|diff\| .* > atol 0\.0001") as err:
        raise_if_failed([res])
    assert err.value.exit_code == 3
    raise_if_failed(verify(bert_onnx, bert_dir, text_samples))  # the untouched file passes


def test_lossy_mode_checks_agreement_and_cosine(bert_onnx, bert_dir, text_samples, tmp_path):
    [ok] = verify(bert_onnx, bert_dir, text_samples, lossy=True)
    assert ok["verified"] and ok["agreement"] == 1.0 and ok["cosine"] > 0.9999
    assert (ok["min_agreement"], ok["min_cosine"], ok["mode"]) == (0.95, 0.98, "lossy")
    broken = tmp_path / "model.onnx"
    _tamper(bert_onnx.files[0], broken, -3.0)
    r = type(bert_onnx)(**{**bert_onnx.__dict__, "files": [broken]})
    [bad] = verify(r, bert_dir, text_samples, lossy=True)
    assert bad["verified"] is False and bad["cosine"] < 0.98
    with pytest.raises(CheckFailed, match="mean cosine"):
        raise_if_failed([bad])


def test_bad_task_and_missing_model_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="did you mean 'seq2seq'"):
        export_onnx(tmp_path, tmp_path / "out", "seq2sek")
    with pytest.raises(UserError, match="not a model directory"):
        export_onnx(tmp_path, tmp_path / "out", "text-classification")


def test_an_image_pretrainedmodel_from_its_directory(cnn, tmp_path, image_samples):
    """Our CNNs are PreTrainedModels optimum does not know: torch.onnx, example shape from the config."""
    from transformers import (AutoConfig, AutoModelForImageClassification, PretrainedConfig, PreTrainedModel)
    from transformers.modeling_outputs import ImageClassifierOutput

    class TinyCNNConfig(PretrainedConfig):
        model_type = "export-test-cnn"

        def __init__(self, num_channels=3, image_size=16, **kw):
            super().__init__(**kw)
            self.num_channels, self.image_size = num_channels, image_size

    class TinyCNNModel(PreTrainedModel):
        config_class = TinyCNNConfig
        main_input_name = "pixel_values"

        def __init__(self, config):
            super().__init__(config)
            self.net = type(cnn)(classes=config.num_labels)

        def forward(self, pixel_values, labels=None):
            return ImageClassifierOutput(logits=self.net(pixel_values))

    AutoConfig.register("export-test-cnn", TinyCNNConfig, exist_ok=True)
    AutoModelForImageClassification.register(TinyCNNConfig, TinyCNNModel, exist_ok=True)
    model = TinyCNNModel(TinyCNNConfig(num_labels=4)).eval()
    model.net.load_state_dict(cnn.state_dict())
    model.save_pretrained(tmp_path / "model")
    r = export_onnx(tmp_path / "model", tmp_path / "out", "image-classification")
    assert r.exporter.startswith("torch.onnx ") and r.inputs[0]["shape"] == ["batch_size", 3, 16, 16]
    [res] = verify(r, tmp_path / "model", image_samples)
    assert res["verified"] is True and res["max_abs_diff"] < 1e-5
