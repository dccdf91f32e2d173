"""Variants: the models of a run (the trained baseline and each compression step's result) and their lineage.

A variant lives in ``variants/<name>/`` with a ``variant.json`` saying what made it and where its model is: a
PyTorch folder (``model/``), an ONNX graph (``model.onnx``) or an ExecuTorch program (``model.pte``). Paths inside
the variant's folder are stored relative to it and re-rooted where the folder is found now, so a copied or moved
run directory keeps working; one rule (:func:`reroot`) does this for every stage.
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from toolkit.errors import UserError

VARIANT_SCHEMA = 1
PATH_FIELDS = ("path", "model_dir", "onnx")


@dataclass
class Variant:
    """One model of a run: the trained baseline or the result of a compression step."""

    name: str
    parent: str | None
    method: str
    path: Path
    """variants/<name>/"""
    model_dir: Path | None = None
    """a PyTorch model folder that the task's ``load`` reads (variants/<name>/model), when there is one"""
    onnx: Path | None = None
    """an ONNX file (variants/<name>/model.onnx) when the variant is ONNX (quantized) or was exported"""
    info: dict[str, Any] = field(default_factory=dict)
    """what the step did: params before/after, sparsity per layer, file size, layers kept in float, ..."""
    within_budget: bool | None = None
    """the accuracy guard's verdict (None when no guard ran)"""

    @property
    def pte(self) -> Path | None:
        """The variant's ExecuTorch program (model.pte), when it has one."""
        p = Path(self.path) / "model.pte"
        return p if p.is_file() else None

    @property
    def has_pytorch(self) -> bool:
        return self.model_dir is not None and Path(self.model_dir).is_dir()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: paths inside the variant's folder relative to it, others absolute."""
        d = dataclasses.asdict(self)
        folder = Path(self.path).absolute()
        d["path"] = "."
        for k in ("model_dir", "onnx"):
            p = d[k]
            if p is None:
                continue
            p = Path(p).absolute()
            d[k] = p.relative_to(folder).as_posix() if p.is_relative_to(folder) else str(p)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any], folder: Path) -> "Variant":
        """A variant read from ``folder``/variant.json, its paths re-rooted at ``folder``."""
        d = {k: v for k, v in d.items() if k in {f.name for f in dataclasses.fields(cls)}}
        d.setdefault("name", Path(folder).name)
        d.setdefault("parent", None)
        d.setdefault("method", "")
        d["path"] = Path(folder)
        for k in ("model_dir", "onnx"):
            d[k] = reroot(d.get(k), Path(folder))
        return cls(**d)

    def save(self) -> Path:
        """Write variants/<name>/variant.json (atomically)."""
        from toolkit.rundir import atomic_write_json

        out = Path(self.path) / "variant.json"
        atomic_write_json(out, {"schema_version": VARIANT_SCHEMA, **self.to_dict()})
        return out


def reroot(value: str | Path | None, folder: Path) -> Path | None:
    """A stored path, where it is now: relative paths are inside ``folder``; an absolute one from an older
    variant.json is taken from ``folder`` when a file of its name is there (the run directory was moved or
    copied: its own files win), else as written."""
    if not value:
        return None
    p = Path(value)
    if not p.is_absolute():
        return Path(folder) / p
    here = Path(folder) / p.name
    return here if here.exists() else p


def load_variant(folder: Path) -> Variant:
    f = Path(folder) / "variant.json"
    try:
        d = json.loads(f.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise UserError(f"{f}: unreadable ({e}); rerun the stage that made variant '{Path(folder).name}'") from None
    d.pop("schema_version", None)
    return Variant.from_dict(d, Path(folder))


def load_variants(variants_dir: Path) -> dict[str, Variant]:
    """Every variant that has a variant.json, by name (base first, then in creation order)."""
    found = []
    if Path(variants_dir).is_dir():
        for p in Path(variants_dir).iterdir():
            f = p / "variant.json"
            if f.is_file():
                found.append((f.stat().st_mtime, load_variant(p)))
    found.sort(key=lambda t: (t[1].name != "base", t[0]))
    return {v.name: v for _, v in found}


def lineage(variant: Variant, variants: dict[str, Variant]) -> Iterator[Variant]:
    """The variant, its parent, its parent's parent ... (each once)."""
    seen: set[str] = set()
    v: Variant | None = variant
    while v is not None and v.name not in seen:
        seen.add(v.name)
        yield v
        v = variants.get(v.parent) if v.parent else None


def nearest_model_dir(variant: Variant, variants: dict[str, Variant]) -> Path | None:
    """The PyTorch folder of ``variant`` or of its nearest ancestor that has one (the tokenizer, labels and
    preprocessing live there; lossy exports are checked against it); None for a chain of ONNX-only variants."""
    return next((Path(v.model_dir) for v in lineage(variant, variants) if v.has_pytorch), None)


def bundle_source(variant: Variant, variants: dict[str, Variant]) -> Path | None:
    """Where the tokenizer/labels/preprocess files of ``variant`` come from: the nearest model folder, else the
    folder of the base ONNX file (an ONNX ``model.source`` exported by optimum holds its tokenizer beside it)."""
    model_dir = nearest_model_dir(variant, variants)
    if model_dir is not None:
        return model_dir
    base = variants.get("base")
    source = (base.info or {}).get("source") if base is not None else None
    return Path(source).parent if source else None


def config_of(variant: Variant, variants: dict[str, Variant]) -> dict[str, Any]:
    """config.json of the nearest model folder (or beside the base ONNX file), {} when there is none."""
    folder = bundle_source(variant, variants)
    cfg = folder / "config.json" if folder is not None else None
    if cfg is None or not cfg.is_file():
        return {}
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def main_file(variant: Variant) -> Path:
    """The file (or folder) that holds a variant's model: model.onnx, model.pte, or model/."""
    if variant.onnx is not None and Path(variant.onnx).exists():
        return Path(variant.onnx)
    if variant.pte is not None:
        return variant.pte
    if variant.has_pytorch:
        return Path(variant.model_dir)
    raise UserError(f"{variant.path}: the step wrote no model (no model.onnx, model.pte or model/)")


def size_bytes(path: Path | None) -> int:
    """A file's size, or a folder's total (0 for None / missing)."""
    if path is None or not Path(path).exists():
        return 0
    p = Path(path)
    if p.is_file():
        return p.stat().st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())


def graph_files(folder: Path, roles: tuple[str, ...], onnx: Path | None = None) -> dict[str, Path]:
    """The ONNX graphs of a variant folder by role: {"model": ...} or, for ("encoder", "decoder"), both.

    ``onnx`` (Variant.onnx) wins for the main graph; quantized graphs may carry a suffix
    (``encoder_model_quantized.onnx``), so names are matched by prefix.
    """
    folder = Path(folder)
    if "encoder" in roles:
        enc = _first(folder, "encoder_model", onnx)
        dec = _first(folder, "decoder_model_merged") or _first(folder, "decoder_model")
        return {k: v for k, v in (("encoder", enc), ("decoder", dec)) if v is not None}
    if onnx is not None and Path(onnx).is_file():
        return {"model": Path(onnx)}
    main = folder / "model.onnx"
    if main.is_file():
        return {"model": main}
    others = sorted(p for p in folder.glob("*.onnx") if p.is_file())
    return {"model": others[0]} if others else {}


def encoder_decoder_graphs(folder: Path, encoder: Path | None = None) -> dict[str, Path]:
    """An encoder graph's folder read as an encoder-decoder's: {"encoder", "decoder"} where present."""
    return graph_files(folder, ("encoder", "decoder"), encoder)


def _first(folder: Path, prefix: str, hint: Path | None = None) -> Path | None:
    if hint is not None and Path(hint).name.startswith(prefix) and Path(hint).is_file():
        return Path(hint)
    hits = sorted(p for p in folder.glob(f"{prefix}*.onnx") if p.is_file()
                  and not (prefix == "decoder_model" and "with_past" in p.name))
    return hits[0] if hits else None
