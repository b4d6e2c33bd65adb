"""Accuracy against drift (and against forgetting) over methods: the Pareto front and the sweeps, from the numbers
the drift summary already holds (no new measurement). Pure Python.

A method is a point per task: y = its task metric (the task's selection metric, mean over seeds), x = a cost to keep
low (the primary drift: debiased CKA drift, primary pooling, mean over the entries every method can change; or
forgetting: the increase of the base LM loss on held-out text, nats per token). `FRONT_RULE`: the front is taken over
the methods whose cells all learned their task (the learning gate: a method that did not learn has low drift because
it did not move, which is no trade-off); among them, the methods no other method dominates (higher-or-equal metric AND
lower-or-equal x, one of them strictly). Equal points dominate neither each other: both are on the front. Non-finite
points are on no front. A learned point off the front whose seed ranges (min..max over seeds of the metric AND of x)
overlap those of a front point is "tied" with it: the seeds do not separate them, so it is drawn as tied, not silently
off the front.

Sweeps: methods that differ only in their kind's size knob (LoRA `r` with its `alpha`, top_layers `k`, prefix
`num_virtual_tokens`: `MethodKind.size_knob`) form one sweep, drawn as a line in that order.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from lorascope.methods import kind_of

NOT_IN_SWEEP_KEY = {"name"}  # with the knob and the fields its kind moves along with it (`size_companions`)
FRONT_RULE = ("the front is taken over the methods whose cells all learned their task (the others are drawn, never on "
              "it); a method is on it when no other learned method has a higher-or-equal task metric AND a lower-or-"
              "equal x, one of them strictly (means over seeds); a learned method off the front whose seed ranges "
              "(min..max over seeds, on both axes) overlap a front member's is tied with it")  # fmt: skip


def _finite(*xs: Any) -> bool:
    return all(isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x) for x in xs)


def pareto_front(points: Mapping[str, tuple[float, float]]) -> list[str]:
    """Names of the non-dominated points of {name: (x, y)}: lower x and higher y are better. Sorted by x, then name."""
    pts = {k: (float(x), float(y)) for k, (x, y) in points.items() if _finite(x, y)}
    front = [k for k, (x, y) in pts.items()
             if not any(x2 <= x and y2 >= y and (x2 < x or y2 > y) for k2, (x2, y2) in pts.items() if k2 != k)]  # fmt: skip
    return sorted(front, key=lambda k: (pts[k][0], k))


def _overlap(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two points' seed ranges overlap on both axes (metric and x)."""
    return (a["metric_min"] <= b["metric_max"] and b["metric_min"] <= a["metric_max"]
            and a["x_min"] <= b["x_max"] and b["x_min"] <= a["x_max"])  # fmt: skip


def front_of(points: Mapping[str, Mapping[str, Any]]) -> dict:
    """`FRONT_RULE` on {method: point} (`_point` plus `learned`): {"front": names (lowest x first), "tied": {name:
    [front members whose seed ranges overlap it]}, "not_learned": names}."""
    measured = {m: p for m, p in points.items() if p["n"]}
    learned = {m: p for m, p in measured.items() if p.get("learned")}
    front = pareto_front({m: (p["x"], p["metric"]) for m, p in learned.items()})
    tied = {m: [f for f in front if _overlap(p, learned[f])] for m, p in learned.items() if m not in front}
    return {"front": front, "tied": {m: fs for m, fs in tied.items() if fs},
            "not_learned": [m for m in measured if m not in learned]}  # fmt: skip


def _fields(m: Any) -> dict:
    if hasattr(m, "model_dump"):
        return m.model_dump(mode="json")
    return {k: v for k, v in vars(m).items() if not k.startswith("_")}


def sweeps(methods: list[Any]) -> list[dict]:
    """[{"label", "knob", "methods": names in size order}] for every group of 2+ methods of one kind that differ only
    in the kind's size knob (`MethodKind.size_knob`: LoRA r, top_layers k, prefix num_virtual_tokens; also the
    fields that move with it, `size_companions`: LoRA alpha, dropout; and the name). Label: "<kind> <knob> sweep
    (<what is fixed>)"."""
    groups: dict[str, list[tuple[float, str]]] = {}
    for m in methods:
        kind = kind_of(m)
        knob = kind.size_knob
        if knob is None or getattr(m, knob, None) is None:
            continue
        rest = {k: v for k, v in _fields(m).items() if k not in NOT_IN_SWEEP_KEY | {knob, *kind.size_companions}}
        fixed = ", ".join(f"{k}={'+'.join(map(str, v)) if isinstance(v, list) else v}" for k, v in sorted(rest.items())
                          if k != "kind" and v not in (None, False, [], "default"))  # fmt: skip
        label = f"{m.kind} {knob} sweep" + (f" ({fixed})" if fixed else "")
        groups.setdefault(label, []).append((float(getattr(m, knob)), m.name))
    return [{"label": label, "knob": label.split(" ")[1], "methods": [n for _, n in sorted(g)]}
            for label, g in groups.items() if len({v for v, _ in g}) > 1]  # fmt: skip


def _point(ys: Mapping[str, float], xs: Mapping[str, float]) -> dict:
    seeds = [s for s in ys if s in xs and _finite(ys[s], xs[s])]
    y, x = [float(ys[s]) for s in seeds], [float(xs[s]) for s in seeds]
    if not seeds:
        return {"n": 0, "metric": None, "metric_min": None, "metric_max": None, "x": None, "x_min": None, "x_max": None}
    return {"n": len(seeds), "metric": sum(y) / len(y), "metric_min": min(y), "metric_max": max(y),
            "x": sum(x) / len(x), "x_min": min(x), "x_max": max(x)}  # fmt: skip


def pareto_section(summary: Mapping[str, Any], methods: list[Any]) -> dict:
    """{"drift": {task: {"points", "front", "tied", "not_learned"}}, "forgetting": {...} or None, "sweeps", "x": {axis:
    words}, "rule": FRONT_RULE}. Points per method: mean and seed range (min, max) of the task metric and of x, over
    the seeds that have both, and whether every cell of the method learned (the drift summary's `learned`)."""
    s = summary["settings"]
    pooling, measure = s["primary_pooling"], s["primary_measure"].removeprefix("cka_")
    forgetting = summary.get("forgetting") or {}
    out: dict[str, Any] = {"sweeps": sweeps(methods), "drift": {}, "forgetting": None, "rule": FRONT_RULE,
                           "x": {"drift": f"mean {measure} CKA drift over the entries every method can change ({pooling} pooling)",
                                 "forgetting": "forgetting: base LM loss increase on held-out text (nats/token)"}}  # fmt: skip

    def part(res: Mapping[str, Any], xs: Mapping[str, Mapping[str, float]]) -> dict:
        pts = {m: {**_point(e["metric"]["values"], xs.get(m) or {}), "learned": bool(e.get("learned"))}
               for m, e in res["methods"].items()}  # fmt: skip
        return {"metric_name": res["metric_name"], "points": pts, **front_of(pts)}

    for task in summary["tasks"]:
        res = summary["results"][task]
        out["drift"][task] = part(res, {m: e["drift"][pooling][measure]["values"] for m, e in res["methods"].items()})
    ftasks = {t: v for t, v in forgetting.items() if t in summary["tasks"] and isinstance(v, Mapping)}
    if ftasks:
        out["forgetting"] = {task: part(summary["results"][task], {m: (v or {}).get("values") or {} for m, v in by_method.items()})
                             for task, by_method in ftasks.items()}  # fmt: skip
    return out
