"""Fingerprints: a sha256 per split over a canonical serialisation of its examples (for manifest.json).

Each example is written as one JSON line of its fields, keys sorted; an image field is written as its dtype
and shape in that line, followed by its raw C-order bytes. So the fingerprint changes with any text, label,
pixel or order change, and not with the machine or Python version.
"""
from __future__ import annotations

import hashlib
import json

import numpy as np

from toolkit.data.types import Example


def fingerprint(examples: list[Example]) -> str:
    """The sha256 (hex) of ``examples``."""
    h = hashlib.sha256()
    for e in examples:
        arrays = []
        record = {}
        for k in sorted(e):
            v = e[k]
            if isinstance(v, np.ndarray):
                record[k] = {"dtype": str(v.dtype), "shape": list(v.shape)}
                arrays.append(np.ascontiguousarray(v))
            else:
                record[k] = v
        h.update(json.dumps(record, ensure_ascii=False, sort_keys=True, separators=(",", ":")).encode("utf-8"))
        h.update(b"\n")
        for a in arrays:
            h.update(a.tobytes())
    return h.hexdigest()
