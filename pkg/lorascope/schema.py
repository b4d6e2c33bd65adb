"""The base of every typed config: `Strict` (unknown fields are errors, values frozen, no boolean read as a number),
and the small field types the study's sections and the method kinds share. No import of the study itself, so
`lorascope.methods` can build on it without a cycle (study.py imports the methods, not the other way round).
"""

from __future__ import annotations

import types
import typing
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

NAME_PATTERN = r"^[a-z0-9][a-z0-9-]*$"  # names end up in store keys, cell names and Kubernetes labels


def _admits_bool(annotation: Any) -> bool:
    """Whether a field's type lists bool itself (pydantic's lax mode would read `true` as 1 for an int field)."""
    if annotation is bool:
        return True
    origin = typing.get_origin(annotation)
    if origin is Annotated:
        return _admits_bool(typing.get_args(annotation)[0])
    if origin in (typing.Union, types.UnionType):
        return any(_admits_bool(a) for a in typing.get_args(annotation))
    return annotation is Any


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    @model_validator(mode="before")
    @classmethod
    def _no_bool_for_numbers(cls, data: Any) -> Any:
        """`trials: true` is a typo, not 1: a boolean is accepted only where the field is a boolean (pydantic's lax
        mode would read it as 1 for an int field)."""
        if isinstance(data, dict):
            for name, value in data.items():
                f = cls.model_fields.get(name) if isinstance(name, str) else None
                if f is not None and isinstance(value, bool) and not _admits_bool(f.annotation):
                    raise ValueError(f"@{name}: expected a number, got the boolean {value}")
        return data


# a training seed seeds Python, numpy (which needs 0 <= seed < 2**32) and torch
SeedValue = Annotated[int, Field(strict=True, ge=0, lt=2**32)]
