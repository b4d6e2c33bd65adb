"""What each method costs to train and to ship, from the cells' metrics.json (no new measurement): trainable
parameters (and their share of the model), trainable bytes (trainable params x their dtype size), the saved artifact
on disk (adapter/ or model/), training tokens per second, peak memory and training time.

Per method: the mean over every cell (seeds x tasks), min and max, and the same per task. A field a cell does not
have (bundles written before the field existed) is left out of that mean; a method with no value at all gets None
(the report prints n/a). Pure Python, no torch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

MIB = 1024**2
# metrics.json field -> (summary field, scale): bytes are also given in MiB, which the report prints
FIELDS: dict[str, tuple[str, float]] = {
    "trainable_params": ("trainable_params", 1.0),
    "total_params": ("total_params", 1.0),
    "trainable_bytes": ("trainable_mib", 1.0 / MIB),
    "artifact_bytes": ("artifact_mib", 1.0 / MIB),
    "tokens_per_second": ("tokens_per_second", 1.0),
    "peak_memory_bytes": ("peak_memory_mib", 1.0 / MIB),
    "train_seconds": ("train_seconds", 1.0),
}
COST_FIELDS = (*(v[0] for v in FIELDS.values()), "trainable_pct")


def _number(x: Any) -> float | None:
    if isinstance(x, bool) or not isinstance(x, int | float):
        return None
    x = float(x)
    return x if x == x and abs(x) != float("inf") else None


def cell_costs(metrics: Mapping[str, Any]) -> dict[str, float | None]:
    """One cell's cost fields (COST_FIELDS) from its metrics.json, None where missing."""
    out: dict[str, float | None] = {}
    for src, (dst, scale) in FIELDS.items():
        v = _number(metrics.get(src))
        out[dst] = None if v is None else v * scale
    tp, tot = out["trainable_params"], out["total_params"]
    out["trainable_pct"] = 100.0 * tp / tot if tp is not None and tot else None
    return out


def _stats(values: list[float | None]) -> dict:
    got = [v for v in values if v is not None]
    if not got:
        return {"mean": None, "min": None, "max": None, "n": 0}
    return {"mean": sum(got) / len(got), "min": min(got), "max": max(got), "n": len(got)}


def cost_table(study: Any, metrics: Mapping[str, Mapping[str, Any]]) -> dict:
    """{"fields": [...], "methods": {method: {"kind", "cells", "all": {field: stats}, "by_task": {task: {field:
    stats}}, "peak_memory_kind": [...], "varies_by_task": [fields whose per-task means differ]}}}; `metrics`:
    {cell name: metrics.json}. stats: mean, min, max over the cells that have the field, and n of them."""
    out: dict[str, Any] = {}
    for m in study.methods:
        cells = [c for c in study.cells() if c.method == m.name and c.name in metrics]
        per = {c.name: cell_costs(metrics[c.name]) for c in cells}
        tasks = list(dict.fromkeys(c.task for c in cells))
        by_task = {t: {k: _stats([per[c.name][k] for c in cells if c.task == t]) for k in COST_FIELDS} for t in tasks}
        varies = [k for k in COST_FIELDS
                  if len({round(by_task[t][k]["mean"], 9) for t in tasks if by_task[t][k]["mean"] is not None}) > 1]  # fmt: skip
        kinds = sorted({str(metrics[c.name]["peak_memory_kind"]) for c in cells if metrics[c.name].get("peak_memory_kind")})
        out[m.name] = {"kind": m.kind, "cells": len(cells), "all": {k: _stats([p[k] for p in per.values()]) for k in COST_FIELDS},
                       "by_task": by_task, "peak_memory_kind": kinds, "varies_by_task": varies}  # fmt: skip
    return {"fields": list(COST_FIELDS), "methods": out}
