"""cnn-small: shape, parameter count, Auto-class loading, and export without data-dependent control flow."""
from __future__ import annotations

import io

import pytest
import torch

from toolkit.config import Recipe
from toolkit.models import EdgeCNNConfig, EdgeCNNForImageClassification, cnn_small, cnn_widths, param_count_formula


class Logits(torch.nn.Module):
    """pixel_values -> logits, the shape exporters want."""

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values).logits


def _model(**kw) -> EdgeCNNForImageClassification:
    torch.manual_seed(0)
    return EdgeCNNForImageClassification(EdgeCNNConfig(num_labels=10, **kw))


def _warm_batchnorm(model: torch.nn.Module) -> None:
    """Give BatchNorm real running statistics, so eval-mode checks are not trivially the identity."""
    model.train()
    with torch.no_grad():
        for _ in range(3):
            model(pixel_values=torch.rand(16, model.config.in_channels, 8, 8))
    model.eval()


def test_parameter_count_of_the_default_cnn():
    m = _model()
    # stem 1->16 (3x3, no bias) + BN; block 16->32: dw 3x3 + BN + pw + BN; block 32->64 likewise; linear 64->10
    by_hand = (1 * 16 * 9 + 2 * 16) + (16 * 9 + 2 * 16 + 16 * 32 + 2 * 32) + (32 * 9 + 2 * 32 + 32 * 64 + 2 * 64) + (64 * 10 + 10)
    assert by_hand == 4106
    assert sum(p.numel() for p in m.parameters()) == by_hand == param_count_formula(1, [16, 32, 64], 10)
    assert param_count_formula(3, [8, 16], 2) == sum(
        p.numel() for p in EdgeCNNForImageClassification(EdgeCNNConfig(in_channels=3, widths=[8, 16], strides=[1, 2], num_labels=2)).parameters())


def test_forward_shapes_and_loss():
    m = _model()
    x = torch.rand(4, 1, 8, 8)
    y = torch.tensor([0, 1, 2, 3])
    out = m(pixel_values=x, labels=y)
    assert out.logits.shape == (4, 10)
    torch.testing.assert_close(out.loss, torch.nn.functional.cross_entropy(out.logits, y))
    assert m(pixel_values=x).loss is None


def test_recipe_overrides_set_width_and_depth():
    r = Recipe(task="image-classification")
    assert cnn_widths(r) == [16, 32, 64]
    r.model.hidden_size, r.model.layers = 96, 3
    assert cnn_widths(r) == [12, 24, 48, 96]
    r.train.dropout = 0.3
    m = cnn_small(r, in_channels=3, image_size=[32, 32], labels=["a", "b"])
    assert m.config.widths == [12, 24, 48, 96] and m.config.strides == [2, 2, 2, 2]
    assert m.config.dropout == 0.3 and m.dropout.p == 0.3
    assert m(pixel_values=torch.rand(2, 3, 32, 32)).logits.shape == (2, 2)


def test_saved_folder_loads_with_auto_classes(tmp_path):
    import toolkit.models  # noqa: F401  registers edge-cnn
    from transformers import AutoConfig, AutoModelForImageClassification

    m = _model(widths=[8, 16, 32])
    _warm_batchnorm(m)
    m.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "model.safetensors").is_file()
    assert AutoConfig.from_pretrained(tmp_path).model_type == "edge-cnn"
    loaded = AutoModelForImageClassification.from_pretrained(tmp_path).eval()
    assert isinstance(loaded, EdgeCNNForImageClassification) and loaded.config.widths == [8, 16, 32]
    x = torch.rand(3, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(pixel_values=x).logits, m(pixel_values=x).logits)


def test_exports_with_torch_export_and_onnx():
    m = _model()
    _warm_batchnorm(m)
    wrapped = Logits(m).eval()
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        expected = wrapped(x)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(wrapped, (x,), dynamic_shapes={"pixel_values": {0: batch}})
    torch.testing.assert_close(program.module()(torch.cat([x, x])), torch.cat([expected, expected]))

    ort = pytest.importorskip("onnxruntime")
    f = io.BytesIO()
    torch.onnx.export(wrapped, (x,), f, dynamo=False, input_names=["pixel_values"], output_names=["logits"],
                      dynamic_axes={"pixel_values": {0: "batch"}})
    session = ort.InferenceSession(f.getvalue(), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {"pixel_values": x.numpy()})
    torch.testing.assert_close(torch.from_numpy(got), expected, rtol=1e-4, atol=1e-5)
