"""Compression steps as typed settings: the ``[[compress]]`` tables of a recipe, parsed once (torchao's
``quantize_`` + ``AOBaseConfig`` shape).

A method is a settings dataclass (a ``StepConfig``) decorated with ``@method("name")`` and a handler decorated
with ``@handler(ThatConfig)``, both in one module of ``toolkit/compress/``; a method whose ``scheme`` key picks
the algorithm (``quantize``) registers one handler per scheme, ``@handler(QuantizeConfig, scheme="qat")``, each in
its own module. The registries (``toolkit.registry.METHODS`` and :data:`HANDLERS` here) are the only lists.

    @method("prune")
    @dataclass
    class PruneConfig(StepConfig): ...

    @handler(PruneConfig)
    def prune(step: PruneConfig, parent: Variant, ctx: Context) -> Variant: ...
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from toolkit.errors import UserError, did_you_mean
from toolkit.registry import METHODS
from toolkit.schema import build, fields_of, setting


@dataclass
class StepConfig:
    """Keys every [[compress]] step has."""

    name: str = setting("", "the variant's name (default: the method's name, made unique)")
    method: str = setting("", "distill | prune | quantize | fp16")
    from_: str = setting("", "parent variant: 'base' is the trained model; default: the previous step's variant")

    method_name = ""
    """the registered name (set by ``@method``)"""

    def check(self, where: str) -> None:
        """Value checks beyond types; raise UserError naming ``where`` and the key. Override per method."""

    def check_model(self, model: Any, task: Any, where: str, from_base: bool) -> None:
        """Whether the step can apply to ``model`` (its structure on the meta device: no weights) for ``task``,
        before any work: raise UserError naming ``where``, the family and what would work instead. ``model`` is
        None for an ONNX model source. ``from_base``: the step's parent is the trained model itself (a later
        step's parent may be smaller, so its sizes are only checked from the base)."""


Handler = Callable[..., Any]
HANDLERS: dict[tuple[type, str | None], Handler] = {}
"""(config class, scheme or None) -> the function that runs such steps"""


def method(name: str) -> Callable[[type], type]:
    """Class decorator registering a step settings dataclass under ``method = name``."""

    def deco(cls: type) -> type:
        cls.method_name = name
        METHODS.add(name, cls)
        return cls

    return deco


def handler(config_cls: type, scheme: str | None = None) -> Callable[[Handler], Handler]:
    """Function decorator: the handler of steps of ``config_cls`` (of one ``scheme`` when the method has them)."""

    def deco(fn: Handler) -> Handler:
        HANDLERS[(config_cls, scheme)] = fn
        return fn

    return deco


def schemes(config_cls: type) -> list[str]:
    """The schemes registered for a method, in registration order."""
    METHODS.discover()
    return [s for (cls, s) in HANDLERS if cls is config_cls and s is not None]


def handler_for(step: StepConfig) -> Handler:
    """The handler that runs ``step`` (by its class and, where it has one, its scheme)."""
    METHODS.discover()
    scheme = getattr(step, "scheme", None)
    fn = HANDLERS.get((type(step), scheme)) or HANDLERS.get((type(step), None))
    if fn is None:
        raise UserError(f"compression method '{type(step).method_name}'"
                        f"{f' scheme {scheme!r}' if scheme else ''} has no handler registered")
    return fn


def parse_steps(raw: list[dict[str, Any]], file: str) -> list[StepConfig]:
    """[[compress]] tables -> typed step settings with unique names and parents filled in.

    Raises:
        UserError: naming the file, the step and the key (with the nearest valid one).
    """
    names: set[str] = {"base"}
    steps: list[StepConfig] = []
    previous = "base"
    for i, table in enumerate(raw, 1):
        where = f"{file}: [[compress]] #{i}"
        if not isinstance(table, dict):
            raise UserError(f"{where}: expected a table with a 'method' key")
        name = table.get("method")
        if not isinstance(name, str) or not name:
            raise UserError(f"{where}: missing key 'method' ({', '.join(sorted(METHODS.names()))})")
        if name not in METHODS:
            raise UserError(f"{where}: unknown method '{name}'{did_you_mean(name, sorted(METHODS.names()))}")
        cls = METHODS.get(name)
        if "from_" in table:
            raise UserError(f"{where}: unknown key 'from_'; did you mean 'from'?")
        data = {("from_" if k == "from" else k): v for k, v in table.items()}
        step = build(cls, data, f"compress #{i}", file)
        step.check(where)
        if not step.name:
            step.name = name if name not in names else next(
                f"{name}-{n}" for n in range(2, 999) if f"{name}-{n}" not in names)
        if step.name in names:
            raise UserError(f"{where}: name = '{step.name}' is already used by an earlier variant; pick another")
        if "/" in step.name or step.name.startswith("."):
            raise UserError(f"{where}: name = '{step.name}' must be a plain name (it names variants/<name>/)")
        step.from_ = step.from_ or previous
        if step.from_ not in names:
            raise UserError(f"{where}: from = '{step.from_}' is not an earlier variant"
                            f"{did_you_mean(step.from_, sorted(names))}")
        names.add(step.name)
        previous = step.name
        steps.append(step)
    return steps


def step_to_dict(step: StepConfig) -> dict[str, Any]:
    """A step as its recipe table (``from_`` written back as ``from``)."""
    return {("from" if name == "from_" else name): getattr(step, name) for name in fields_of(type(step))}
