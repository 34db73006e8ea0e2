"""Small name -> object registries (methods, backbones, datasets, weightings, export formats...).

Every axis of variation is one Registry. An entry is added by ONE module that decorates its
object with `REGISTRY.register("name")`, plus ONE line naming that module in the registry's
`modules` tuple (where the registry is created): the registry imports those modules the
first time it is asked for a name, so `get` always sees every entry without import-time
side effects elsewhere.
"""

from __future__ import annotations

import importlib
from typing import Callable, Dict, Generic, Iterator, Sequence, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of objects chosen by string from configs and flags.

    Example:
        METHODS = Registry("method", modules=("mtpsl_tf.methods.supervised",))

        @METHODS.register("sl")
        class Supervised: ...

        METHODS.get("sl")  # -> Supervised (imports the listed modules first)

    Args:
        kind: what the entries are, for messages ("method", "loss weighting", ...).
        modules: dotted names of the modules that register entries; imported on first lookup.
    """

    def __init__(self, kind: str, modules: Sequence[str] = ()):
        self.kind = kind
        self.modules = tuple(modules)
        self._items: Dict[str, T] = {}
        self._loaded = False

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator registering `obj` under `name`; duplicate names are an error."""

        def decorator(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return decorator

    def _load(self) -> None:
        if self._loaded:
            return
        self._loaded = True  # set first: a listed module may look names up while importing
        for module in self.modules:
            importlib.import_module(module)

    def get(self, name: str) -> T:
        """Returns the object registered as `name`, or raises a KeyError naming the choices."""
        self._load()
        try:
            return self._items[name]
        except KeyError:
            raise KeyError(
                f"unknown {self.kind} {name!r}; expected one of: {', '.join(sorted(self._items))}"
            ) from None

    def names(self) -> list[str]:
        self._load()
        return sorted(self._items)

    def __contains__(self, name: str) -> bool:
        self._load()
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        self._load()
        return iter(sorted(self._items))
