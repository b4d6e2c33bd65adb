"""Drift statistics over seeds, from the drift phase's rows: per method on a task (metric, learning gates, drift
and cosines over seeds over the entries every method can change and over the whole model, whether it moved, the
seed-to-seed drift, per-layer bands: `method_entry`), the reference against each compared method over the entries
both can change (paired by seed: `compare`; per layer, the gate `verdicts.moved` and the subsampling CI over
examples: `comparison`), and Holm across tasks. The verdict rules are `verdicts`; the measures are the CKA drifts of
the similarity registry (`drift_measures`); which entries a mean covers is `layers_in_mean`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
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
    seed (`ft_values`, `method_values`: {seed: drift}): reduction of the means, paired t, sign-flip p (with its
    floor), d_z (descriptive; the H1b verdict is `verdicts.h1b` on the values)."""
    seeds = sorted(set(ft) & set(other))
    if len(seeds) != len(ft) or len(seeds) != len(other):
        raise ValueError(f"paired comparison needs the same seeds for both methods (got {sorted(ft)} and {sorted(other)})")
    a, b = np.array([ft[s] for s in seeds]), np.array([other[s] for s in seeds])
    diffs = a - b
    finite = bool(np.all(np.isfinite(diffs)))
    out = {"seeds": seeds, "ft_mean": float(a.mean()), "method_mean": float(b.mean()),
           "ft_values": {str(s): float(ft[s]) for s in seeds}, "method_values": {str(s): float(other[s]) for s in seeds},
           "reduction_pct": stats.drift_reduction_pct(float(a.mean()), float(b.mean())), "diffs": diffs.tolist(),
           "sign_flip_p": stats.sign_flip_pvalue(diffs) if finite else float("nan"),
           "sign_flip_floor": stats.sign_flip_floor(len(seeds)),
           "cohens_dz": stats.cohens_dz(a, b) if finite else float("nan")}  # fmt: skip
    ok = finite and len(seeds) >= 2 and np.ptp(diffs) > 0
    out["paired_t"] = stats.paired_t(a, b) if ok else {"t": float("nan"), "p": float("nan"), "df": len(seeds) - 1}
    return out


def learning(task_metric: str, cells: list[Any], metrics: Mapping[str, dict], predictions: Mapping[str, Any],
             seed: int, trivial_value: float | None = None) -> tuple[dict[str, dict], float | None, dict | None]:  # fmt: skip
    """Per cell the learning gate (`verdicts.learning_gate`), and the paired example bootstrap the H1a verdict uses
    (None when some cell has no per-example predictions). Every cell must have been scored on the same examples
    with the same labels; the metric recomputed from the predictions must equal metrics.json's. `trivial_value`: the
    task type's trivial score when it does not depend on the data (a correlation: 0); None: the best constant class."""
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
    elif "scores" in first:  # per-example scores (extractive QA): their mean bootstrapped over the examples
        from lorascope.analysis import score_bootstrap

        if task_metric not in first["scores"]:
            gates = {c: vd.learning_gate(reported[c], float("nan"), None) for c in reported}
            return gates, None, None  # a metric with no per-example scores (HasAns_f1, ...): the gate is not checked
        trivial = {k: v[task_metric] for k, v in first["trivial"].items()}
        boot = score_bootstrap.mean_bootstrap({c: p["scores"][task_metric] for c, p in preds.items()}, trivial, seed=seed)
    else:
        boot = vd.example_bootstrap(first["label"], {c: p["pred"] for c, p in preds.items()}, task_metric, seed=seed,
                                    trivial_value=trivial_value)  # fmt: skip
    for c, v in boot["full"].items():
        if abs(v - reported[c]) > 1e-9:
            raise ValueError(f"cell {c}: {task_metric} from predictions.jsonl is {v}, metrics.json says {reported[c]}")
    gates = {c: vd.learning_gate(v, boot["baseline"], boot["boot"][c] - boot["boot_baseline"]) for c, v in boot["full"].items()}
    return gates, boot["baseline"], boot


def _pair_rows(noise: list[dict], task: str, method: str, pooling: str) -> dict[tuple, list[dict]]:
    """The seed-pair rows of one method, task and pooling, by (seed_a, seed_b)."""
    out: dict[tuple, list[dict]] = {}
    for r in noise:
        if r["task"] == task and r["method"] == method and r["pooling"] == pooling:
            out.setdefault((r["seed_a"], r["seed_b"]), []).append(r)
    return out


def seed_to_seed(noise: list[dict], task: str, method: str, pooling: str, measure: str, layers: Sequence[int]) -> dict:
    """The seed-to-seed drift of one method (`stats.noise_floor`: mean over its seed pairs, and how many) over
    `layers` (each pair's mean over them)."""
    layers = set(layers)
    per_pair = _pair_rows(noise, task, method, pooling)
    return stats.noise_floor([np.mean([r[drift_column(measure)] for r in v if r["layer_index"] in layers])
                              if layers else float("nan") for v in per_pair.values()])  # fmt: skip


def example_se(subset: Mapping[str, np.ndarray] | None, res: Any, cells: Sequence[str], layers: Sequence[int] | int) -> float | None:
    """The standard error over validation examples of the mean over `cells` (a method's seeds) of their primary
    drift averaged over `layers` (or at one layer), from the drift on the example subsets (`stats.subsample_se`);
    None when the subsets were not measured."""
    if subset is None or res is None or not cells or (not isinstance(layers, int) and not layers):
        return None
    values = np.mean([np.mean(subset[c][layers], axis=0) if not isinstance(layers, int) else subset[c][layers]
                      for c in cells], axis=0)  # fmt: skip
    se = stats.subsample_se(values, res.n, res.m)
    return se if math.isfinite(se) else None


def method_entry(study: Any, task: str, method: str, mcells: list[Any], rows: list[dict], noise: list[dict],
                 used: Mapping, drift_means: Mapping, cos_means: Mapping, metrics: Mapping, gates: Mapping,
                 labels: list[str], whole: Mapping | None = None, whole_means: Mapping | None = None,
                 subset: Mapping[str, np.ndarray] | None = None, res: Any = None) -> dict:  # fmt: skip
    """One method on one task: metric, learning gates, drift and cosines over seeds over the entries every method
    can change (`used`) and the drift over the whole model (`whole`, `whole_means`: every entry where CKA is defined),
    the seed-to-seed drift (layer mean and per layer), whether it moved from the base (`verdicts.moved`, primary
    measure; the example spread from `subset` on the primary pooling), and per-layer bands (mean, min, max over
    seeds)."""
    tmetric = study.task(task).selection_metric
    entry: dict[str, Any] = {"kind": study.method(method).kind, "cells": [c.name for c in mcells]}
    entry["metric"] = _summary({c.seed: metrics[c.name]["validation"][tmetric] for c in mcells})
    if all("accuracy" in metrics[c.name]["validation"] for c in mcells):  # a regression task has none
        entry["accuracy"] = _summary({c.seed: metrics[c.name]["validation"]["accuracy"] for c in mcells})
    others = [k for k in metrics[mcells[0].name]["validation"] if k not in (tmetric, "accuracy", "loss", "n")]
    splits = [k for k in metrics[mcells[0].name] if k.startswith("validation_")]  # mnli: validation_mismatched
    if others or splits:  # the task's other metrics, and its further validation splits (their metric)
        entry["other_metrics"] = {k: _summary({c.seed: metrics[c.name]["validation"][k] for c in mcells}) for k in others}
        entry["other_splits"] = {s: {k: _summary({c.seed: metrics[c.name][s][k] for c in mcells})
                                     for k in metrics[mcells[0].name][s] if k not in ("loss", "n")} for s in splits}  # fmt: skip
    entry["learning"] = {str(c.seed): gates[c.name] for c in mcells}
    entry["learned"] = all(gates[c.name]["learned"] is True for c in mcells)
    entry["drift"] = {p: {m: _summary({c.seed: drift_means[m][(task, p, method, c.seed)] for c in mcells}) for m in drift_measures()}
                      for p in study.extraction.pooling}  # fmt: skip
    entry["cosine"] = {p: {k: _summary({c.seed: cos_means[k][(task, p, method, c.seed)] for c in mcells}) for k in cos_means}
                       for p in study.extraction.pooling}  # fmt: skip
    if whole is not None and whole_means is not None:
        entry["drift_whole_model"] = {p: {m: _summary({c.seed: whole_means[m][(task, p, method, c.seed)] for c in mcells})
                                          for m in drift_measures()} for p in study.extraction.pooling}  # fmt: skip
        entry["layers_whole_model"] = {p: [labels[li] for li in whole[(task, p)]] for p in study.extraction.pooling}
    entry["noise_floor"], entry["moved"], entry["layers"] = {}, {}, {}
    primary = primary_pooling(study)
    for p in study.extraction.pooling:
        pair_rows = [r for r in noise if r["task"] == task and r["method"] == method and r["pooling"] == p]
        entry["noise_floor"][p] = {m: seed_to_seed(noise, task, method, p, m, used[(task, p)]) for m in drift_measures()}
        floor = entry["noise_floor"][p][PRIMARY_MEASURE]
        ex = example_se(subset, res, [c.name for c in mcells], used[(task, p)]) if p == primary else None
        entry["moved"][p] = vd.moved({c.seed: drift_means[PRIMARY_MEASURE][(task, p, method, c.seed)] for c in mcells}, ex,
                                     floor["mean"], floor["n"])  # fmt: skip
        layer_stats: dict[str, Any] = {}
        for m in drift_measures():
            per_layer = [[r[drift_column(m)] for r in rows if r["task"] == task and r["method"] == method
                          and r["pooling"] == p and r["layer_index"] == li] for li in range(len(labels))]  # fmt: skip
            pairs = [[r[drift_column(m)] for r in pair_rows if r["layer_index"] == li] for li in range(len(labels))]
            layer_stats[m] = {"mean": [float(np.mean(v)) for v in per_layer], "min": [float(np.min(v)) for v in per_layer],
                              "max": [float(np.max(v)) for v in per_layer],
                              "noise_floor": [float(np.mean(v)) if v else float("nan") for v in pairs]}  # fmt: skip
        entry["layers"][p] = layer_stats
    return entry


def not_moved_text(gate: Mapping[str, Any], who: str = "full fine-tuning's") -> list[str]:
    """The H1b `indistinguishable` reason when the reference did not move (`verdicts.moved`), else none."""
    if gate["moved"]:
        return []
    return [f"{who} drift from the base {gate['mean']:.4f} is not distinguishable from 0 (one-sided lower bound "
            f"{'n/a' if gate['lo'] is None else format(gate['lo'], '.4f')}): there is no drift to reduce"]  # fmt: skip


def comparison(study: Any, task: str, cells: list[Any], rows: list[dict], noise: list[dict], full: str, lora: str,
               pair_means: Mapping, methods: Mapping, subset: Mapping[str, np.ndarray] | None, res: Any,
               pair_used: Mapping, pair_excluded: Mapping, labels: list[str], frozen: Mapping[int, str] | None = None,
               whole_means: Mapping | None = None) -> dict:  # fmt: skip
    """The reference (`full`) vs one compared method (`lora`, any kind) on one task, over the entries BOTH can change
    (`pair_used`: (task, pooling) -> indexes; `pair_means`: {measure: (task, pooling, method, seed) -> mean drift over
    them}; `pair_excluded`: (task, pooling) -> {label: why left out}): `compare` per pooling and measure; whether the
    reference moved at all (`reference_moved`, `verdicts.moved`: seed and example spread) with its seed-to-seed drift
    beside it, and the compared method's (`method_moved`); the per-layer H1b verdicts (primary pooling and measure;
    an entry one of them cannot change is "not compared", with the reason, and its drift shown; `frozen`: {entry:
    why} the method leaves frozen, marked); the whole-model comparison (`whole_model`, every entry, labelled as such);
    and the subsampling CI over examples of the primary reduction (these trained models)."""
    frozen = frozen or {}
    primary = primary_pooling(study)
    hyp = study.hypotheses
    pick = lambda m, p, meth: {c.seed: pair_means[m][(task, p, meth, c.seed)] for c in cells if c.method == meth}  # noqa: E731
    comp: dict[str, Any] = {p: {m: compare(pick(m, p, full), pick(m, p, lora)) for m in drift_measures()} for p in study.extraction.pooling}
    used = pair_used[(task, primary)]
    comp["layers_in_mean"] = {p: [labels[li] for li in pair_used[(task, p)]] for p in study.extraction.pooling}
    comp["layers_excluded"] = {p: dict(pair_excluded[(task, p)]) for p in study.extraction.pooling if pair_excluded[(task, p)]}
    ft_cells = [c.name for c in cells if c.method == full]
    lo_cells = [c.name for c in cells if c.method == lora]
    gates = {}
    for role, meth, names in (("reference_moved", full, ft_cells), ("method_moved", lora, lo_cells)):
        floor = seed_to_seed(noise, task, meth, primary, PRIMARY_MEASURE, used)
        gates[role] = comp[role] = vd.moved(pick(PRIMARY_MEASURE, primary, meth), example_se(subset, res, names, used),
                                            floor["mean"], floor["n"])  # fmt: skip
    if whole_means is not None:
        whole = {m: {c.seed: whole_means[PRIMARY_MEASURE][(task, primary, m, c.seed)] for c in cells if c.method == m}
                 for m in (full, lora)}  # fmt: skip
        comp["whole_model"] = compare(whole[full], whole[lora])
    # per layer: the same H1b rule on each hidden-state entry, with that entry's gate
    fl, ll = methods[full]["layers"][primary][PRIMARY_MEASURE], methods[lora]["layers"][primary][PRIMARY_MEASURE]
    index = {(r["method"], int(r["seed"]), int(r["layer_index"])): float(r[drift_column(PRIMARY_MEASURE)])
             for r in rows if r["task"] == task and r["pooling"] == primary}  # fmt: skip
    n_pairs = gates["reference_moved"]["seed_pairs"]
    learn_gate = [] if methods[full]["learned"] and methods[lora]["learned"] else ["a cell did not learn its task"]
    excluded = pair_excluded[(task, primary)]
    per_layer = {}
    for li, label in enumerate(labels):
        ft = {c.seed: index[(c.method, c.seed, li)] for c in cells if c.method == full}
        lo = {c.seed: index[(c.method, c.seed, li)] for c in cells if c.method == lora}
        gate = vd.moved(ft, example_se(subset, res, ft_cells, li), fl["noise_floor"][li], n_pairs)
        v = vd.h1b(ft, lo, hyp.h1b_min_reduction_pct, gates=learn_gate, indistinguishable=not_moved_text(gate))
        if li not in used:  # an entry left out of the pair's mean is not judged either: its drift is shown, with why
            v.update(verdict=vd.NOT_COMPARED, lo=None, hi=None)
        per_layer[label] = {"verdict": v["verdict"], "estimate_pct": v["estimate_pct"], "lo": v["lo"], "hi": v["hi"],
                            "ft_mean": fl["mean"][li], "method_mean": ll["mean"][li], "ft_floor": fl["noise_floor"][li],
                            "method_floor": ll["noise_floor"][li], "in_mean": li in used, "ft_moved": gate["moved"],
                            "not_compared_why": excluded.get(label) if li not in used else None,
                            "frozen_by_construction": frozen.get(li)}  # fmt: skip
    comp["layers"] = per_layer
    if subset is not None and res is not None and used:
        layers = used
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
