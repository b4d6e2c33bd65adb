"""Forgetting per cell, per method over seeds, and whether drift tracks it (numpy/scipy only).

Inputs are the extract phase's `forgetting.json` files (lorascope/heldout_loss.py measured them): per decoder model
unit the base model's language-model loss L on the fixed held-out text through that model's backbone with the BASE
LM head, in nats per predicted token. Per cell

    forgetting = L_cell - L_base      (nats/token; > 0: the backbone models general text worse than the base did)
    perplexity ratio = exp(L_cell - L_base) = PPL_cell / PPL_base

with L_base the base unit of the same task (the same model and texts on every task). Per method and task: the seed
values, their mean and the two-sided 95% t-interval over seeds (`verdicts.t_bounds`, the seed interval H1b uses:
seeds are the unit of replication; None with one seed or no spread).

Is drift a proxy for forgetting? Across all cells (and per task), Spearman's rho and Pearson's r between each cell's
primary drift (the drift summary's primary measure and pooling, its mean over the entries every method of the study
can change: `layers_in_mean.layers_in_mean`) and its
forgetting, with n. With a handful of cells (a smoke study: 18; the reference study: 18 per task at most) these are
descriptive: cells of one method and task share their training recipe, so they are not independent draws, and no
p-value is given.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np
from scipy import stats as _st

from lorascope.analysis import verdicts as vd

CSV_COLUMNS = ["cell", "task", "method", "seed", "loss", "base_loss", "delta", "perplexity_ratio", "tokens", "drift_primary"]
UNIT = "nats per predicted token"
CORRELATION_NOTE = ("descriptive only: few cells, and cells of one method and task share their recipe (not independent "
                    "draws); no p-value")  # fmt: skip


def primary_drift(summary: Mapping[str, Any]) -> dict[tuple[str, str, int], float]:
    """(task, method, seed) -> the cell's primary drift (mean over the entries every method can change) from the drift summary: results[task]
    ["methods"][method]["drift"][primary pooling][primary measure]["values"][seed]. Empty when the summary has none."""
    settings = summary.get("settings", {})
    pooling, measure = settings.get("primary_pooling"), str(settings.get("primary_measure", "")).removeprefix("cka_")
    out: dict[tuple[str, str, int], float] = {}
    for task, res in (summary.get("results") or {}).items():
        for method, entry in (res.get("methods") or {}).items():
            values = (((entry.get("drift") or {}).get(pooling) or {}).get(measure) or {}).get("values") or {}
            for seed, v in values.items():
                out[(task, method, int(seed))] = float(v)
    return out


def correlation(x: list[float], y: list[float]) -> dict[str, Any]:
    """Spearman's rho and Pearson's r of paired finite values, with n; None values (and why) when undefined."""
    pairs = [(a, b) for a, b in zip(x, y, strict=True) if math.isfinite(a) and math.isfinite(b)]
    out: dict[str, Any] = {"n": len(pairs), "spearman_rho": None, "pearson_r": None, "note": CORRELATION_NOTE}
    if len(pairs) < 3:
        return {**out, "why_none": f"{len(pairs)} cells with both values: a correlation needs at least 3"}
    a, b = np.array(pairs, dtype=np.float64).T
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return {**out, "why_none": "no spread in drift or in forgetting across cells"}
    return {**out, "spearman_rho": float(_st.spearmanr(a, b).statistic), "pearson_r": float(_st.pearsonr(a, b).statistic)}


def summarize(study: Any, units: Mapping[tuple[str, str], Mapping[str, Any] | None],
              drift_summary: Mapping[str, Any] | None = None) -> tuple[dict[str, Any] | None, list[dict]]:  # fmt: skip
    """(summary["forgetting"], forgetting.csv rows) from the forgetting.json of each (model, task) unit (model =
    "base" or a cell name; None where the unit has no file). summary["forgetting"] is None when no base unit holds a
    measured loss (an encoder study, or forgetting disabled): then there is nothing to compare against.

    Shape: {task: {method: {"values": {seed: delta}, "mean", "lo", "hi", "sd", "n", "base_loss", "cell_loss": {seed:
    loss}, "perplexity_ratio": {seed: ratio}, "base_perplexity"}}, "texts": provenance, "unit", "not_measured": {cell:
    why}, "drift_correlation": {"all": {...}, "by_task": {task: {...}}, "drift": which drift}}."""
    drift = primary_drift(drift_summary or {})
    out: dict[str, Any] = {}
    rows: list[dict] = []
    texts: dict[str, Any] | None = None
    xs: dict[str, tuple[list[float], list[float]]] = {}
    not_measured: dict[str, str] = {}
    for task in [t.name for t in study.tasks]:
        base = units.get(("base", task))
        if not base or base.get("loss_nats_per_token") is None:
            continue
        base_loss = float(base["loss_nats_per_token"])
        this = {k: base.get(k) for k in ("texts_sha256", "texts", "tokens", "text_set", "max_length", "head")}
        if texts is None:
            texts = this
        elif this["texts_sha256"] != texts["texts_sha256"] or this["texts"] != texts["texts"]:
            raise ValueError(f"task {task}: reps/base/{task}/forgetting.json measured other texts ({this['texts_sha256']}, "
                             f"{this['texts']} texts) than the first task's ({texts['texts_sha256']}, {texts['texts']})")  # fmt: skip
        methods: dict[str, Any] = {}
        for cell in [c for c in study.cells() if c.task == task]:
            f = units.get((cell.name, task))
            if not f or f.get("loss_nats_per_token") is None:
                not_measured[cell.name] = (f or {}).get("reason") or "no forgetting.json in its reps bundle (extracted with forgetting disabled, or by an older lorascope)"
                continue
            if f.get("texts_sha256") != base.get("texts_sha256") or f.get("tokens") != base.get("tokens"):
                raise ValueError(f"cell {cell.name}: forgetting.json measured other texts or tokens ({f.get('texts_sha256')}, "
                                 f"{f.get('tokens')}) than reps/base/{task} ({base.get('texts_sha256')}, {base.get('tokens')})")  # fmt: skip
            loss = float(f["loss_nats_per_token"])
            delta = loss - base_loss
            d = drift.get((task, cell.method, cell.seed), float("nan"))
            rows.append({"cell": cell.name, "task": task, "method": cell.method, "seed": cell.seed, "loss": loss,
                         "base_loss": base_loss, "delta": delta, "perplexity_ratio": math.exp(delta),
                         "tokens": int(f["tokens"]), "drift_primary": d})  # fmt: skip
            m = methods.setdefault(cell.method, {"values": {}, "cell_loss": {}, "perplexity_ratio": {}})
            m["values"][str(cell.seed)] = delta
            m["cell_loss"][str(cell.seed)] = loss
            m["perplexity_ratio"][str(cell.seed)] = math.exp(delta)
            x, y = xs.setdefault(task, ([], []))
            x.append(d)
            y.append(delta)
        for m in methods.values():
            b = vd.t_bounds(list(m["values"].values()))
            m.update(mean=b["mean"], lo=b["lo"], hi=b["hi"], sd=b["sd"], n=b["n"], base_loss=base_loss,
                     base_perplexity=math.exp(base_loss))  # fmt: skip
        out[task] = methods
    if texts is None:
        return None, []
    all_x = [v for x, _ in xs.values() for v in x]
    all_y = [v for _, y in xs.values() for v in y]
    settings = (drift_summary or {}).get("settings", {})
    out["texts"] = texts
    out["not_measured"] = not_measured  # cell -> why it has no forgetting value (a prefix-tuning cell, ...)
    out["unit"] = UNIT
    out["interval"] = f"two-sided {100 * (1 - 2 * vd.ALPHA):g}% t-interval over seeds (verdicts.t_bounds)"
    out["drift_correlation"] = {
        "drift": f"{settings.get('primary_measure')} drift, {settings.get('primary_pooling')} pooling, mean over the entries every method can change",
        "all": correlation(all_x, all_y), "by_task": {t: correlation(x, y) for t, (x, y) in xs.items()},
    }  # fmt: skip
    return out, rows


__all__ = ["CSV_COLUMNS", "correlation", "primary_drift", "summarize"]
