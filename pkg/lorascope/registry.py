"""A named registry: one place that says which method kinds, task types or similarity measures exist.

The shape of lm-evaluation-harness's `lm_eval/api/registry.py`: a module registers what it defines under a name
(`@METHOD_KINDS.register("lora")`), callers `get(name)` it, and a name that does not exist fails by listing the ones
that do. Nothing else in the package asks "which kind is this?": it asks the registry for the entry and calls it.

    MEASURES = Registry("similarity measure")

    @MEASURES.register("debiased")
    def cka_debiased(x, y): ...

    MEASURES.get("debiased")      # -> cka_debiased
    MEASURES.get("typo")          # ConfigError: unknown similarity measure 'typo'; known: debiased
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from lorascope.errors import ConfigError

T = TypeVar("T")


class Registry(Generic[T]):
    """Entries by name, in registration order (the order lists, help texts and reports show them in)."""

    def __init__(self, what: str) -> None:
        self.what = what  # "method kind", "task type", ... (the error messages' noun)
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: `@REGISTRY.register("name")` on a class or function. A name registers once."""

        def add(entry: T) -> T:
            self.add(name, entry)
            return entry

        return add

    def add(self, name: str, entry: T) -> T:
        if name in self._entries:
            raise ValueError(f"{self.what} {name!r} is registered twice ({self._entries[name]!r} and {entry!r})")
        self._entries[name] = entry
        return entry

    def get(self, name: str, field: str = "") -> T:
        """The entry, or a ConfigError (exit 2) naming the field, the value and every known name."""
        try:
            return self._entries[name]
        except (KeyError, TypeError):
            where = f"{field}: " if field else ""
            raise ConfigError(f"{where}unknown {self.what} {name!r}; known: {', '.join(self._entries)}") from None

    def names(self) -> tuple[str, ...]:
        return tuple(self._entries)

    def items(self) -> list[tuple[str, T]]:
        return list(self._entries.items())

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self._entries)})"
