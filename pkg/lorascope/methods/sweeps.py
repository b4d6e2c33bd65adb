"""Sweeps in a study's `methods`: a `- sweep: {...}` entry stands for the product of its axes as plain method
entries (`expand_sweep`), expanded before validation, so the frozen study holds the plain entries.

A field is an axis when its value lists alternatives; names come from a template naming every axis. The kind's
config (from the registry) says which fields exist and which are lists.
"""

from __future__ import annotations

import math
import typing
from typing import Annotated, Any

from pydantic import ValidationError

from lorascope.methods.base import METHOD_KINDS, MethodConfig


def _list_field(cls: type[MethodConfig], name: str) -> bool:
    ann = cls.model_fields[name].annotation
    while typing.get_origin(ann) is Annotated:
        ann = typing.get_args(ann)[0]
    return typing.get_origin(ann) is list


def _name_part(axis: str, value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, list):
        value = "".join(str(v) for v in value)
    return str(value).replace(".", "p")


def expand_sweep(spec: Any, where: str, max_entries: int | None = None) -> list[dict[str, Any]]:
    """A `sweep:` entry of `methods` as plain method entries.

    `spec` holds `kind`, a `name` template and the method's fields. A field is an axis when its value lists
    alternatives: for a scalar field (r, alpha, dropout, k, init, use_dora, ...) a list of values; for a list field
    (target_modules, feedforward_modules, train) a list of lists, or for any field a mapping {label: value}. Every
    other field is fixed. The entries are the product of the axes in the order they are written, the first axis
    outermost, each axis's values in their order. The name template names every axis as `{field}`, replaced by the
    value (a mapping axis: its label; a list value: its entries joined; `.` in a number becomes `p`). More than
    `max_entries` entries is refused before any is built (the study's max_cells leaves that many methods)."""
    if not isinstance(spec, dict):
        raise ValueError(f"@{where}: expected a mapping (kind, name template, fields and axes), got {type(spec).__name__}")
    kind = spec.get("kind")
    if kind not in METHOD_KINDS:
        raise ValueError(f"@{where}.kind: expected one of {list(METHOD_KINDS)}, got {kind!r}")
    cls = METHOD_KINDS.get(kind).config
    template = spec.get("name")
    if not isinstance(template, str) or not template:
        raise ValueError(f"@{where}.name: a sweep needs a name template naming each axis, e.g. 'lora-r{{r}}'")
    unknown = sorted(set(spec) - set(cls.model_fields))
    if unknown:
        raise ValueError(f"@{where}: unknown field(s) {unknown} for kind {kind!r}; its fields are {sorted(cls.model_fields)}")
    axes: list[tuple[str, list[tuple[str, Any]]]] = []
    fixed: dict[str, Any] = {}
    for field_name, value in spec.items():
        if field_name in ("name", "kind"):
            continue
        if isinstance(value, dict):
            values = [(str(label), v) for label, v in value.items()]
        elif isinstance(value, list) and (not _list_field(cls, field_name) or all(isinstance(v, list) for v in value) and value):
            values = [(_name_part(field_name, v), v) for v in value]
        else:
            fixed[field_name] = value
            continue
        if not values:
            raise ValueError(f"@{where}.{field_name}: an axis with no values")
        labels = [label for label, _ in values]
        if len(set(labels)) != len(labels):
            raise ValueError(f"@{where}.{field_name}: the axis's values give repeated name parts {labels}")
        axes.append((field_name, values))
    if not axes:
        raise ValueError(f"@{where}: no axis (a field with a list of alternatives or a mapping); write a plain entry")
    missing = [a for a, _ in axes if "{" + a + "}" not in template]
    if missing:
        raise ValueError(f"@{where}.name: the template {template!r} does not name the axis(es) {missing} "
                         f"(write {{{missing[0]}}} in it), so the entries would share names")  # fmt: skip
    size = math.prod(len(values) for _, values in axes)
    if max_entries is not None and size > max_entries:
        raise ValueError(f"@{where}: expands to {size:,} methods ({' x '.join(str(len(v)) for _, v in axes)}), more "
                         f"than the {max_entries:,} that max_cells leaves for methods with this study's tasks")  # fmt: skip
    out: list[dict[str, Any]] = [{}]
    for field_name, values in axes:
        out = [{**e, field_name: (label, v)} for e in out for label, v in values]
    entries = []
    for combo in out:
        name = template
        for field_name, (label, _) in combo.items():
            name = name.replace("{" + field_name + "}", label)
        entry = {"kind": kind, "name": name, **fixed, **{f: v for f, (_, v) in combo.items()}}
        try:
            cls.model_validate(entry)
        except ValidationError as exc:
            e = exc.errors()[0]
            path = ".".join(str(p) for p in e["loc"]) or "(entry)"
            msg = e["msg"].removeprefix("Value error, ")
            raise ValueError(f"@{where}.{path}: entry {name!r}: {msg} (got {e.get('input')!r})") from None
        entries.append(entry)
    return entries
