"""Drift statistics over seeds, from the drift phase's rows: per method on a task (metric, learning gates, drift
and cosines over seeds, the seed noise floor, per-layer bands: `method_entry`), the reference against each compared
method (paired by seed: `compare`, per layer and with the subsampling CI over examples: `comparison`), and Holm
across tasks. The verdict rules are `verdicts`; the measures are the CKA drifts of the similarity registry (`drift_measures`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from lorascope.analysis import similarity, stats
from lorascope.analysis import verdicts as vd
from lorascope.analysis.study_layout import primary_pooling

PRIMARY_MEASURE = "debiased"  # a key of similarity.MEASURES: the drift the verdicts read


def drift_measures() -> tuple[str, ...]:
    """The drift measures (the registered CKAs, drift = 1 - CKA), read when called: a measure registered later is
    summarised too."""
    return tuple(m.name for m in similarity.cka_measures())


def drift_column(measure: str) -> str:
    """The layer_rows.csv column holding a measure's drift ("drift_debiased")."""
    return similarity.MEASURES.get(measure).drift_column
CI_ALPHA = 0.05


def _summary(values: Mapping[int, float]) -> dict:
    return {"values": {str(k): float(v) for k, v in values.items()}, **stats.seed_summary(list(values.values()))}


def compare(ft: Mapping[int, float], other: Mapping[int, float]) -> dict:
    """The reference (full fine-tuning, `ft_*`) vs a compared method (`method_*`): mean drift over seeds, paired by
    seed: reduction of the means, paired t, sign-flip p (with its floor), d_z (descriptive; the H1b verdict is
    `verdicts.h1b`)."""
    seeds = sorted(set(ft) & set(other))
    if len(seeds) != len(ft) or len(seeds) != len(other):
        raise ValueError(f"paired comparison needs the same seeds for both methods (got {sorted(ft)} and {sorted(other)})")
    a, b = np.array([ft[s] for s in seeds]), np.array([other[s] for s in seeds])
    diffs = a - b
    finite = bool(np.all(np.isfinite(diffs)))
    out = {"seeds": seeds, "ft_mean": float(a.mean()), "method_mean": float(b.mean()),
           "reduction_pct": stats.drift_reduction_pct(float(a.mean()), float(b.mean())), "diffs": diffs.tolist(),
           "sign_flip_p": stats.sign_flip_pvalue(diffs) if finite else float("nan"),
           "sign_flip_floor": stats.sign_flip_floor(len(seeds)),
           "cohens_dz": stats.cohens_dz(a, b) if finite else float("nan")}  # fmt: skip
    ok = finite and len(seeds) >= 2 and np.ptp(diffs) > 0
    out["paired_t"] = stats.paired_t(a, b) if ok else {"t": float("nan"), "p": float("nan"), "df": len(seeds) - 1}
    return out


def learning(task_metric: str, cells: list[Any], metrics: Mapping[str, dict], predictions: Mapping[str, Any],
             seed: int) -> tuple[dict[str, dict], float | None, dict | None]:  # fmt: skip
    """Per cell the learning gate (`verdicts.learning_gate`), and the paired example bootstrap the H1a verdict uses
    (None when some cell has no per-example predictions). Every cell must have been scored on the same examples
    with the same labels; the metric recomputed from the predictions must equal metrics.json's."""
    preds = {c.name: predictions.get(c.name) for c in cells}
    reported = {c.name: float(metrics[c.name]["validation"][task_metric]) for c in cells}
    if any(p is None for p in preds.values()):
        base = {c.name: metrics[c.name]["validation"].get("majority_baseline") for c in cells}
        gates = {c: vd.learning_gate(reported[c], float(b) if b is not None else float("nan"), None) for c, b in base.items()}
        return gates, None, None
    first = next(iter(preds.values()))
    for name, p in preds.items():
        if not (np.array_equal(p["idx"], first["idx"]) and np.array_equal(p.get("label"), first.get("label"))):
            raise ValueError(f"cell {name}: its validation predictions are on other examples or labels than "
                             f"{cells[0].name}'s (re-run the train phase for it)")  # fmt: skip
    if "stats" in first:  # a generation task: corpus BLEU bootstrapped over MRs from each MR's statistics
        from lorascope.analysis import text_bootstrap

        if task_metric != "bleu":
            gates = {c: vd.learning_gate(reported[c], float("nan"), None) for c in reported}
            return gates, None, None  # only BLEU has per-MR statistics: the gate is not checked for another metric
        boot = text_bootstrap.bleu_bootstrap({c: p["stats"] for c, p in preds.items()}, first["trivial"], seed=seed)
    else:
        boot = vd.example_bootstrap(first["label"], {c: p["pred"] for c, p in preds.items()}, task_metric, seed=seed)
    for c, v in boot["full"].items():
        if abs(v - reported[c]) > 1e-9:
            raise ValueError(f"cell {c}: {task_metric} from predictions.jsonl is {v}, metrics.json says {reported[c]}")
    gates = {c: vd.learning_gate(v, boot["baseline"], boot["boot"][c] - boot["boot_baseline"]) for c, v in boot["full"].items()}
    return gates, boot["baseline"], boot


def method_entry(study: Any, task: str, method: str, mcells: list[Any], rows: list[dict], noise: list[dict],
                 used: Mapping, drift_means: Mapping, cos_means: Mapping, metrics: Mapping, gates: Mapping,
                 labels: list[str]) -> dict:  # fmt: skip
    """One method on one task: metric, learning gates, drift and cosines over seeds, seed noise floor (layer mean
    and per layer), and per-layer bands (mean, min, max over seeds)."""
    tmetric = study.task(task).selection_metric
    entry: dict[str, Any] = {"kind": study.method(method).kind, "cells": [c.name for c in mcells]}
    entry["metric"] = _summary({c.seed: metrics[c.name]["validation"][tmetric] for c in mcells})
    # accuracy beside the primary metric; nan for a task without accuracy (generation: BLEU and the E2E metric set)
    entry["accuracy"] = _summary({c.seed: metrics[c.name]["validation"].get("accuracy", math.nan) for c in mcells})
    entry["learning"] = {str(c.seed): gates[c.name] for c in mcells}
    entry["learned"] = all(gates[c.name]["learned"] is True for c in mcells)
    entry["drift"] = {p: {m: _summary({c.seed: drift_means[m][(task, p, method, c.seed)] for c in mcells}) for m in drift_measures()}
                      for p in study.extraction.pooling}  # fmt: skip
    entry["cosine"] = {p: {k: _summary({c.seed: cos_means[k][(task, p, method, c.seed)] for c in mcells}) for k in cos_means}
                       for p in study.extraction.pooling}  # fmt: skip
    entry["noise_floor"], entry["within_floor"], entry["layers"] = {}, {}, {}
    for p in study.extraction.pooling:
        pair_rows = [r for r in noise if r["task"] == task and r["method"] == method and r["pooling"] == p]
        per_pair: dict[tuple, list[dict]] = {}
        for r in pair_rows:
            per_pair.setdefault((r["seed_a"], r["seed_b"]), []).append(r)
        layers = set(used[(task, p)])
        entry["noise_floor"][p] = {m: stats.noise_floor([np.mean([r[drift_column(m)] for r in v if r["layer_index"] in layers])
                                                         if layers else float("nan") for v in per_pair.values()])
                                   for m in drift_measures()}  # fmt: skip
        entry["within_floor"][p] = {m: vd.within_floor(entry["drift"][p][m]["mean"], entry["noise_floor"][p][m]["mean"])
                                    for m in drift_measures()}  # fmt: skip
        layer_stats: dict[str, Any] = {}
        for m in drift_measures():
            per_layer = [[r[drift_column(m)] for r in rows if r["task"] == task and r["method"] == method
                          and r["pooling"] == p and r["layer_index"] == li] for li in range(len(labels))]  # fmt: skip
            floor = [[r[drift_column(m)] for r in pair_rows if r["layer_index"] == li] for li in range(len(labels))]
            layer_stats[m] = {"mean": [float(np.mean(v)) for v in per_layer], "min": [float(np.min(v)) for v in per_layer],
                              "max": [float(np.max(v)) for v in per_layer],
                              "noise_floor": [float(np.mean(v)) if v else float("nan") for v in floor]}  # fmt: skip
        entry["layers"][p] = layer_stats
    return entry


def comparison(study: Any, task: str, cells: list[Any], rows: list[dict], full: str, lora: str, drift_means: Mapping, methods: Mapping,
               subset: Mapping[str, np.ndarray] | None, res: Any, used: Mapping, labels: list[str],
               frozen: Mapping[int, str] | None = None) -> dict:  # fmt: skip
    """The reference (`full`) vs one compared method (`lora`, any kind) on one task: `compare` per pooling and
    measure, the per-layer H1b verdicts (primary pooling and measure; `frozen`: {entry: why} the method leaves at the
    base's by construction, marked), and the subsampling CI over examples of the primary reduction (these trained
    models)."""
    frozen = frozen or {}
    primary = primary_pooling(study)
    hyp = study.hypotheses
    pick = lambda m, p, meth: {c.seed: drift_means[m][(task, p, meth, c.seed)] for c in cells if c.method == meth}  # noqa: E731
    comp: dict[str, Any] = {p: {m: compare(pick(m, p, full), pick(m, p, lora)) for m in drift_measures()} for p in study.extraction.pooling}
    # per layer: the same H1b rule on each hidden-state entry, with that entry's noise floor
    fl, ll = methods[full]["layers"][primary][PRIMARY_MEASURE], methods[lora]["layers"][primary][PRIMARY_MEASURE]
    index = {(r["method"], int(r["seed"]), int(r["layer_index"])): float(r[drift_column(PRIMARY_MEASURE)])
             for r in rows if r["task"] == task and r["pooling"] == primary}  # fmt: skip
    learn_gate = [] if methods[full]["learned"] and methods[lora]["learned"] else ["a cell did not learn its task"]
    per_layer = {}
    for li, label in enumerate(labels):
        ft = {c.seed: index[(c.method, c.seed, li)] for c in cells if c.method == full}
        lo = {c.seed: index[(c.method, c.seed, li)] for c in cells if c.method == lora}
        floor_gate = [f"full fine-tuning's drift {fl['mean'][li]:.4f} is within its seed noise floor {fl['noise_floor'][li]:.4f}"] \
            if vd.within_floor(fl["mean"][li], fl["noise_floor"][li]) else []  # fmt: skip
        v = vd.h1b(ft, lo, hyp.h1b_min_reduction_pct, gates=learn_gate, indistinguishable=floor_gate)
        if li not in used[(task, primary)]:  # an entry left out of the means is not judged either
            v.update(verdict=vd.NOT_COMPARED, lo=None, hi=None)
        per_layer[label] = {"verdict": v["verdict"], "estimate_pct": v["estimate_pct"], "lo": v["lo"], "hi": v["hi"],
                            "ft_mean": fl["mean"][li], "method_mean": ll["mean"][li], "ft_floor": fl["noise_floor"][li],
                            "method_floor": ll["noise_floor"][li], "in_mean": li in used[(task, primary)],
                            "method_within_floor": vd.within_floor(ll["mean"][li], ll["noise_floor"][li]),
                            "frozen_by_construction": frozen.get(li)}  # fmt: skip
    comp["layers"] = per_layer
    if subset is not None and res is not None and used[(task, primary)]:
        layers = used[(task, primary)]
        ft_r = np.mean([np.mean(subset[c.name][layers], axis=0) for c in cells if c.method == full], axis=0)
        lo_r = np.mean([np.mean(subset[c.name][layers], axis=0) for c in cells if c.method == lora], axis=0)
        red_r = np.asarray(stats.drift_reduction_pct(ft_r, lo_r), dtype=np.float64)
        est = comp[primary][PRIMARY_MEASURE]["reduction_pct"]
        comp["reduction_ci"] = stats.subsample_bootstrap_ci(res.lookup(est, red_r), res.n, res.m, res.n_resamples,
                                                            CI_ALPHA, res.seed)  # fmt: skip
    return comp


def holm_across_tasks(results: dict, study: Any, full: Any, loras: list[Any]) -> None:
    """Holm across tasks, per (compared method, pooling, measure), for both seed-level tests (descriptive)."""
    for lm in loras if full is not None else []:
        for p in study.extraction.pooling:
            for m in drift_measures():
                comps = [results[t]["comparisons"][lm.name][p][m] for t in results]
                for key, get in (("holm_p_t", lambda c: c["paired_t"]["p"]), ("holm_p_sign_flip", lambda c: c["sign_flip_p"])):
                    ps = [get(c) for c in comps]
                    adj = stats.holm(ps) if all(math.isfinite(x) for x in ps) else [float("nan")] * len(ps)
                    for c, a in zip(comps, adj, strict=True):
                        c[key] = float(a)
