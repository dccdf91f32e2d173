"""Tiny Hugging Face image classifiers of many families (a few thousand parameters, 32x32 inputs) and an image
processor of each family's kind, as a user's save_pretrained folder would hold them. Built from configs: nothing is
downloaded. Shared by tests/arch, tests/tasks and tests/data (imported by path).

MobileNetV1 and RegNet are named nowhere in the toolkit: they stand for "a family shaped like a known one".
"""
from __future__ import annotations

from pathlib import Path

import torch
import transformers as T

SIZE = 32

FAMILIES = {
    "resnet": (lambda: T.ResNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], layer_type="bottleneck"),
               lambda: T.ConvNextImageProcessor(size={"shortest_edge": SIZE})),  # what resnet-50 ships
    "convnext": (lambda: T.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 2], num_stages=2, patch_size=2,
                                          image_size=SIZE),
                 lambda: T.ConvNextImageProcessor(size={"shortest_edge": SIZE}, crop_pct=0.875)),
    "mobilenet_v2": (lambda: T.MobileNetV2Config(depth_multiplier=0.1, min_depth=4, depth_divisible_by=4,
                                                 finegrained_output=False, image_size=SIZE),
                     lambda: T.MobileNetV2ImageProcessor(size={"shortest_edge": SIZE + 4},
                                                         crop_size={"height": SIZE, "width": SIZE})),
    "efficientnet": (lambda: T.EfficientNetConfig(width_coefficient=0.1, depth_coefficient=0.1, depth_divisor=4,
                                                  hidden_dim=128, image_size=SIZE),
                     lambda: T.EfficientNetImageProcessor(size={"height": SIZE, "width": SIZE})),
    "mobilevit": (lambda: T.MobileViTConfig(image_size=SIZE, patch_size=2, hidden_sizes=[8, 12, 16],
                                            neck_hidden_sizes=[4, 8, 8, 12, 12, 16, 24], num_attention_heads=2,
                                            expand_ratio=2.0),
                  lambda: T.MobileViTImageProcessor(size={"shortest_edge": SIZE + 4},
                                                    crop_size={"height": SIZE, "width": SIZE})),
    "vit": (lambda: T.ViTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
                                image_size=SIZE, patch_size=8),
            lambda: T.ViTImageProcessor(size={"height": SIZE, "width": SIZE})),
    "deit": (lambda: T.DeiTConfig(hidden_size=16, num_hidden_layers=2, num_attention_heads=4, intermediate_size=32,
                                  image_size=SIZE, patch_size=8),
             lambda: T.DeiTImageProcessor(size={"height": SIZE + 4, "width": SIZE + 4},
                                          crop_size={"height": SIZE, "width": SIZE})),
    "mobilenet_v1": (lambda: T.MobileNetV1Config(depth_multiplier=0.1, min_depth=4, image_size=SIZE),
                     lambda: T.MobileNetV1ImageProcessor(size={"shortest_edge": SIZE + 4},
                                                         crop_size={"height": SIZE, "width": SIZE})),
    "regnet": (lambda: T.RegNetConfig(embedding_size=8, hidden_sizes=[8, 16], depths=[1, 2], groups_width=4),
               lambda: T.ConvNextImageProcessor(size={"shortest_edge": SIZE})),
}
CNNS = ["resnet", "convnext", "mobilenet_v2", "efficientnet", "mobilevit", "mobilenet_v1", "regnet"]
TRANSFORMERS = ["vit", "deit"]


def calibrate(model: torch.nn.Module, seed: int = 0) -> None:
    """BatchNorm running statistics measured on random images, as training would leave them: a freshly initialised
    deep, narrow CNN in eval mode otherwise shrinks the image's signal to nothing (its logits come out the same
    for every image, and comparisons of its outputs would prove nothing)."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # a plain average over the calibration batches
    model.train()
    with torch.no_grad():
        for i in range(4):
            model(pixel_values=images(8, seed=seed + 100 + i))
    for bn in bns:
        bn.momentum = 0.1
    model.eval()


def build(name: str, num_labels: int = 3, seed: int = 0, spread: bool = False, **config: object) -> torch.nn.Module:
    """The family's classifier, freshly initialised, with BatchNorm scales of 1 (EfficientNet and MobileViT draw
    them near 0, which silences a network no training has scaled up) and calibrated statistics. ``spread``:
    weights and BatchNorm scales and shifts drawn wide, so that every channel matters to the output. ``config``:
    keys to set on the family's config."""
    settings = config
    config = FAMILIES[name][0]()
    for key, value in settings.items():
        setattr(config, key, value)
    config.num_labels = num_labels
    auto = T.AutoModelForImageClassification
    mapped = auto._model_mapping[type(config)]
    config.architectures = [(mapped[0] if isinstance(mapped, tuple) else mapped).__name__]
    torch.manual_seed(seed)
    model = auto.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            if spread and p.dim() > 1:
                p.normal_(0, 0.2)
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.weight.uniform_(0.5, 1.5) if spread else m.weight.fill_(1.0)
                m.bias.normal_(0, 0.1) if spread else m.bias.zero_()
    calibrate(model, seed)
    return model


def processor(name: str):
    return FAMILIES[name][1]()


def save_folder(name: str, path: Path, num_labels: int = 3, seed: int = 0, **config: object) -> Path:
    """A folder as a user brings it: config.json, model.safetensors, preprocessor_config.json."""
    build(name, num_labels, seed, **config).save_pretrained(path)
    processor(name).save_pretrained(path)
    return path


def images(n: int = 2, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(seed))
