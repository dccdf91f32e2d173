"""image-classification: an image (H, W) or (H, W, C) in [0, 1] -> one of ``Splits.labels``.

Built-in: cnn-small, sized to the images' channels and size. ``data.augment`` is applied in ``collate`` to
training items only (they carry an "augment" flag), with a generator seeded from torch's global RNG, so a
checkpoint's RNG state replays the same augmentations.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from toolkit.config import DataConfig, Recipe
from toolkit.data.types import Splits
from toolkit.errors import UserError
from toolkit.tasks import register
from toolkit.tasks.base import Bundled, DataSpec, Prepared
from toolkit.tasks.common import (Classifier, base_info, bundle_labels, check_saved_task, class_labels,
                                  evaluate_classification, label_ids, predict_classification, reconcile_labels,
                                  seeded, write_metadata)


def image_shape(img: Any) -> tuple[int, int, int]:
    """(C, H, W) of an example's image array."""
    a = np.asarray(img)
    if a.ndim == 2:
        return 1, a.shape[0], a.shape[1]
    if a.ndim == 3:
        return a.shape[2], a.shape[0], a.shape[1]
    raise UserError(f"an image has shape {a.shape}: expected (H, W) or (H, W, C)")


def to_chw(img: Any) -> torch.Tensor:
    """(H, W) or (H, W, C) array -> (C, H, W) float32 tensor."""
    a = np.asarray(img, dtype=np.float32)
    a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)
    return torch.from_numpy(np.ascontiguousarray(a))


def to_hwc(x: torch.Tensor) -> np.ndarray:
    """(C, H, W) tensor -> the example layout: (H, W) for one channel, else (H, W, C)."""
    a = x.numpy()
    return a[0] if a.shape[0] == 1 else a.transpose(1, 2, 0)


def scale_description(splits: Splits) -> str:
    """How raw pixels became the model's [0, 1] input, for preprocess.json."""
    return "x/16" if splits.sources.get("train") == "builtin:digits" else "x/255"


@register("image-classification")
class ImageClassification(Classifier):
    name: str
    data = DataSpec(images=True, labels=True)
    builtins = ("cnn-small",)
    auto_class = "AutoModelForImageClassification"
    optimum_task = "image-classification"

    def fields(self, data: DataConfig) -> dict[str, tuple[str, str]]:
        return {}

    def dummy_inputs(self, model: Any, batch: int, seq_len: int) -> dict[str, torch.Tensor]:
        cfg = getattr(model, "config", None)
        channels = getattr(cfg, "num_channels", None) or getattr(cfg, "in_channels", None)
        size = getattr(cfg, "image_size", None)
        if channels is None or size is None:
            raise UserError("export: the image model's config has no num_channels/image_size; pass example_inputs "
                            "= {'pixel_values': tensor of shape (B, C, H, W)}")
        h, w = (size, size) if isinstance(size, int) else tuple(size)
        return {"pixel_values": torch.randn(batch, channels, h, w, generator=torch.Generator().manual_seed(0))}

    def reference_batch(self, batch: dict[str, torch.Tensor], model: Any) -> dict[str, torch.Tensor]:
        x = batch["pixel_values"].float()
        return {"pixel_values": x[None] if x.dim() == 3 else x}

    def latency_samples(self, tokenizer: Any, examples: list[dict[str, Any]], n: int, seq_len: int,
                        pad_id: int) -> dict[str, Any]:
        imgs = [to_chw(examples[i % len(examples)]["image"]).numpy() for i in range(n)]
        return {"pixel_values": np.stack(imgs).astype(np.float32)}

    def encode_bundle(self, folder: Path | None, max_length: int, labels: list[str],
                      splits: dict[str, Sequence[dict[str, Any]]]) -> Bundled:
        from toolkit.models.pretrained import read_preprocess

        preprocess = (read_preprocess(folder) if folder is not None else None) or {}
        labels = bundle_labels(folder, preprocess, labels)
        label2id = {n: i for i, n in enumerate(labels)}

        def encode(examples: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
            ys = label_ids(examples, label2id, split)
            return [{"pixel_values": to_chw(ex["image"]), "labels": y} for ex, y in zip(examples, ys)]

        def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            return {"pixel_values": torch.stack([it["pixel_values"] for it in items]),  # (B, C, H, W)
                    "labels": torch.tensor([it["labels"] for it in items], dtype=torch.long)}

        return Bundled({k: encode(v, k) for k, v in splits.items()}, collate, labels, None, preprocess)

    def prepare(self, recipe: Recipe, splits: Splits, work_dir: Path) -> Prepared:
        from toolkit.models import cnn_small, load_model, read_labels, resolve_source
        from toolkit.models.pretrained import check_model_dir, read_preprocess

        labels = class_labels(splits.labels, splits.train)
        if not splits.train:
            raise UserError("image-classification: the training split has no images; check data.train")
        shape = image_shape(splits.train[0]["image"])
        for split in ("train", "validation", "eval"):
            for i, ex in enumerate(getattr(splits, split)):
                if image_shape(ex["image"]) != shape:
                    raise UserError(f"{split} image {i} is {image_shape(ex['image'])} (C, H, W), the first training "
                                    f"image is {shape}: images must share one size and channel count")
        channels, size = shape[0], [shape[1], shape[2]]
        src = resolve_source(recipe)
        notes: list[str] = []
        info: dict[str, Any] = {}
        if src.kind == "builtin":
            with seeded(recipe.seed):
                model = cnn_small(recipe, channels, size, labels)
        else:
            check_saved_task(src.path, self.name, read_preprocess(src.path))
            config = check_model_dir(src.path)
            if config.model_type != "edge-cnn":
                raise UserError(f"{src.path} holds a '{config.model_type}' model: image-classification loads folders "
                                f"of this toolkit's CNN (builtin:cnn-small, saved by an earlier run)")
            if config.in_channels != channels:
                raise UserError(f"{src.path}: the model takes {config.in_channels}-channel images, the data has "
                                f"{channels} channels")
            labels, order = reconcile_labels(labels, read_labels(src.path, config), notes)
            with seeded(recipe.seed):
                model, loading = load_model(
                    src.path, self.auto_class, "an image-classification",
                    config_updates={"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                                    "label2id": {n: i for i, n in enumerate(labels)}},
                    dropout=recipe.train.dropout, ignore_mismatched_sizes=True)
            info.update(label_order=order, **loading)
        label2id = {n: i for i, n in enumerate(labels)}
        steps = list(recipe.data.augment)

        def encode(examples: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
            ys = label_ids(examples, label2id, split)
            items = [{"pixel_values": to_chw(ex["image"]), "labels": y} for ex, y in zip(examples, ys)]
            if split == "train" and steps:
                for it in items:
                    it["augment"] = True
            return items

        def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
            pixels = [it["pixel_values"] for it in items]
            if steps and items and items[0].get("augment"):
                from toolkit.data.images import augment_image

                # One draw from the global RNG per batch seeds the batch's augmentations: replayable.
                gen = torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))
                pixels = [to_chw(augment_image(to_hwc(x), steps, gen)) for x in pixels]
            return {"pixel_values": torch.stack(pixels),  # (B, C, H, W)
                    "labels": torch.tensor([it["labels"] for it in items], dtype=torch.long)}  # (B,)

        preprocess = {"task": self.name, "image_size": size, "channels": channels, "layout": "NCHW",
                      "dtype": "float32", "scale": scale_description(splits), "input_names": ["pixel_values"],
                      "labels": labels}

        def save(m: torch.nn.Module, out_dir: Path) -> None:
            from toolkit.models import unwrap

            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            unwrap(m).save_pretrained(out_dir, safe_serialization=True)
            write_metadata(out_dir, preprocess, labels)

        info = {**base_info(model, src), **info, "tokenizer": None, "image_size": size, "channels": channels,
                "num_labels": len(labels), "augment": steps, "notes": notes}
        return Prepared(model=model, train_set=encode(splits.train, "train"),
                        val_set=encode(splits.validation, "validation"), eval_set=encode(splits.eval, "eval"),
                        collate=collate, primary_metric="accuracy", higher_is_better=True, save=save, info=info,
                        labels=labels, preprocess=preprocess)

    def evaluate(self, model: torch.nn.Module, prepared: Prepared, dataset: Sequence[Any], batch_size: int,
                 device: torch.device) -> dict[str, float]:
        """{"loss", "accuracy" (fraction), "examples"}."""
        return evaluate_classification(model, dataset, prepared.collate, batch_size, device)

    def predict(self, model: torch.nn.Module, prepared: Prepared, dataset: Sequence[Any], batch_size: int,
                device: torch.device) -> dict[str, Any]:
        """{"probs": (N, K), "labels": (N,)} as numpy arrays, for F1 / AUC-ROC / per-group metrics."""
        return predict_classification(model, dataset, prepared.collate, batch_size, device)

    def load(self, model_dir: Path) -> torch.nn.Module:
        from toolkit.models import load_model

        model, _ = load_model(Path(model_dir), self.auto_class, "an image-classification")
        return model
