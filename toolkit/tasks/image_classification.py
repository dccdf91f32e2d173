"""image-classification: an image (H, W) or (H, W, C) in [0, 1], of any size -> one of ``Splits.labels``.

Two kinds of model, two preprocessings:
- this toolkit's CNN (built-in cnn-small, or a folder of it, model_type edge-cnn): images are converted to the
  model's size and channel count (the built-in: the training images' most common ones), bilinear, as before;
  preprocess.json says the size and how raw pixels were scaled.
- any Hugging Face image classifier in a folder (ViT, DeiT, ResNet, MobileNetV2, ConvNeXt, EfficientNet, MobileViT
  and families shaped like them): loaded with AutoModelForImageClassification, its head fitted to the data's
  classes, and preprocessed exactly as its saved image processor (preprocessor_config.json) says. The processor's
  work is resolved into plain steps (``toolkit.data.images.processor_steps``: convert to the model's channels,
  resize, centre crop, rescale, normalise, channel flip), checked against the processor on a probe image and
  written to preprocess.json, so training, evaluation, export verification and the device examples apply the
  same steps. The size steps run once per example (items hold the bytes); the value steps, after augmentation,
  in ``collate``.

``data.augment`` is applied in ``collate`` to training items only (they carry an "augment" flag), with a generator
seeded from torch's global RNG, so a checkpoint's RNG state replays the same augmentations.
"""
from __future__ import annotations

import inspect
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Sequence

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

OWN_CNN = "edge-cnn"  # this toolkit's CNN (toolkit.models.cnn): preprocessed by size and scale, not a processor


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


def _replay_seed() -> torch.Generator:
    # One draw from the global RNG per batch seeds the batch's augmentations: a checkpoint replays them.
    return torch.Generator().manual_seed(int(torch.randint(0, 2**62, (1,)).item()))


# ---- this toolkit's CNN: one size and channel count --------------------------------------------------------------

def fitting_codec(labels: list[str], channels: int, size: list[int], augment: list[str],
                  notes: list[str] | None) -> tuple[Callable, Callable]:
    """(encode, collate) for a model taking ``channels`` x ``size`` (H, W) images in [0, 1]; images of another
    size or channel count are converted (bilinear), counted in ``notes``."""
    label2id = {n: i for i, n in enumerate(labels)}
    mode = "L" if channels == 1 else "RGB"

    def encode(examples: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        ys = label_ids(examples, label2id, split)
        items, changed = [], 0
        for ex, y in zip(examples, ys):
            img = ex["image"]
            if image_shape(img) != (channels, *size):
                from toolkit.data.images import fit_image

                img, changed = fit_image(img, (size[1], size[0]), mode), changed + 1
            items.append({"pixel_values": to_chw(img), "labels": y})
        if changed and notes is not None:
            notes.append(f"{split}: converted {changed} images to {size[1]}x{size[0]} {mode} (the model's input)")
        if split == "train" and augment:
            for it in items:
                it["augment"] = True
        return items

    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = [it["pixel_values"] for it in items]
        if augment and items and items[0].get("augment"):
            from toolkit.data.images import augment_image

            gen = _replay_seed()
            pixels = [to_chw(augment_image(to_hwc(x), augment, gen)) for x in pixels]
        return {"pixel_values": torch.stack(pixels),  # (B, C, H, W)
                "labels": torch.tensor([it["labels"] for it in items], dtype=torch.long)}  # (B,)

    return encode, collate


# ---- a Hugging Face model: its image processor's steps -----------------------------------------------------------

def processor_codec(labels: list[str], steps: list[dict], augment: list[str]) -> tuple[Callable, Callable]:
    """(encode, collate) applying a processor's steps: size steps once per example (items hold (H, W, C) bytes),
    value steps per batch, after the augmentation (which works on [0, 1] pixels)."""
    from toolkit.data.images import geometry, output_size, pixel_values

    label2id = {n: i for i, n in enumerate(labels)}
    fixed = output_size(steps)

    def encode(examples: Sequence[dict[str, Any]], split: str) -> list[dict[str, Any]]:
        ys = label_ids(examples, label2id, split)
        items = [{"pixels": geometry(ex["image"], steps), "labels": y} for ex, y in zip(examples, ys)]
        if fixed is None and len({it["pixels"].shape for it in items}) > 1:
            raise UserError(f"{split}: the image processor keeps each image's aspect ratio (no centre crop), so "
                            f"images of other shapes cannot share a batch: set do_center_crop and crop_size in "
                            f"preprocessor_config.json, or give images of one shape")
        if split == "train" and augment:
            for it in items:
                it["augment"] = True
        return items

    def collate(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        pixels = [it["pixels"] for it in items]
        if augment and items and items[0].get("augment"):
            from toolkit.data.images import augment_image

            gen = _replay_seed()
            pixels = [np.atleast_3d(augment_image(np.squeeze(p / 255.0, -1) if p.shape[2] == 1 else p / 255.0,
                                                  augment, gen)) * 255.0 for p in pixels]
        values = np.stack([pixel_values(p, steps) for p in pixels])  # (B, C, H, W)
        return {"pixel_values": torch.from_numpy(values),
                "labels": torch.tensor([it["labels"] for it in items], dtype=torch.long)}  # (B,)

    return encode, collate


def processor_plan(path: Path, config: Any) -> tuple[Any, list[dict], dict[str, Any]]:
    """(the folder's image processor, its steps, what preprocess.json says about them).

    Raises:
        UserError: no preprocessor_config.json, or a processor whose work the steps cannot replay (named).
    """
    from toolkit.data.images import check_steps, output_size, processor_steps
    from toolkit.models.pretrained import load_image_processor

    processor = load_image_processor(path)
    channels = int(getattr(config, "num_channels", None) or 3)
    where = f"{Path(path) / 'preprocessor_config.json'} ({type(processor).__name__})"
    try:
        steps = processor_steps(processor, channels)
        check_steps(processor, steps)
    except ValueError as e:
        raise UserError(f"{where}: {e}; image-classification replays resize / centre crop / rescale / normalise / "
                        f"channel flip (so devices preprocess the same way): save a processor that does only "
                        f"those") from None
    return processor, steps, {"channels": channels, "image_size": output_size(steps),
                              "processor": type(processor).__name__, "steps": steps}


def bundle_codec(preprocess: dict[str, Any], labels: list[str], images: Sequence[Any]) -> tuple[Callable, Callable]:
    """(encode, collate) from preprocess.json alone: a processor's steps, else its image size and channels, else
    (no preprocess.json) the most common shape of ``images``."""
    if preprocess.get("steps"):
        return processor_codec(labels, preprocess["steps"], [])
    if preprocess.get("image_size"):
        channels, size = int(preprocess.get("channels", 1)), list(preprocess["image_size"])
    else:
        channels, *size = Counter(image_shape(img) for img in images).most_common(1)[0][0] if images else (1, 8, 8)
    return fitting_codec(labels, channels, size, [], None)


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
                        pad_id: int, preprocess: dict[str, Any] | None = None) -> dict[str, Any]:
        """``n`` eval images as the model takes them: with ``preprocess`` (preprocess.json), its steps or size;
        without, the images as they are (converted to their most common size when they differ)."""
        rows = [examples[i % len(examples)] for i in range(n)]
        labels = sorted({str(ex["label"]) for ex in rows})
        relabel = [{**ex, "label": str(ex["label"])} for ex in rows]
        encode, collate = bundle_codec(preprocess or {}, labels, [ex["image"] for ex in rows])
        return {"pixel_values": collate(encode(relabel, "eval"))["pixel_values"].numpy()}

    def encode_bundle(self, folder: Path | None, max_length: int, labels: list[str],
                      splits: dict[str, Sequence[dict[str, Any]]]) -> Bundled:
        from toolkit.models.pretrained import read_preprocess

        preprocess = (read_preprocess(folder) if folder is not None else None) or {}
        labels = bundle_labels(folder, preprocess, labels)
        encode, collate = bundle_codec(preprocess, labels, [ex["image"] for v in splits.values() for ex in v])
        return Bundled({k: encode(v, k) for k, v in splits.items()}, collate, labels, None, preprocess, encode)

    def prepare(self, recipe: Recipe, splits: Splits, work_dir: Path) -> Prepared:
        from toolkit.models import cnn_small, load_model, read_labels, resolve_source
        from toolkit.models.pretrained import check_model_dir, read_preprocess

        labels = class_labels(splits.labels, splits.train)
        if not splits.train:
            raise UserError("image-classification: the training split has no images; check data.train")
        src = resolve_source(recipe)
        notes: list[str] = []
        info: dict[str, Any] = {}
        augment = list(recipe.data.augment)
        processor = None
        if src.kind == "builtin":
            channels, *size = Counter(image_shape(ex["image"]) for ex in splits.train).most_common(1)[0][0]
            with seeded(recipe.seed):
                model = cnn_small(recipe, channels, size, labels)
        else:
            check_saved_task(src.path, self.name, read_preprocess(src.path))
            config = check_model_dir(src.path)
            own = config.model_type == OWN_CNN
            if own:
                channels, size = int(config.in_channels), list(config.image_size)
            else:
                processor, steps, plan = processor_plan(src.path, config)
            labels, order = reconcile_labels(labels, read_labels(src.path, config), notes)
            with seeded(recipe.seed):
                model, loading = load_model(
                    src.path, self.auto_class, "an image-classification",
                    config_updates={"num_labels": len(labels), "id2label": dict(enumerate(labels)),
                                    "label2id": {n: i for i, n in enumerate(labels)}},
                    dropout=recipe.train.dropout, ignore_mismatched_sizes=True)
            info.update(label_order=order, **loading)
            if "labels" not in inspect.signature(model.forward).parameters:
                raise UserError(f"{src.path}: {type(model).__name__} computes no loss from labels, so it cannot be "
                                f"trained here; save the family's plain image classifier instead (config.json "
                                f"architectures, e.g. without 'WithTeacher')")
        if processor is None:
            encode, collate = fitting_codec(labels, channels, size, augment, notes)
            preprocess = {"task": self.name, "image_size": size, "channels": channels, "layout": "NCHW",
                          "dtype": "float32", "scale": scale_description(splits), "input_names": ["pixel_values"],
                          "labels": labels}
        else:
            encode, collate = processor_codec(labels, steps, augment)
            channels, size = plan["channels"], plan["image_size"]
            if size is not None and getattr(model.config, "image_size", None) is None:
                model.config.image_size = size  # ResNet's config names none: MACs and dummy inputs need one
            preprocess = {"task": self.name, **plan, "layout": "NCHW", "dtype": "float32",
                          "scale": scale_description(splits), "input_names": ["pixel_values"], "labels": labels}

        def save(m: torch.nn.Module, out_dir: Path) -> None:
            from toolkit.models import unwrap
            from toolkit.models.reshaped import save_model

            out_dir = Path(out_dir)
            out_dir.mkdir(parents=True, exist_ok=True)
            if processor is None:
                unwrap(m).save_pretrained(out_dir, safe_serialization=True)
            else:  # a pruned HF CNN's config cannot say its sizes: save_model records them beside
                save_model(unwrap(m), out_dir)
                processor.save_pretrained(out_dir)
            write_metadata(out_dir, preprocess, labels)

        train_set = encode(splits.train, "train")
        info = {**base_info(model, src), **info, "tokenizer": None, "image_size": size, "channels": channels,
                "num_labels": len(labels), "augment": augment, "notes": notes}
        return Prepared(model=model, train_set=train_set, val_set=encode(splits.validation, "validation"),
                        eval_set=encode(splits.eval, "eval"), collate=collate, primary_metric="accuracy",
                        higher_is_better=True, save=save, info=info, labels=labels, preprocess=preprocess)

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
