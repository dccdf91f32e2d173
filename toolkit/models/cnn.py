"""cnn-small: a MobileNet-style CNN for small images, as a Hugging Face model.

stem conv 3x3 -> depthwise-separable blocks (dw 3x3 + BN + ReLU6, pw 1x1 + BN + ReLU6) -> global average
pool -> dropout -> linear. Being a ``PreTrainedModel`` it saves with ``save_pretrained`` (safetensors) and
loads with ``AutoModelForImageClassification.from_pretrained`` once this module is imported (it registers
``model_type = "edge-cnn"`` with the Auto classes). The forward pass has no data-dependent control flow, so
``torch.onnx.export`` and ``torch.export`` trace it as is.
"""
from __future__ import annotations

import torch
from torch import nn
from transformers import (AutoConfig, AutoModel, AutoModelForImageClassification, PretrainedConfig,
                          PreTrainedModel)
from transformers.modeling_outputs import ImageClassifierOutput


class EdgeCNNConfig(PretrainedConfig):
    """Configuration of :class:`EdgeCNNForImageClassification`.

    Args:
        in_channels: image channels (1 grey, 3 RGB).
        widths: output channels of the stem, then of each depthwise-separable block.
        strides: stride of the stem, then of each block (same length as ``widths``).
        image_size: (height, width) the model was trained on; the pooling makes it work at other sizes,
            but preprocessing should resize to this.
        dropout: dropout before the classifier.
        num_labels / id2label / label2id: as for every Hugging Face classifier.
    """

    model_type = "edge-cnn"

    def __init__(self, in_channels: int = 1, widths: list[int] | None = None, strides: list[int] | None = None,
                 image_size: list[int] | int | None = None, dropout: float = 0.1, **kwargs) -> None:
        self.in_channels = in_channels
        self.widths = list(widths) if widths is not None else [16, 32, 64]
        self.strides = list(strides) if strides is not None else default_strides(8, len(self.widths))
        if isinstance(image_size, int):
            image_size = [image_size, image_size]
        self.image_size = list(image_size) if image_size is not None else [8, 8]
        self.dropout = dropout
        if len(self.strides) != len(self.widths):
            raise ValueError(f"edge-cnn: strides {self.strides} and widths {self.widths} differ in length")
        super().__init__(**kwargs)


def default_strides(image_size: int, n: int) -> list[int]:
    """Strides for the stem and ``n - 1`` blocks: small images (<= 16 px) keep full resolution through the
    stem and halve it once at the end; larger images halve at the stem and in every block."""
    if image_size <= 16:
        return [1] * (n - 1) + [2] if n > 1 else [1]
    return [2] * n


def conv_bn(cin: int, cout: int, kernel: int, stride: int, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU6(),
    )


class DepthwiseSeparable(nn.Module):
    """MobileNet v1 block: depthwise 3x3 then pointwise 1x1, each with BatchNorm and ReLU6."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.depthwise = conv_bn(cin, cin, 3, stride, groups=cin)
        self.pointwise = conv_bn(cin, cout, 1, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


class EdgeCNNPreTrainedModel(PreTrainedModel):
    config_class = EdgeCNNConfig
    base_model_prefix = "cnn"
    main_input_name = "pixel_values"

    def _init_weights(self, module: nn.Module) -> None:
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear):
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)


class EdgeCNNForImageClassification(EdgeCNNPreTrainedModel):
    """``model(pixel_values=(B, C, H, W) float32, labels=(B,) long)`` -> ImageClassifierOutput(loss, logits)."""

    def __init__(self, config: EdgeCNNConfig) -> None:
        super().__init__(config)
        w, s = config.widths, config.strides
        self.stem = conv_bn(config.in_channels, w[0], 3, s[0])
        self.blocks = nn.Sequential(*[DepthwiseSeparable(w[i - 1], w[i], s[i]) for i in range(1, len(w))])
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Linear(w[-1], config.num_labels)
        self.post_init()

    def forward(self, pixel_values: torch.Tensor, labels: torch.Tensor | None = None,
                return_dict: bool | None = None, **kwargs) -> ImageClassifierOutput:
        x = self.blocks(self.stem(pixel_values))  # (B, C_last, H', W')
        x = x.mean(dim=(2, 3))  # global average pool: (B, C_last); a plain mean exports everywhere
        logits = self.classifier(self.dropout(x))  # (B, num_labels)
        loss = nn.functional.cross_entropy(logits, labels) if labels is not None else None
        return ImageClassifierOutput(loss=loss, logits=logits)


def param_count_formula(in_channels: int, widths: list[int], num_labels: int) -> int:
    """Trainable parameters of the CNN from its shape alone (BatchNorm: weight + bias; running stats are
    buffers). Used by tests and by size estimates before a model is built."""
    n = in_channels * widths[0] * 9 + 2 * widths[0]  # stem conv (no bias) + BN
    for cin, cout in zip(widths[:-1], widths[1:]):
        n += cin * 9 + 2 * cin + cin * cout + 2 * cout  # depthwise + BN, pointwise + BN
    return n + widths[-1] * num_labels + num_labels


def register_auto_classes() -> None:
    """Make ``AutoConfig`` / ``AutoModel(ForImageClassification)`` know ``edge-cnn`` (idempotent)."""
    AutoConfig.register(EdgeCNNConfig.model_type, EdgeCNNConfig, exist_ok=True)
    AutoModel.register(EdgeCNNConfig, EdgeCNNForImageClassification, exist_ok=True)
    AutoModelForImageClassification.register(EdgeCNNConfig, EdgeCNNForImageClassification, exist_ok=True)


register_auto_classes()
