"""One registry per kind of plug-in: tasks, compression methods, export formats, architecture adapters.

A ``Registry`` is a name -> object table that the plug-in modules fill with a decorator when they are imported. It
knows the package its plug-ins live in and imports that package's modules the first time someone asks for a name
(``pkgutil``), so the table is the only list: adding a task, a method or a format is one new module, and no other
file names it. The core finds plug-ins this way without importing any of them itself.

    TASKS = Registry("task", "toolkit.tasks")

    @TASKS.register("text-classification")
    class TextClassification: ...

    TASKS.get("text-classification")      # imports toolkit/tasks/*.py once, then looks the name up
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import Any, Callable, Generic, Iterator, TypeVar

from toolkit.errors import UserError, did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """Plug-ins of one kind, registered by the modules of ``package`` (those named in ``skip`` and private
    ``_modules`` are not imported: they hold helpers, not plug-ins)."""

    def __init__(self, kind: str, package: str, skip: tuple[str, ...] = ()) -> None:
        self.kind, self.package, self.skip = kind, package, set(skip)
        self._items: dict[str, T] = {}
        self._discovered = False
        self._discovering = False

    def register(self, name: str, item: Any = None) -> Any:
        """``@registry.register("name")`` on a class or function, or ``registry.register("name", obj)``."""
        if item is not None:
            self.add(name, item)
            return item

        def deco(obj: Any) -> Any:
            self.add(name, obj)
            return obj

        return deco

    def add(self, name: str, item: T) -> None:
        old = self._items.get(name)
        if old is not None and old is not item and getattr(old, "__qualname__", None) != getattr(
                item, "__qualname__", object()):
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = item

    def discover(self) -> None:
        """Import every plug-in module of the package, once."""
        if self._discovered or self._discovering:
            return
        self._discovering = True
        try:
            package = importlib.import_module(self.package)
            for info in pkgutil.iter_modules(package.__path__):
                if info.name.startswith("_") or info.name in self.skip:
                    continue
                importlib.import_module(f"{self.package}.{info.name}")
            self._discovered = True
        finally:
            self._discovering = False

    def get(self, name: str, where: str = "") -> T:
        """The plug-in called ``name``. Raises UserError naming the valid ones (``where`` prefixes the message)."""
        self.discover()
        try:
            return self._items[name]
        except KeyError:
            prefix = f"{where}: " if where else ""
            raise UserError(f"{prefix}'{name}' is not a {self.kind}{did_you_mean(name, sorted(self._items))}") \
                from None

    def find(self, name: str) -> T | None:
        self.discover()
        return self._items.get(name)

    def names(self) -> list[str]:
        """Registered names, in registration order."""
        self.discover()
        return list(self._items)

    def items(self) -> list[tuple[str, T]]:
        self.discover()
        return list(self._items.items())

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def __contains__(self, name: object) -> bool:
        self.discover()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self.names())


def first_match(registry: Registry[T], test: Callable[[T], bool]) -> T | None:
    """The first plug-in (registration order) for which ``test`` holds."""
    for _, item in registry.items():
        if test(item):
            return item
    return None


# The registries. Their plug-ins live in the named packages; nothing else lists them.
TASKS: Registry[Any] = Registry("task", "toolkit.tasks", skip=("base", "common"))
METHODS: Registry[Any] = Registry("compression method", "toolkit.compress", skip=("stage", "context"))
FORMATS: Registry[Any] = Registry("export format", "toolkit.export", skip=("stage", "common", "verify", "bundle"))
ADAPTERS: Registry[Any] = Registry("architecture", "toolkit.arch", skip=("base", "inspect", "shapes"))


def format_names() -> list[str]:
    """The export formats in export order (a format converting another's files after it)."""
    return sorted(FORMATS.names(), key=lambda name: FORMATS.get(name).order)
