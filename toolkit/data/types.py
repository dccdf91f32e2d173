"""What the data stage hands to tasks: examples per split, the label set and the fingerprints.

An example is a plain dict, by task:
- text-classification:  {"text": str, "label": str, "group"?: str}
- language-modeling:    {"text": str}
- seq2seq:              {"source": str, "target": str}
- image-classification: {"image": numpy float32 array (H, W) or (H, W, C), values in [0, 1], "label": str, "group"?: str}
Labels stay strings (the class names as written in the data); ``Splits.labels`` fixes their order (ids).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

Example = dict[str, Any]


@dataclass
class Splits:
    """The three splits of a run, after cleaning and splitting."""

    train: list[Example]
    validation: list[Example]
    eval: list[Example]
    labels: list[str] = field(default_factory=list)
    """class names in id order (classification tasks; empty otherwise)"""
    fingerprints: dict[str, str] = field(default_factory=dict)
    """sha256 of each split's examples ("train", "validation", "eval"), for manifest.json"""
    notes: list[str] = field(default_factory=list)
    """what cleaning and checks did (rows dropped, constant images flagged, splits carved), for events"""
    sources: dict[str, str] = field(default_factory=dict)
    """where each split came from: a path, 'builtin:digits', or 'carved from train'"""

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "eval": len(self.eval)}
