"""One registry of compression methods (torchao's ``quantize_`` + ``AOBaseConfig`` shape).

A method is a config dataclass (subclass of ``StepConfig``) decorated with ``@method("name")`` and a handler
decorated with ``@handler(ThatConfig)``, both in one module of ``toolkit/compress/``. Modules are discovered
(pkgutil), so adding a method is one new file: the registry is the only list. Method modules import heavy
libraries (onnxruntime, torchao) inside their handlers, so parsing a recipe stays cheap.

A handler turns its parent ``Variant`` into a new one, writing into ``ctx.variant_dir(step.name)``:

    @handler(PruneConfig)
    def prune(step: PruneConfig, parent: Variant, ctx: Context) -> Variant: ...
"""
from __future__ import annotations

import dataclasses
import importlib
import json
import pkgutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from toolkit.config import Recipe, _build, _f, fields_of
from toolkit.errors import UserError, did_you_mean

NOT_METHOD_MODULES = {"registry", "stage", "guard", "common", "experimental"}


@dataclass
class StepConfig:
    """Keys every [[compress]] step has."""

    name: str = _f("", "the variant's name (default: the method's name, made unique)")
    method: str = _f("", "distill | prune | quantize | fp16")
    from_: str = _f("", "parent variant: 'base' is the trained model; default: the previous step's variant")

    def check(self, where: str) -> None:
        """Value checks beyond types; raise UserError naming ``where`` and the key. Override per method."""


Handler = Callable[[StepConfig, "Variant", "Context"], "Variant"]
METHODS: dict[str, type[StepConfig]] = {}
HANDLERS: dict[type[StepConfig], Handler] = {}
_discovered = False


def method(name: str) -> Callable[[type], type]:
    """Class decorator registering a step config dataclass under ``method = name``."""

    def deco(cls: type) -> type:
        if name in METHODS and METHODS[name] is not cls:
            raise ValueError(f"compression method {name!r} registered twice")
        METHODS[name] = cls
        cls.method_name = name
        return cls

    return deco


def handler(config_cls: type[StepConfig]) -> Callable[[Handler], Handler]:
    """Function decorator: the handler that runs steps of ``config_cls``."""

    def deco(fn: Handler) -> Handler:
        HANDLERS[config_cls] = fn
        return fn

    return deco


def discover() -> dict[str, type[StepConfig]]:
    """Import every method module of toolkit/compress once; returns METHODS."""
    global _discovered
    if not _discovered:
        import toolkit.compress as pkg

        for info in pkgutil.iter_modules(pkg.__path__):
            if info.name not in NOT_METHOD_MODULES and not info.name.startswith("_"):
                importlib.import_module(f"toolkit.compress.{info.name}")
        _discovered = True
    return METHODS


def parse_steps(raw: list[dict[str, Any]], file: str) -> list[StepConfig]:
    """[[compress]] tables -> typed step configs with unique names and parents filled in.

    Raises UserError naming the file, the step and the key (with the nearest valid one).
    """
    methods = discover()
    steps: list[StepConfig] = []
    names: set[str] = {"base"}
    previous = "base"
    for i, table in enumerate(raw, 1):
        where = f"{file}: [[compress]] #{i}"
        name = table.get("method")
        if not isinstance(name, str) or not name:
            raise UserError(f"{where}: missing key 'method' ({', '.join(sorted(methods))})")
        if name not in methods:
            raise UserError(f"{where}: unknown method '{name}'{did_you_mean(name, sorted(methods))}")
        cls = methods[name]
        data = {("from_" if k == "from" else k): v for k, v in table.items()}
        if "from_" in table:
            raise UserError(f"{where}: unknown key 'from_'; did you mean 'from'?")
        step = _build(cls, data, f"compress #{i}", file)
        step.check(where)
        if not step.name:
            step.name = name if name not in names else next(f"{name}-{n}" for n in range(2, 999) if f"{name}-{n}" not in names)
        if step.name in names:
            raise UserError(f"{where}: name = '{step.name}' is already used by an earlier variant; pick another")
        if "/" in step.name or step.name.startswith("."):
            raise UserError(f"{where}: name = '{step.name}' must be a plain name (it names variants/<name>/)")
        step.from_ = step.from_ or previous
        if step.from_ not in names:
            raise UserError(f"{where}: from = '{step.from_}' is not an earlier variant{did_you_mean(step.from_, sorted(names))}")
        names.add(step.name)
        previous = step.name
        steps.append(step)
    return steps


def step_to_dict(step: StepConfig) -> dict[str, Any]:
    """A step as its recipe table (``from_`` written back as ``from``)."""
    out = {}
    for name in fields_of(type(step)):
        out["from" if name == "from_" else name] = getattr(step, name)
    return out


# ---- variants ---------------------------------------------------------------------------------------

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

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        for k in ("path", "model_dir", "onnx"):
            d[k] = str(d[k]) if d[k] is not None else None
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Variant":
        d = dict(d)
        for k in ("path", "model_dir", "onnx"):
            d[k] = Path(d[k]) if d.get(k) else None
        return cls(**d)

    def save(self) -> Path:
        """Write variants/<name>/variant.json (atomically)."""
        from toolkit.rundir import atomic_write_json

        out = self.path / "variant.json"
        atomic_write_json(out, {"schema_version": 1, **self.to_dict()})
        return out


def load_variants(variants_dir: Path) -> dict[str, Variant]:
    """Every variant that has a variant.json, by name (base first, then in creation order)."""
    found = []
    if variants_dir.is_dir():
        for p in variants_dir.iterdir():
            f = p / "variant.json"
            if f.is_file():
                d = json.loads(f.read_text(encoding="utf-8"))
                d.pop("schema_version", None)
                found.append((f.stat().st_mtime, Variant.from_dict(d)))
    found.sort(key=lambda t: (t[1].name != "base", t[0]))
    return {v.name: v for _, v in found}


@dataclass
class Context:
    """What a handler may use besides its step and parent."""

    recipe: Recipe
    run: Any
    """the RunDir"""
    emit: Any
    """a StageEmitter for stage 'compress'"""
    cache: dict[str, Any] = field(default_factory=dict)

    def variant_dir(self, name: str) -> Path:
        return self.run.variant(name)

    @property
    def task(self):
        from toolkit.tasks import get_task

        return get_task(self.recipe.task)

    def splits(self):
        """The run's data splits (loaded once)."""
        if "splits" not in self.cache:
            from toolkit.data import load_splits

            self.cache["splits"] = load_splits(self.recipe)
        return self.cache["splits"]

    def prepare(self, model_dir: Path):
        """The task's Prepared for a saved model folder: the model loaded, the splits encoded with its tokenizer."""
        model_cfg = dataclasses.replace(self.recipe.model, source=str(model_dir))
        recipe = dataclasses.replace(self.recipe, model=model_cfg)
        return self.task.prepare(recipe, self.splits(), self.run.train)
