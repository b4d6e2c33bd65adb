"""The drift bundle's summary.json and the hypotheses, from the rows the drift phase measured (no new measurements).
The drift phase builds it; the report phase imports `h2_hypothesis`, `bench_section`, `committed_bench` and
`json_safe` from here to re-read H2 when a bench bundle appeared after drift.

`study` is the typed study (duck-typed here: tasks, methods with `kind`, cells, extraction.pooling, seeds,
hypotheses); no torch, no store access except `committed_bench`, which takes the phase context.

The reference is the study's first `full` method; every other method, of any kind, is compared with it (one pair
each) under the same H1a / H1b rules (`verdicts`). No full method: nothing is compared (`NO_REFERENCE`).

Which hidden-state entries enter a mean over layers (`layers_in_mean`): those where every cell's CKA is defined,
minus those some compared method cannot change by construction (the embedding output, for LoRA on projections of
the blocks, IA3, prefix tuning, top-k layers, BitFit on a decoder: its drift is exactly 0 there and full
fine-tuning's is not, which would favour that method in every mean). The same entries for every method, seed and
measure of a task. The block outputs a top_layers method leaves frozen (drift 0 by construction) stay in the means:
that is what the method does; per-layer tables mark them (`frozen_entries`). Per-layer verdicts show every entry.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lorascope.analysis import stats
from lorascope.analysis import verdicts as vd
from lorascope.analysis.costs import cost_table
from lorascope.methods import kind_of

SUMMARY_FORMAT = 3  # 3: comparisons say method_* (format 2: lora_*), pairs, costs, frozen_by_construction
MEASURES = ("linear", "debiased")
PRIMARY_MEASURE = "debiased"
CI_ALPHA = 0.05
EMBEDDINGS = "embeddings"  # the label of hidden_states[0] (phases/extract.layer_labels)
# settings.lora_methods, kept for the readers of format 2 summaries: the methods of this kind (a name, not a rule)
LEGACY_LORA_KIND = "lora"


# ------------------------------------------------------------------------------------------------ study layout
def primary_pooling(study: Any) -> str:
    """The pooling the hypotheses use: the masked mean when extracted (it uses every text token), else the first."""
    return "mean" if "mean" in study.extraction.pooling else study.extraction.pooling[0]


def method_roles(study: Any) -> tuple[Any | None, list[Any]]:
    """(the reference: the study's first `full` method, or None; every other method, of any kind, compared with it
    in study order). Without a reference nothing is compared."""
    full = [m for m in study.methods if kind_of(m).is_reference]
    ref = full[0] if full else None
    return ref, [m for m in study.methods if ref is not None and m.name != ref.name]


NO_REFERENCE = ("the study has no `full` method: there is no reference to measure an accuracy gap or a drift "
                "reduction against, so H1a and H1b are not measured")  # fmt: skip


def task_cells(study: Any, task: str) -> list[Any]:
    return [c for c in study.cells() if c.task == task]


def _targets(m: Any) -> list[str]:
    """The module names / roles a method adapts, as its kind reads them (LoRA, IA3: target_modules, plus IA3's
    feedforward_modules)."""
    return kind_of(m).targets(m)


def lora_targets(study: Any) -> set[str]:
    """The short module names (`q_proj`, `query`) full fine-tuning's weight updates are measured on, like with like:
    the targets of the methods whose kind comes first by `MethodKind.weight_targets_priority` (the LoRA methods',
    else the IA3 methods'), else q and v (LoraMethod's defaults). Roles and groups (families.ROLES / GROUPS) map to
    the short name of the role in every known family, `all-linear` to every linear weights.py analyses. Works for
    any mix of kinds."""
    from lorascope import families
    from lorascope.analysis.weights import LINEAR_NAMES

    ranked = [(kind_of(m).weight_targets_priority, m) for m in study.methods]
    first = min((rank for rank, _ in ranked if rank is not None), default=None)
    picked = [t for rank, m in ranked if first is not None and rank == first for t in _targets(m)] or ["q", "v"]
    out: set[str] = set()
    for t in picked:
        if t == families.ALL_LINEAR:
            out |= set(LINEAR_NAMES)
        elif t in families.ROLES or t in families.GROUPS:
            out |= {fam.roles[r].rsplit(".", 1)[-1] for fam in families.FAMILIES for r in families.expand_roles([t])
                    if r in fam.roles}  # fmt: skip
        else:
            out.add(t.rsplit(".", 1)[-1])
    return out


def encoder_of(config_json: Any) -> bool | None:
    """Whether the base model is an encoder (`families.Family.encoder`), from its config.json (a path); None when
    the file is missing or its model_type is not a known family (then nothing is excluded on that ground)."""
    import json
    from pathlib import Path

    from lorascope import families
    from lorascope.errors import ConfigError

    try:
        return families.family_of(json.loads(Path(config_json).read_text())).encoder
    except (OSError, ValueError, ConfigError):
        return None


def json_safe(x: Any) -> Any:
    """JSON-safe: non-finite floats -> None, numpy scalars -> Python, recursively."""
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [json_safe(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ------------------------------------------------------------------------------------------------ layers and means
def _fixed(m: Any, labels: list[str], encoder: bool | None):
    """What method `m` leaves at the base's by construction on a model with these hidden-state labels (entries 1..n
    are the outputs of the n blocks): its kind's `fixed_by_construction`."""
    return kind_of(m).fixed_by_construction(m, len(labels) - 1, encoder)


def unchangeable_entries(study: Any, labels: list[str], encoder: bool | None = None) -> dict[int, str]:
    """{hidden-state index: why} for entries some compared method cannot change by construction, left out of every
    mean over layers (their drift is exactly 0 for that method and not for the reference, which would favour it in
    every mean): the embedding output, when a compared method cannot change it (its kind's
    `fixed_by_construction`: LoRA, IA3, prefix tuning and top-k layers unless a target names the embeddings; BitFit
    on a decoder, whose embeddings have neither bias nor norm; with the architecture unknown, `encoder` None, BitFit
    is assumed to change it: nothing is excluded without a reason)."""
    _, compared = method_roles(study)
    out = {}
    if labels and labels[0] == EMBEDDINGS:
        fixed = [m for m in compared if _fixed(m, labels, encoder).embedding_output]
        if fixed:
            groups: dict[str, list[str]] = {}  # methods of one kind on the same targets share one description
            for m in fixed:
                groups.setdefault(f"{m.kind}" + (f" on {', '.join(_targets(m))}" if _targets(m) else ""), []).append(m.name)
            what = "; ".join(f"{', '.join(names)} ({desc})" for desc, names in groups.items())
            out[0] = (f"{what} cannot change the embedding output: it is the base model's by construction "
                      "(drift exactly 0)")  # fmt: skip
    return out


def frozen_entries(study: Any, labels: list[str]) -> dict[str, dict[int, str]]:
    """{method: {hidden-state index: why}} for the block outputs a method leaves frozen (its kind's
    `fixed_by_construction`: a top_layers method with n blocks, n = len(labels) - 1, and the last k trained leaves
    entries 1..n-k at the base's, drift 0). They stay IN the means (that is the method's real property); the
    per-layer tables mark them."""
    out: dict[str, dict[int, str]] = {}
    for m in study.methods:
        fixed = _fixed(m, labels, None)
        if fixed.frozen_blocks is not None:
            out[m.name] = {block + 1: fixed.why_frozen for block in fixed.frozen_blocks}
    return out


def defined_layers(rows: Iterable[dict]) -> dict[tuple[str, str], list[int]]:
    """(task, pooling) -> the layer indexes where every cell's linear and debiased CKA vs the base is defined."""
    bad: dict[tuple[str, str], set[int]] = {}
    seen: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        key = (r["task"], r["pooling"])
        seen.setdefault(key, set()).add(int(r["layer_index"]))
        if not (math.isfinite(r["cka_linear"]) and math.isfinite(r["cka_debiased"])):
            bad.setdefault(key, set()).add(int(r["layer_index"]))
    return {k: sorted(v - bad.get(k, set())) for k, v in seen.items()}


def layers_in_mean(rows: list[dict], study: Any, labels: list[str], encoder: bool | None = None) -> tuple[dict, dict]:
    """((task, pooling) -> layer indexes entering every mean over layers, (task, pooling) -> {label: why left out})."""
    defined = defined_layers(rows)
    fixed = unchangeable_entries(study, labels, encoder)
    used, why = {}, {}
    for key, layers in defined.items():
        used[key] = [li for li in layers if li not in fixed]
        why[key] = {labels[li]: fixed[li] if li in layers else "CKA undefined (a constant representation)"
                    for li in range(len(labels)) if li not in used[key]}  # fmt: skip
    return used, why


def seed_means(rows: Iterable[dict], key: str, layers: Mapping[tuple[str, str], list[int]]) -> dict[tuple, float]:
    """(task, pooling, method, seed) -> mean of rows[key] over the layers in `layers` (nan when there are none)."""
    acc: dict[tuple, list[float]] = {}
    for r in rows:
        k = (r["task"], r["pooling"], r["method"], int(r["seed"]))
        acc.setdefault(k, [])
        if int(r["layer_index"]) in layers[(r["task"], r["pooling"])]:
            acc[k].append(float(r[key]))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in acc.items()}


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


# ------------------------------------------------------------------------------------------------ gates
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
        if not (np.array_equal(p["idx"], first["idx"]) and np.array_equal(p["label"], first["label"])):
            raise ValueError(f"cell {name}: its validation predictions are on other examples or labels than "
                             f"{cells[0].name}'s (re-run the train phase for it)")  # fmt: skip
    boot = vd.example_bootstrap(first["label"], {c: p["pred"] for c, p in preds.items()}, task_metric, seed=seed)
    for c, v in boot["full"].items():
        if abs(v - reported[c]) > 1e-9:
            raise ValueError(f"cell {c}: {task_metric} from predictions.jsonl is {v}, metrics.json says {reported[c]}")
    gates = {c: vd.learning_gate(v, boot["baseline"], boot["boot"][c] - boot["boot_baseline"]) for c, v in boot["full"].items()}
    return gates, boot["baseline"], boot


def _not_learned(method: str, gates: Mapping[str, dict]) -> list[str]:
    """The learning-gate failures of one method's cells ({seed: gate}), as evidence text."""
    out = []
    for seed, g in gates.items():
        if g["learned"] is None:
            out.append(f"{method} seed {seed}: learning not checked (no per-example predictions, no majority baseline)")
        elif not g["learned"]:
            lower = f", gain lower bound {100 * g['gain_lower']:.1f} pp" if g["gain_lower"] is not None else ""
            out.append(f"{method} seed {seed} did not learn ({100 * g['value']:.1f} vs majority baseline {100 * g['baseline']:.1f}, "
                       f"needs +{100 * g['margin']:.1f} pp{lower})")  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ the summary
def build_summary(study: Any, rows: list[dict], noise: list[dict], subset: Mapping[str, Mapping[str, np.ndarray]],
                  resamplers: Mapping[str, Any], metrics: Mapping[str, dict], predictions: Mapping[str, Any],
                  wrows: list[dict], n_examples: Mapping[str, int], labels: list[str],
                  encoder: bool | None = None) -> dict:  # fmt: skip
    """Everything the report prints, from the drift phase's rows, the cells' metrics and predictions. `encoder`:
    whether the model is an encoder (families.Family.encoder; None = unknown), for `changes_embedding_output`."""
    full, loras = method_roles(study)
    primary = primary_pooling(study)
    poolings = list(study.extraction.pooling)
    used, excluded = layers_in_mean(rows, study, labels, encoder)
    frozen = frozen_entries(study, labels)
    drift_means = {m: seed_means(rows, f"drift_{m}", used) for m in MEASURES}
    cos_means = {k: seed_means(rows, k, used) for k in ("cosine", "centered_cosine")}
    results: dict[str, Any] = {}
    for ti, task in enumerate(t.name for t in study.tasks):
        tmetric = study.task(task).selection_metric
        cells = task_cells(study, task)
        gates, baseline, boot = learning(tmetric, cells, metrics, predictions, seed=ti)
        methods: dict[str, Any] = {}
        for method in dict.fromkeys(c.method for c in cells):
            mcells = [c for c in cells if c.method == method]
            methods[method] = method_entry(study, task, method, mcells, rows, noise, used, drift_means, cos_means,
                                           metrics, gates, labels)  # fmt: skip
        comparisons = {}
        if full is not None:
            for lm in loras:
                comparisons[lm.name] = comparison(study, task, cells, rows, full.name, lm.name, drift_means, methods,
                                                  subset.get(task), resamplers.get(task), used, labels,
                                                  frozen.get(lm.name, {}))  # fmt: skip
        results[task] = {"metric_name": tmetric, "n_examples": n_examples[task], "methods": methods,
                         "comparisons": comparisons, "majority_baseline": baseline,
                         "layers_in_mean": {p: [labels[li] for li in used[(task, p)]] for p in poolings},
                         "layers_excluded": {p: excluded[(task, p)] for p in poolings if excluded[(task, p)]},
                         "example_se_gap_pp": {lm.name: vd.example_se_of_gap(boot["boot"], [c.name for c in cells if c.method == full.name],
                                                                             [c.name for c in cells if c.method == lm.name])
                                               for lm in loras} if boot and full is not None else {}}  # fmt: skip
    holm_across_tasks(results, study, full, loras)
    hyp = study.hypotheses
    hyps = hypotheses_from(study, results)
    return {
        "format": SUMMARY_FORMAT,
        "tasks": list(results),
        "results": results,
        "weights": weight_summary(wrows, lora_targets(study)),
        "hypotheses": hyps,
        "pairs": pair_verdicts(study, results, hyps) if full is not None else {},
        "costs": cost_table(study, metrics),
        "frozen_by_construction": {m: [labels[li] for li in v] for m, v in frozen.items()},
        "labels": labels,
        "settings": {
            "primary_measure": f"cka_{PRIMARY_MEASURE}", "primary_pooling": primary, "poolings": poolings,
            "measures": list(MEASURES), "full_method": full.name if full else None,
            "reference_method": full.name if full else None, "compared_methods": [m.name for m in loras],
            "lora_methods": [m.name for m in study.methods if m.kind == LEGACY_LORA_KIND],
            "method_kinds": {m.name: m.kind for m in study.methods}, "no_reference": None if full else NO_REFERENCE,
            "seeds": list(study.seeds), "n_seeds": len(study.seeds), "n_examples": dict(n_examples), "layers": len(labels),
            "resamples": next((r.n_resamples for r in resamplers.values()), None),
            "subsample_m": {t: r.m for t, r in resamplers.items()}, "ci_level_pct": 100 * (1 - CI_ALPHA),
            "verdict_alpha_one_sided": vd.ALPHA, "verdict_interval_pct": 100 * (1 - 2 * vd.ALPHA),
            "verdict_bound_pct": 100 * (1 - vd.ALPHA), "power_target_pct": 100 * vd.POWER,
            "learn_margin_pct_of_headroom": 100 * vd.LEARN_MARGIN, "example_bootstrap": vd.BOOTSTRAP,
            "sign_flip_floor_two_sided": stats.sign_flip_floor(len(study.seeds)),
            "sign_flip_floor_one_sided": stats.sign_flip_floor(len(study.seeds), "greater"),
            "h1a_max_gap_pp": hyp.h1a_max_gap_pp, "h1b_min_reduction_pct": hyp.h1b_min_reduction_pct,
            "h2_max_overhead_pct": hyp.h2_max_overhead_pct,
        },  # fmt: skip
    }


def method_entry(study: Any, task: str, method: str, mcells: list[Any], rows: list[dict], noise: list[dict],
                 used: Mapping, drift_means: Mapping, cos_means: Mapping, metrics: Mapping, gates: Mapping,
                 labels: list[str]) -> dict:  # fmt: skip
    """One method on one task: metric, learning gates, drift and cosines over seeds, seed noise floor (layer mean
    and per layer), and per-layer bands (mean, min, max over seeds)."""
    tmetric = study.task(task).selection_metric
    entry: dict[str, Any] = {"kind": study.method(method).kind, "cells": [c.name for c in mcells]}
    entry["metric"] = _summary({c.seed: metrics[c.name]["validation"][tmetric] for c in mcells})
    entry["accuracy"] = _summary({c.seed: metrics[c.name]["validation"]["accuracy"] for c in mcells})
    entry["learning"] = {str(c.seed): gates[c.name] for c in mcells}
    entry["learned"] = all(gates[c.name]["learned"] is True for c in mcells)
    entry["drift"] = {p: {m: _summary({c.seed: drift_means[m][(task, p, method, c.seed)] for c in mcells}) for m in MEASURES}
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
        entry["noise_floor"][p] = {m: stats.noise_floor([np.mean([r[f"drift_{m}"] for r in v if r["layer_index"] in layers])
                                                         if layers else float("nan") for v in per_pair.values()])
                                   for m in MEASURES}  # fmt: skip
        entry["within_floor"][p] = {m: vd.within_floor(entry["drift"][p][m]["mean"], entry["noise_floor"][p][m]["mean"])
                                    for m in MEASURES}  # fmt: skip
        layer_stats: dict[str, Any] = {}
        for m in MEASURES:
            per_layer = [[r[f"drift_{m}"] for r in rows if r["task"] == task and r["method"] == method
                          and r["pooling"] == p and r["layer_index"] == li] for li in range(len(labels))]  # fmt: skip
            floor = [[r[f"drift_{m}"] for r in pair_rows if r["layer_index"] == li] for li in range(len(labels))]
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
    comp: dict[str, Any] = {p: {m: compare(pick(m, p, full), pick(m, p, lora)) for m in MEASURES} for p in study.extraction.pooling}
    # per layer: the same H1b rule on each hidden-state entry, with that entry's noise floor
    fl, ll = methods[full]["layers"][primary][PRIMARY_MEASURE], methods[lora]["layers"][primary][PRIMARY_MEASURE]
    index = {(r["method"], int(r["seed"]), int(r["layer_index"])): float(r["drift_" + PRIMARY_MEASURE])
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
            for m in MEASURES:
                comps = [results[t]["comparisons"][lm.name][p][m] for t in results]
                for key, get in (("holm_p_t", lambda c: c["paired_t"]["p"]), ("holm_p_sign_flip", lambda c: c["sign_flip_p"])):
                    ps = [get(c) for c in comps]
                    adj = stats.holm(ps) if all(math.isfinite(x) for x in ps) else [float("nan")] * len(ps)
                    for c, a in zip(comps, adj, strict=True):
                        c[key] = float(a)


# ------------------------------------------------------------------------------------------------ hypotheses
def compared_words(study: Any) -> str:
    """How the hypotheses name the compared methods: their kind's `hypothesis_subject` when every one is of one kind
    that has one ("LoRA" for LoRA methods, the seed study), else "each compared method's"."""
    _, compared = method_roles(study)
    subjects = {kind_of(m).hypothesis_subject for m in compared}
    return subjects.pop() if len(subjects) == 1 and None not in subjects else "each compared method's"


def hypotheses_from(study: Any, results: Mapping[str, Any]) -> dict:
    """H1a and H1b per task and compared method (every method but the reference, of any kind) by `verdicts.h1a` /
    `verdicts.h1b`, one verdict per (reference, method) pair and task, and their overall verdicts (`verdicts.combine`
    over every pair and task; `by_method`: combined over the tasks of one pair). No reference: not measured, and
    `no_reference` says why."""
    full, loras = method_roles(study)
    hyp = study.hypotheses
    primary = primary_pooling(study)
    h1a: dict[str, Any] = {}
    h1b: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for task, res in results.items() if full is not None else []:
        fm = res["methods"][full.name]
        for lm in loras:
            key = task if len(loras) == 1 else f"{task}/{lm.name}"
            owner[key] = lm.name
            lmm = res["methods"][lm.name]
            ft_gates, lo_gates = _not_learned(full.name, fm["learning"]), _not_learned(lm.name, lmm["learning"])
            h1a[key] = vd.h1a({int(s): v for s, v in fm["metric"]["values"].items()},
                              {int(s): v for s, v in lmm["metric"]["values"].items()}, hyp.h1a_max_gap_pp,
                              example_se_pp=res["example_se_gap_pp"].get(lm.name), gates=ft_gates,
                              names=(full.name, lm.name))  # fmt: skip
            ft = {int(s): v for s, v in fm["drift"][primary][PRIMARY_MEASURE]["values"].items()}
            lo = {int(s): v for s, v in lmm["drift"][primary][PRIMARY_MEASURE]["values"].items()}
            floor = fm["noise_floor"][primary][PRIMARY_MEASURE]["mean"]
            indist = [f"full fine-tuning's drift {fm['drift'][primary][PRIMARY_MEASURE]['mean']:.4f} is within its seed "
                      f"noise floor {floor:.4f}"] if fm["within_floor"][primary][PRIMARY_MEASURE] else []  # fmt: skip
            v = vd.h1b(ft, lo, hyp.h1b_min_reduction_pct, gates=ft_gates + lo_gates, indistinguishable=indist)
            notes = []
            if lmm["within_floor"][primary][PRIMARY_MEASURE]:
                notes.append(f"{lm.name}'s drift {lmm['drift'][primary][PRIMARY_MEASURE]['mean']:.4f} is within its own seed noise "
                             f"floor {lmm['noise_floor'][primary][PRIMARY_MEASURE]['mean']:.4f} (indistinguishable from retraining)")  # fmt: skip
            ci = res["comparisons"][lm.name].get("reduction_ci")
            if ci:
                notes.append(f"for these trained models, 95% CI over examples of the reduction of the means "
                             f"[{ci['lo']:.1f}, {ci['hi']:.1f}] (not a seed-level interval)")  # fmt: skip
            layer_v = [f"{label}: {lv['verdict']}" + (" (frozen by construction)" if lv.get("frozen_by_construction") else "")
                       for label, lv in res["comparisons"][lm.name]["layers"].items()]  # fmt: skip
            notes.append("per layer " + ", ".join(layer_v))
            v["evidence"] += "; " + "; ".join(notes)
            h1b[key] = v
    who = compared_words(study)
    out = {}
    for name, parts, text in (
        ("H1a", h1a, f"H1a: {who} task metric within {hyp.h1a_max_gap_pp:g} pp of full fine-tuning"),
        ("H1b", h1b, f"H1b: {who} representation drift at least {hyp.h1b_min_reduction_pct:g}% below full "
                     f"fine-tuning ({PRIMARY_MEASURE} CKA, {primary} pooling, mean over the layers in the mean)"),
    ):  # fmt: skip
        out[name] = {"hypothesis": text, "verdict": vd.combine(parts), "by": parts,
                     "rule": vd.RULES[name] + "; overall: " + vd.RULES["overall"]}  # fmt: skip
        if len(loras) > 1:
            out[name]["by_method"] = {m.name: {"verdict": vd.combine({k: v for k, v in parts.items() if owner[k] == m.name}),
                                               "evidence": f"{full.name} vs {m.name} ({m.kind}) over {len(results)} task(s)"}
                                      for m in loras}  # fmt: skip
        if full is None:
            out[name]["no_reference"] = NO_REFERENCE
    return out


def pair_verdicts(study: Any, results: Mapping[str, Any], hypotheses: Mapping[str, Any]) -> dict:
    """{method: {"kind", "reference", "tasks": {task: {"H1a", "H1b", "gap_pp", "reduction_pct"}}, "H1a", "H1b"}}: the
    verdicts of each (reference, method) pair, read from `hypotheses` (no rule restated here)."""
    full, loras = method_roles(study)
    out: dict[str, Any] = {}
    for m in loras:
        tasks = {}
        for task in results:
            key = task if len(loras) == 1 else f"{task}/{m.name}"
            a, b = hypotheses["H1a"]["by"][key], hypotheses["H1b"]["by"][key]
            tasks[task] = {"H1a": a["verdict"], "H1b": b["verdict"], "gap_pp": a.get("gap_pp"),
                           "reduction_pct": b.get("estimate_pct")}  # fmt: skip
        out[m.name] = {"kind": m.kind, "reference": full.name, "tasks": tasks,
                       "H1a": vd.combine({t: {"verdict": v["H1a"]} for t, v in tasks.items()}),
                       "H1b": vd.combine({t: {"verdict": v["H1b"]} for t, v in tasks.items()})}  # fmt: skip
    return out


def h2_hypothesis(study: Any, bench: Mapping[str, Mapping[str, Any]]) -> dict:
    """H2 from the committed bench summaries ({backend: {"summary", "bundle", "attempt"}}): `verdicts.h2_parts` on
    every backend's configs (per regime and batch size), the same function and inputs as the bench phase's own
    summary, combined over everything measured."""
    limit = study.hypotheses.h2_max_overhead_pct
    hyp = f"H2: separate adapter serving at most {limit:g}% slower than merged"
    if not bench:
        return {"hypothesis": hyp, "verdict": vd.NOT_MEASURED, "evidence": "no bench bundle was committed", "by": {},
                "rule": vd.RULES["H2"], "source": None}  # fmt: skip
    by: dict[str, dict] = {}
    by_backend: dict[str, dict] = {}
    for backend in sorted(bench, key=lambda b: (b != "hf", b)):
        parts = vd.h2_parts(bench[backend]["summary"].get("configs") or [], limit, prefix=backend)
        by.update(parts)
        w = max(parts.values(), key=lambda v: v["pct"], default=None)
        by_backend[backend] = {"verdict": vd.combine(parts) if parts else vd.NOT_MEASURED,
                               "evidence": (f"{len(parts)} (regime, batch size) parts; largest overhead {w['pct']:.1f}% at "
                                            f"batch {w['batch_size']} ({w['regime']})" if w else "no separate and merged configs")}  # fmt: skip
    worst = max(by.values(), key=lambda v: v["pct"], default=None)
    evidence = (f"{len(by)} (backend, regime, batch size) parts; largest overhead {worst['pct']:.1f}% at batch "
                f"{worst['batch_size']}" if worst else "the bench bundles have no separate and merged configs")  # fmt: skip
    return {"hypothesis": hyp, "verdict": vd.combine(by), "evidence": evidence, "by": by, "by_backend": by_backend,
            "rule": vd.RULES["H2"] + "; overall: " + vd.RULES["overall"],
            "source": {b: {"bundle": v["bundle"], "attempt": v["attempt"]} for b, v in sorted(bench.items())}}  # fmt: skip


def bench_section(bench: Mapping[str, Mapping[str, Any]]) -> dict:
    """Latency by mode and batch size from each committed bench summary, with intervals on the log scale
    (`verdicts.positive_interval`: never below 0)."""
    out = {}
    for backend, b in bench.items():
        s = b["summary"]
        conf = (s.get("protocol") or {}).get("confidence", 0.95)
        configs = []
        for c in s.get("configs", []):
            ci = vd.positive_interval(c["mean_batch_ms_per_repeat"], conf)
            configs.append({"mode": c["mode"], "order": c["order"], "batch_size": int(c["batch_size"]),
                            "regime": c.get("regime"), "mean_batch_ms": c["latency_batch_ms"]["mean"],
                            "p50_ms": c["latency_batch_ms"].get("p50"), "low": ci["low"], "high": ci["high"],
                            "throughput_rps": (c.get("throughput_rps") or {}).get("mean")})  # fmt: skip
        out[backend] = {"device": s.get("device"), "device_name": s.get("device_name"), "dtype": s.get("dtype"),
                        "platform": s.get("platform"), "regimes": s.get("regimes") or ["eager"],
                        "regimes_skipped": s.get("regimes_skipped") or [],
                        "regime_vs_eager": s.get("regime_vs_eager") or {},
                        "confidence": conf, "confidence_pct": 100 * conf, "configs": configs, "bundle": b["bundle"], "attempt": b["attempt"],
                        "h2_verdict": (s.get("h2") or {}).get("verdict"),
                        "correctness": correctness_rows(s.get("correctness") or {})}  # fmt: skip
    return out


def correctness_rows(c: Mapping[str, Any]) -> list[dict]:
    """The bench's correctness checks as rows (check, requests, argmax mismatches, max prob diff, ok): within the
    backend (multi-adapter vs single, merged vs separate) and, for vllm, against HF per mode kind."""
    rows = []
    for name in ("multi_vs_single", "merged_vs_separate", "separate_batched_vs_single", "regime_vs_eager"):
        r = c.get(name)
        if r:
            rows.append({"check": name, "requests": r["requests"], "argmax_mismatches": r["argmax_mismatches"],
                         "max_prob_diff": r["max_prob_diff"], "ok": r["ok"]})  # fmt: skip
    vh = c.get("vllm_vs_hf") or {}
    pairs = [(kind, vh.get(kind)) for kind in ("separate", "multi", "merged", "full")]
    pairs += [(f"{kind} [{regime}]", r) for regime, by in (vh.get("by_regime") or {}).items() for kind, r in by.items()]
    for kind, r in pairs:
        if r:
            rows.append({"check": f"vllm_vs_hf {kind}", "requests": r["requests"], "argmax_mismatches": r["argmax_mismatches"],
                         "max_prob_diff": r["max_prob_diff"], "ok": r["ok"]})  # fmt: skip
    return rows


def committed_bench(ctx: Any) -> dict[str, dict]:
    """{backend: {"summary", "bundle", "attempt", "committed_at"}} of the study's committed bench bundles."""
    out = {}
    for backend in ctx.study.bench.backends:
        b = ctx.bundle("bench", backend)
        if b is not None and "summary.json" in b.files:
            out[backend] = {"summary": b.read_json("summary.json"), "bundle": f"bench/{backend}", "attempt": b.attempt,
                            "committed_at": b.commit.get("committed_at")}  # fmt: skip
    return out


def weight_summary(wrows: list[dict], targets: set[str]) -> dict:
    """Per task and method: mean and SD over (module, seed) of the update's rank measures and intruder counts, on the
    LoRA target modules (like with like); a full method's other linears, when analysed, under "<method> (other
    linears)"."""
    out: dict[str, dict] = {}
    keys = ("stable_rank", "effective_rank", "r90", "n_intruders", "delta_rel")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in wrows:
        group = r["method"] if r["module"] in targets else f"{r['method']} (other linears)"
        groups.setdefault((r["task"], group), []).append(r)
    for (task, method), rs in groups.items():
        entry: dict[str, Any] = {"modules": len({r["name"] for r in rs}), "rows": len(rs),
                                 "module_types": sorted({r["module"] for r in rs})}  # fmt: skip
        for k in keys:
            v = np.array([float(r[k]) for r in rs])
            entry[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"), "max": float(v.max())}
        entry["modules_with_intruders_pct"] = 100.0 * float(np.mean([r["n_intruders"] > 0 for r in rs]))
        out.setdefault(task, {})[method] = entry
    return out


def published_section(study: Any, summary: Mapping[str, Any]) -> dict | None:
    """The study's published reference numbers (`report.reference`) next to ours, like with like: each published
    number is compared with our mean over seeds of the SAME metric (the task's selection metric, or accuracy, which
    every method entry holds); a published metric we do not summarise (F1 on a task selected by accuracy) gets no
    number of ours. {"source", "tasks": {task: {"metric", "selection_metric", "methods": {method: {"value" (0..1),
    "value_pct", "ours_pct", "ours_sd_pct", "diff_pp" (ours - published), "same_metric"}}}}}; None without a
    reference section."""
    ref = getattr(getattr(study, "report", None), "reference", None)
    if ref is None:
        return None
    tasks: dict[str, Any] = {}
    for task, by_method in ref.values.items():
        res = summary["results"].get(task)
        if res is None:
            continue
        metric = ref.metric_of(task)
        field = "metric" if metric == res["metric_name"] else "accuracy" if metric == "accuracy" else None
        methods = {}
        for method, value in by_method.items():
            e = res["methods"].get(method)
            ours = e[field] if e is not None and field is not None else None
            mean = ours.get("mean") if ours else None
            ok = mean is not None and math.isfinite(mean)
            methods[method] = {"value": value / 100.0, "value_pct": value, "same_metric": metric == res["metric_name"],
                               "ours_pct": 100.0 * mean if ok else None,
                               "ours_sd_pct": 100.0 * ours["sd"] if ok and ours.get("sd") is not None and math.isfinite(ours["sd"]) else None,
                               "diff_pp": 100.0 * mean - value if ok else None}  # fmt: skip
        tasks[task] = {"metric": metric, "selection_metric": res["metric_name"], "methods": methods}
    return {"source": ref.source, "tasks": tasks}
