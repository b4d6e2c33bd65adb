"""The drift bundle's summary.json, from the rows the drift phase measured (no new measurements): `build_summary`
assembles the study layout (`study_layout`), the layers in the mean (`layers_in_mean`), the drift statistics
(`drift_stats`), the hypotheses (`hypotheses`), the weight-row and cost summaries, and the settings. The report phase
imports `bench_section`, `json_safe` and `published_section` from here (and `hypotheses.h2_hypothesis`) to re-read H2
when a bench bundle appeared after drift.

`study` is the typed study (duck-typed here: tasks, methods with `kind`, cells, extraction.pooling, seeds,
hypotheses); no torch, no store access.

The reference is the study's first `full` method; every other method, of any kind, is compared with it (one pair
each) under the same H1a / H1b rules (`verdicts`). No full method: nothing is compared (`NO_REFERENCE`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from lorascope.analysis import similarity, stats
from lorascope.analysis import verdicts as vd
from lorascope.analysis.costs import cost_table
from lorascope.analysis.drift_stats import (
    CI_ALPHA,
    PRIMARY_MEASURE,
    comparison,
    drift_column,
    drift_measures,
    holm_across_tasks,
    learning,
    method_entry,
)
from lorascope.analysis.hypotheses import hypotheses_from, pair_verdicts, reference_pair
from lorascope.analysis.layers_in_mean import (
    defined_layers,
    fixed_entries,
    frozen_entries,
    layers_in_mean,
    pair_layers,
    seed_means,
)
from lorascope.analysis.study_layout import NO_REFERENCE, method_roles, primary_pooling, task_cells

# 4: a pair's means cover only the entries both methods can change (comparisons' layers_in_mean), whole-model means,
#    the reference's `moved` gate instead of `within_floor`, exploratory verdicts, counts per verdict, like-for-like
#    weight rows (weights over the modules every method changes, weights_union); 3: comparisons say method_*
#    (format 2: lora_*), pairs, costs, frozen_by_construction
SUMMARY_FORMAT = 4
# settings.lora_methods, kept for the readers of format 2 summaries: the methods of this kind (a name, not a rule)
LEGACY_LORA_KIND = "lora"


def encoder_of(config_json: Any) -> bool | None:
    """Whether the base model is an encoder (`families.Family.encoder`), from its config.json (a path); None when
    the file is missing or its model_type is not a known family (then nothing is excluded on that ground)."""
    import json
    from pathlib import Path

    from lorascope.errors import ConfigError
    from lorascope.models import families

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


def build_summary(study: Any, rows: list[dict], noise: list[dict], subset: Mapping[str, Mapping[str, np.ndarray]],
                  resamplers: Mapping[str, Any], metrics: Mapping[str, dict], predictions: Mapping[str, Any],
                  wrows: list[dict], n_examples: Mapping[str, int], labels: list[str],
                  encoder: bool | None = None, task_facts: Mapping[str, Mapping[str, Any]] | None = None) -> dict:  # fmt: skip
    """Everything the report prints, from the drift phase's rows, the cells' metrics and predictions. `encoder`:
    whether the model is an encoder (families.Family.encoder; None = unknown), for `changes_embedding_output`.
    `task_facts`: {task: the task type's gate facts as plain values (`tasks.GateFacts.as_dict`: the primary metric,
    its units, what a trivial predictor scores)}, handed down by the drift phase (no task code imported here); None:
    every task's trivial predictor is the best constant class, its units percentage points."""
    full, loras = method_roles(study)
    primary = primary_pooling(study)
    poolings = list(study.extraction.pooling)
    used, excluded = layers_in_mean(rows, study, labels, encoder)  # the entries every method can change
    whole = defined_layers(rows)  # the whole model: every entry where CKA is defined
    fixed = fixed_entries(study, labels, encoder)
    frozen = frozen_entries(study, labels)
    drift_means = {m: seed_means(rows, drift_column(m), used) for m in drift_measures()}
    whole_means = {m: seed_means(rows, drift_column(m), whole) for m in drift_measures()}
    cos_means = {m.name: seed_means(rows, m.column, used) for m in similarity.layer_measures() if not m.cka}
    pairs = {lm.name: pair_layers(whole, fixed, [full.name, lm.name], labels) for lm in loras} if full is not None else {}
    pair_means = {name: {m: seed_means(rows, drift_column(m), layers) for m in drift_measures()}
                  for name, (layers, _) in pairs.items()}  # fmt: skip
    results: dict[str, Any] = {}
    for ti, task in enumerate(t.name for t in study.tasks):
        tmetric = study.task(task).selection_metric
        cells = task_cells(study, task)
        facts = (task_facts or {}).get(task, {})
        gates, baseline, boot = learning(tmetric, cells, metrics, predictions, seed=ti, trivial_value=facts.get("trivial_value"))
        methods: dict[str, Any] = {}
        for method in dict.fromkeys(c.method for c in cells):
            mcells = [c for c in cells if c.method == method]
            methods[method] = method_entry(study, task, method, mcells, rows, noise, used, drift_means, cos_means,
                                           metrics, gates, labels, whole, whole_means, subset.get(task),
                                           resamplers.get(task))  # fmt: skip
        comparisons = {}
        if full is not None:
            for lm in loras:
                comparisons[lm.name] = comparison(study, task, cells, rows, noise, full.name, lm.name, pair_means[lm.name],
                                                  methods, subset.get(task), resamplers.get(task), *pairs[lm.name],
                                                  labels, frozen.get(lm.name, {}), whole_means)  # fmt: skip
        results[task] = {"metric_name": tmetric, "n_examples": n_examples[task], "methods": methods,
                         "comparisons": comparisons, "majority_baseline": baseline,
                         "layers_in_mean": {p: [labels[li] for li in used[(task, p)]] for p in poolings},
                         "layers_excluded": {p: excluded[(task, p)] for p in poolings if excluded[(task, p)]},
                         "example_se_gap_pp": {lm.name: vd.example_se_of_gap(boot["boot"], [c.name for c in cells if c.method == full.name],
                                                                             [c.name for c in cells if c.method == lm.name])
                                               for lm in loras} if boot and full is not None else {}}  # fmt: skip
    holm_across_tasks(results, study, full, loras)
    hyp = study.hypotheses
    hyps = hypotheses_from(study, results, task_facts)
    weights, weights_union, weights_modules = weight_summary(wrows)
    ref_pair = reference_pair(study)
    return {
        "format": SUMMARY_FORMAT,
        "tasks": list(results),
        "results": results,
        "weights": weights,
        "weights_union": weights_union,
        "weights_modules": weights_modules,
        "hypotheses": hyps,
        "pairs": pair_verdicts(study, results, hyps) if full is not None else {},
        "costs": cost_table(study, metrics),
        "frozen_by_construction": {m: [labels[li] for li in v] for m, v in frozen.items()},
        "fixed_by_construction": {m: {labels[li]: why for li, why in v.items()} for m, v in fixed.items()},
        "labels": labels,
        "settings": {
            "primary_measure": similarity.MEASURES.get(PRIMARY_MEASURE).column, "primary_pooling": primary, "poolings": poolings,
            "measures": list(drift_measures()), "full_method": full.name if full else None,
            "reference_method": full.name if full else None, "compared_methods": [m.name for m in loras],
            "lora_methods": [m.name for m in study.methods if m.kind == LEGACY_LORA_KIND],
            "method_kinds": {m.name: m.kind for m in study.methods}, "no_reference": None if full else NO_REFERENCE,
            "seeds": list(study.seeds), "n_seeds": len(study.seeds), "n_examples": dict(n_examples), "layers": len(labels),
            "min_seeds_for_verdict": vd.MIN_SEEDS, "exploratory": len(study.seeds) < vd.MIN_SEEDS,
            "reference_pair": [full.name, ref_pair.name] if full is not None and ref_pair is not None else None,
            "resamples": next((r.n_resamples for r in resamplers.values()), None),
            "subsample_m": {t: r.m for t, r in resamplers.items()}, "ci_level_pct": 100 * (1 - CI_ALPHA),
            "verdict_alpha_one_sided": vd.ALPHA, "verdict_interval_pct": 100 * (1 - 2 * vd.ALPHA),
            "verdict_bound_pct": 100 * (1 - vd.ALPHA), "power_target_pct": 100 * vd.POWER,
            "learn_margin_pct_of_headroom": 100 * vd.LEARN_MARGIN, "example_bootstrap": vd.BOOTSTRAP,
            "sign_flip_floor_two_sided": stats.sign_flip_floor(len(study.seeds)),
            "sign_flip_floor_one_sided": stats.sign_flip_floor(len(study.seeds), "greater"),
            "h1a_max_gap_pp": hyp.h1a_max_gap_pp, "h1b_min_reduction_pct": hyp.h1b_min_reduction_pct,
            "h2_max_overhead_pct": hyp.h2_max_overhead_pct,
            **({"tasks": {t: dict(f) for t, f in task_facts.items()}} if task_facts else {}),
        },  # fmt: skip
    }


WEIGHT_KEYS = ("stable_rank", "effective_rank", "r90", "n_intruders", "delta_rel")


def _weight_entry(rs: list[dict]) -> dict:
    """Mean, SD (over modules and seeds) and max of each of WEIGHT_KEYS over the rows `rs` of one method."""
    entry: dict[str, Any] = {"modules": len({r["name"] for r in rs}), "rows": len(rs),
                             "module_types": sorted({r["module"] for r in rs})}  # fmt: skip
    for k in WEIGHT_KEYS:
        v = np.array([float(r[k]) for r in rs])
        entry[k] = {"mean": float(v.mean()), "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"), "max": float(v.max())}
    entry["modules_with_intruders_pct"] = 100.0 * float(np.mean([r["n_intruders"] > 0 for r in rs]))
    return entry


def weight_summary(wrows: list[dict]) -> tuple[dict, dict, dict]:
    """Weight rows like for like: (per task and method over the modules EVERY method with weight rows changes (the
    intersection of their module sets, by full name: the same blocks and projections), per task and method over every
    module it changes (the union: rows that are not comparable across methods), per task the module sets: {"common":
    [names], "common_types": [short names], "by_method": {method: {"modules", "module_types"}}}). Each entry: mean and
    SD over (module, seed) of the update's rank measures and intruder counts (`_weight_entry`). A task whose methods
    share no module has no common rows (an empty dict)."""
    by_task: dict[str, dict[str, list[dict]]] = {}
    for r in wrows:
        by_task.setdefault(r["task"], {}).setdefault(r["method"], []).append(r)
    common_out: dict[str, dict] = {}
    union_out: dict[str, dict] = {}
    modules: dict[str, dict] = {}
    for task, by_method in by_task.items():
        names = {m: {r["name"] for r in rs} for m, rs in by_method.items()}
        common = set.intersection(*names.values()) if names else set()
        union_out[task] = {m: _weight_entry(rs) for m, rs in by_method.items()}
        common_out[task] = {m: _weight_entry([r for r in rs if r["name"] in common]) for m, rs in by_method.items()} if common else {}
        modules[task] = {"common": sorted(common), "common_types": sorted({r["module"] for rs in by_method.values() for r in rs
                                                                             if r["name"] in common}),
                         "by_method": {m: {"modules": len(names[m]), "module_types": union_out[task][m]["module_types"]}
                                       for m in by_method}}  # fmt: skip
    return common_out, union_out, modules


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
