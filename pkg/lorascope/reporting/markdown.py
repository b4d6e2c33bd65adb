"""ANALYSIS_REPORT.md from the report's numbers (the drift bundle's summary.json, H2/bench possibly re-read at report
time). Every number printed is a value of that dict, rounded by one of the formatters below; the test
tests/phases/test_report.py parses the report and checks it. Measure names and display names come from the measure
registry (`analysis.similarity.MEASURES`)."""

from __future__ import annotations

import math
from typing import Any

from lorascope.analysis import similarity
from lorascope.reporting.bench_markdown import device_words, stack_name

FIGURES = {
    "layer_drift": "Layer-wise drift per task (every method, band = min..max over seeds, dashed = seed noise floor)",
    "metric_vs_drift": "Task metric against mean drift, one point per cell",
    "pareto": "Task metric against drift (and forgetting) per method, with the Pareto front",
    "drift_reduction": "Drift reduction with its confidence interval over examples",
    "weights": "Weight-space summary of the updates",
    "latency": "Serving latency by mode and batch size",
    "generation": "Generation serving: TPOT by batch size, and throughput against latency",
}


def _missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and not math.isfinite(x))


def fixed(x: Any, decimals: int = 4) -> str:
    """Fixed decimals; n/a for a missing (non-finite) value."""
    if _missing(x):
        return "n/a"
    return f"{float(x):.{decimals}f}"


def p_value(x: Any) -> str:
    """A p-value: 3 decimals, or scientific below 0.001."""
    if _missing(x):
        return "n/a"
    return f"{x:.3f}" if x >= 1e-3 else f"{x:.1e}"


def mean_sd(seed_summary: dict, decimals: int = 4) -> str:
    """mean ± SD of a seed summary."""
    return f"{fixed(seed_summary.get('mean'), decimals)} ± {fixed(seed_summary.get('sd'), decimals)}"


def _bold(verdict: str) -> str:
    return f"**{verdict}**"


def primary_measure(settings: dict) -> str:
    """The primary measure's registry name ("debiased"); the summary records the column of its value
    ("cka_debiased")."""
    return similarity.measure_of_column(settings["primary_measure"]).name


def method_value(entry: dict, key: str) -> Any:
    """A compared method's field of a comparison: `method_<key>`, or `lora_<key>` in summaries written before
    methods other than LoRA were compared (format 2)."""
    return entry.get(f"method_{key}", entry.get(f"lora_{key}"))


def compared_methods(numbers: dict) -> list[str]:
    settings = numbers["settings"]
    return settings.get("compared_methods", settings.get("lora_methods", []))


def banner(numbers: dict) -> list[str]:
    prov = numbers["provenance"]
    lines = []
    if prov.get("builtin_model"):
        llama = prov["model"] == "builtin:tiny-llama"
        lines += [
            f"> **WARNING: THESE NUMBERS MEAN NOTHING ABOUT {'TINYLLAMA' if llama else 'ANY REAL MODEL'}.** This is a smoke "
            f"study: the model is `{prov['model']}`, a tiny randomly initialised {'Llama' if llama else 'model'} built by the package"
            + (", trained on the synthetic GLUE-format fixtures shipped with it (not GLUE's text)" if prov.get("synthetic_data") else "")
            + ". The report checks that the pipeline runs end to end and that its arithmetic is right; it says nothing "
            "about LoRA, full fine-tuning or any real model.",
            "",
        ]
    if prov.get("model_variant"):
        lines += [f"> **Model:** `{prov['model']}`: {prov['model_variant']}.", ""]
    if not prov.get("builtin_model") and prov.get("synthetic_data"):
        lines += ["> **WARNING: synthetic data.** The tasks are the synthetic GLUE-format fixtures shipped with the "
                  "package, not GLUE: no conclusion about GLUE follows.", ""]  # fmt: skip
    return lines


def hypothesis_table(numbers: dict) -> list[str]:
    lines = ["| hypothesis | scope | verdict | evidence |", "|---|---|---|---|"]
    for key in ("H1a", "H1b", "H2"):
        hyp = numbers["hypotheses"].get(key)
        if not hyp:
            continue
        evidence = hyp.get("rule") or hyp.get("evidence", "")
        if hyp.get("no_reference"):
            evidence = hyp["no_reference"]
        lines.append(f"| {hyp['hypothesis']} | overall | {_bold(hyp['verdict'])} | {evidence} |")
        for backend, part in (hyp.get("by_backend") or {}).items():  # H2: one verdict per serving backend
            lines.append(f"| | backend {backend} | {_bold(part['verdict'])} | {part['evidence']} |")
        for method, part in (hyp.get("by_method") or {}).items():  # H1a/H1b: one verdict per (reference, method) pair
            lines.append(f"| | pair {method} | {_bold(part['verdict'])} | {part['evidence']} |")
        for scope, part in (hyp.get("by") or {}).items():
            lines.append(f"| | {scope} | {part['verdict']} | {part['evidence']} |")
    return lines


def seeds_section(numbers: dict) -> list[str]:
    settings = numbers["settings"]
    seeds = settings["n_seeds"]
    interval = fixed(settings["verdict_interval_pct"], 0)
    return [
        f"## What {seeds} seeds can and cannot show",
        "",
        f"- The unit of replication is the training seed: {seeds} per method and task. A verdict says **supported** only "
        f"when a one-sided {fixed(settings['verdict_bound_pct'], 1)}% bound over seeds clears the threshold AND "
        f"every seed lies on the claimed side of it (the {interval}% intervals in the table are those two one-sided bounds). "
        f"With {seeds} seeds that often reads **inconclusive**: the honest answer. Each such verdict says how many seeds "
        f"would give {fixed(settings['power_target_pct'], 0)}% power if the observed mean and spread were the truth.",
        "- H1a's interval adds the validation sampling error (a paired bootstrap over the validation examples, "
        f"{settings['example_bootstrap']} resamples, the same for every cell) to the seed spread: more seeds cannot shrink that "
        "part.",
        "- Gates: a cell **learned** its task when its metric beats the majority baseline (the best constant predictor) "
        f"by at least {fixed(settings['learn_margin_pct_of_headroom'], 0)}% of the headroom to a perfect score and the gain's "
        "one-sided bootstrap bound is above 0. H1b for a task with a cell that did not learn is **not assessable** (low "
        "drift of a model that did not move says nothing about preservation); H1a is not assessable when a full "
        "fine-tuning cell did not learn. Drift from the base that is not above the seed noise floor (the drift between "
        "two seeds of the same method) is **indistinguishable** from retraining noise; H1b is indistinguishable when "
        "full fine-tuning's drift is.",
        f"- An exact sign-flip (permutation) test on {seeds} paired differences cannot give p below "
        f"{fixed(settings['sign_flip_floor_two_sided'], 3)} two-sided ({fixed(settings['sign_flip_floor_one_sided'], 3)} "
        "one-sided), however large the effect: a sign-flip p at that floor means every seed agreed in sign, not weak "
        "evidence. The paired t-tests, d_z and Holm's correction across tasks are descriptive.",
        f"- The {fixed(settings['ci_level_pct'], 0)}% intervals of the drift reduction over EXAMPLES (subsets of half the examples "
        "drawn without replacement, so the debiased estimator stays unbiased) are for these trained models: they say "
        "how much the reduction would move with other examples, not with other training seeds, and no verdict rests on "
        "them.",
        "- Debiased CKA (unbiased HSIC, Song et al. 2012) is the primary measure: at n examples < d features the plain "
        "(biased) linear CKA of unrelated representations is far from 0, so 1 - CKA_linear understates drift. Both are "
        "shown.",
        "",
    ]


def _layers_note(numbers: dict) -> str:
    parts = []
    for task in numbers["tasks"]:
        result = numbers["results"][task]
        for pooling, why in (result.get("layers_excluded") or {}).items():
            parts.append(f"{task} ({pooling}): " + "; ".join(f"{label}: {reason}" for label, reason in why.items()))
    used = {", ".join(labels) for task in numbers["tasks"] for labels in numbers["results"][task]["layers_in_mean"].values()}
    out = "Entries in every mean over layers: " + " / ".join(sorted(used)) + "."
    return out + (" Left out: " + "; ".join(parts) + "." if parts else "")


def results_table(numbers: dict) -> list[str]:
    """One row per task and method: metric, learning gate, the drift of every CKA measure the summary holds (the
    primary first, with its seed noise floor), and every per-example measure of the registry (the cosines)."""
    settings = numbers["settings"]
    pooling, primary = settings["primary_pooling"], primary_measure(settings)
    other_ckas = [m for m in settings["measures"] if m != primary]
    per_example = [m for m in similarity.layer_measures() if not m.cka]
    drift_heads = [f"drift ({primary})", *(f"drift ({m})" for m in other_ckas), f"seed noise floor ({primary})"]
    lines = [
        f"Drift = 1 - CKA against the base model, mean over the hidden-state entries in the mean, then mean ± SD over "
        f"seeds ({pooling} pooling). Metric: the task's selection metric on the validation split; learned: cells that beat "
        "the majority baseline (see the gates above). A drift marked (≤ floor) is within its seed noise floor.",
        "",
        _layers_note(numbers),
        "",
        "| task | method | n examples | metric | metric mean ± SD | majority baseline | learned | accuracy mean ± SD | "
        + " | ".join([*drift_heads, *(m.label for m in per_example)]) + " |",
        "|---|---|---:|---|---|---|---|---|" + "---|" * (len(drift_heads) + len(per_example)),
    ]
    for task in numbers["tasks"]:
        result = numbers["results"][task]
        for method, entry in result["methods"].items():
            learned = [seed for seed, gate in entry["learning"].items() if gate["learned"] is True]
            mark = " (≤ floor)" if entry["within_floor"][pooling][primary] else ""
            drift = entry["drift"][pooling]
            cells = [mean_sd(drift[primary]) + mark, *(mean_sd(drift[m]) for m in other_ckas),
                     fixed(entry["noise_floor"][pooling][primary]["mean"]),
                     *(mean_sd(entry["cosine"][pooling].get(m.name, {})) for m in per_example)]  # fmt: skip
            lines.append(
                f"| {task} | {method} | {result['n_examples']} | {result['metric_name']} | {mean_sd(entry['metric'])} | "
                f"{fixed(result.get('majority_baseline'))} | {len(learned)} of {len(entry['learning'])} | "
                f"{mean_sd(entry['accuracy'])} | " + " | ".join(cells) + " |"
            )
    return lines


def layer_table(numbers: dict) -> list[str]:
    """Per-layer H1b: every hidden-state entry with its drifts, floors and the same seed-level rule."""
    settings = numbers["settings"]
    lines = [f"H1b's rule on each hidden-state entry ({settings['primary_pooling']} pooling, {primary_measure(settings)}): "
             f"drift mean over seeds, seed noise floor, mean of the per-seed reductions and its "
             f"{fixed(settings['verdict_interval_pct'], 0)}% interval over seeds. Nothing hides in the mean.", "",
             "| task | method | layer | in mean | FT drift | FT floor | method drift | method floor | reduction % | interval | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    frozen = False
    for task in numbers["tasks"]:
        for method, comparison in numbers["results"][task]["comparisons"].items():
            for label, layer in (comparison.get("layers") or {}).items():
                interval = f"[{fixed(layer['lo'], 1)}, {fixed(layer['hi'], 1)}]" if layer.get("lo") is not None else "n/a"
                mark = " (frozen by construction)" if layer.get("frozen_by_construction") else ""
                frozen = frozen or bool(mark)
                lines.append(f"| {task} | {method} | {label} | {'yes' if layer['in_mean'] else 'no'} | {fixed(layer['ft_mean'])} | "
                             f"{fixed(layer['ft_floor'])} | {fixed(method_value(layer, 'mean'))} | "
                             f"{fixed(method_value(layer, 'floor'))} | {fixed(layer['estimate_pct'], 1)} | {interval} | "
                             f"{layer['verdict']}{mark} |")  # fmt: skip
    if frozen:
        lines += ["", "(frozen by construction): a block a top-k-layers method does not train, so its output is the "
                  "base model's exactly (drift 0). Such entries stay in the means: that is the method's property."]  # fmt: skip
    return lines


def comparison_table(numbers: dict) -> list[str]:
    settings = numbers["settings"]
    primary = (settings["primary_pooling"], primary_measure(settings))
    lines = [
        f"Full fine-tuning (the reference, FT) vs each compared method: mean drift, paired by seed; reduction % = "
        f"100 (FT - method) / FT of the seed means (descriptive: the "
        f"H1b verdict uses the per-seed reductions). The CI (primary measure only) is over examples, for these trained "
        f"models: {settings['resamples']} subsets without replacement. Holm adjusts across the {len(numbers['tasks'])} tasks.",
        "",
        "| task | method | pooling | measure | FT drift | method drift | reduction % | CI over examples (these models) | t (df) | "
        "p (t) | Holm p (t) | sign-flip p (floor) | Holm p (sign-flip) | d_z |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = [primary] + [(p, m) for p in settings["poolings"] for m in settings["measures"][::-1] if (p, m) != primary]
    for task in numbers["tasks"]:
        for method, comparison in numbers["results"][task]["comparisons"].items():
            for pooling, measure in order:
                by = comparison[pooling][measure]
                ci = comparison.get("reduction_ci") if (pooling, measure) == primary else None
                ci_text = f"[{fixed(ci['lo'], 1)}, {fixed(ci['hi'], 1)}]" if ci else "n/a"
                t = by["paired_t"]
                lines.append(
                    f"| {task} | {method} | {pooling} | {measure} | {fixed(by['ft_mean'])} | {fixed(method_value(by, 'mean'))} | "
                    f"{fixed(by['reduction_pct'], 1)} | {ci_text} | {fixed(t['t'], 2)} ({t['df']}) | {p_value(t['p'])} | "
                    f"{p_value(by.get('holm_p_t'))} | {p_value(by['sign_flip_p'])} ({fixed(by['sign_flip_floor'], 3)}) | "
                    f"{p_value(by.get('holm_p_sign_flip'))} | {fixed(by['cohens_dz'], 2)} |"
                )
    return lines


def pairs_table(numbers: dict) -> list[str]:
    """One row per (reference, compared method) pair and task: the H1a and H1b verdicts of `hypotheses` (the same
    rule for every pair), the gap and the mean reduction, then the pair's overall verdicts."""
    settings = numbers["settings"]
    if settings.get("no_reference"):
        return [f"No verdicts per method pair: {settings['no_reference']}."]
    if "pairs" not in numbers:
        return ["No table per pair: the drift summary predates it (the hypothesis table above has the verdicts)."]
    pairs = numbers["pairs"]
    if not pairs:
        return ["No method is compared with the reference."]
    lines = [f"Every method against the reference `{settings.get('reference_method') or settings.get('full_method')}` "
             "(the study's first full fine-tuning method), by the H1a and H1b rules above: gap = reference - method (pp, "
             "task metric), reduction = mean over seeds of the per-seed drift reductions (%).", "",
             "| method | kind | task | gap (pp) | H1a | reduction % | H1b |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for method, pair in pairs.items():
        for task, verdicts in pair["tasks"].items():
            lines.append(f"| {method} | {pair['kind']} | {task} | {fixed(verdicts['gap_pp'], 2)} | {verdicts['H1a']} | "
                         f"{fixed(verdicts['reduction_pct'], 1)} | {verdicts['H1b']} |")  # fmt: skip
        lines.append(f"| {method} | {pair['kind']} | all tasks | | {_bold(pair['H1a'])} | | {_bold(pair['H1b'])} |")
    return lines


COST_COLUMNS = (("trainable_params", "trainable params", 0), ("trainable_pct", "% of model", 3),
                ("trainable_mib", "trainable MiB", 3), ("artifact_mib", "artifact on disk MiB", 3),
                ("tokens_per_second", "train tokens/s", 1), ("peak_memory_mib", "peak memory MiB", 1),
                ("train_seconds", "train s", 1))  # fmt: skip


def _cost_cell(stats: dict, decimals: int) -> str:
    if stats.get("mean") is None:
        return "n/a"
    if stats["min"] is not None and abs(stats["max"] - stats["min"]) > 1e-9 * max(1.0, abs(stats["mean"])):
        return f"{fixed(stats['mean'], decimals)} ({fixed(stats['min'], decimals)}..{fixed(stats['max'], decimals)})"
    return fixed(stats["mean"], decimals)


def costs_table(numbers: dict) -> list[str]:
    """Per method (mean over seeds and tasks; min..max when the cells differ), then per task for the fields that
    differ between tasks. n/a: the cells' metrics.json predate the field."""
    costs = (numbers.get("costs") or {}).get("methods") or {}
    if not costs:
        return ["No cost fields (the drift summary predates them)."]
    head = "| method | kind | cells | " + " | ".join(title for _, title, _ in COST_COLUMNS) + " | memory measured as |"
    lines = ["From each cell's metrics.json: trainable parameters, trainable bytes (trainable params x dtype size), the "
             "saved adapter/ or model/ folder on disk, training tokens per second, peak memory and training time. Mean "
             "over seeds and tasks, (min..max) when the cells differ; n/a: the cells' metrics.json lack the field.", "",
             head, "|---|---|---:|" + "---:|" * len(COST_COLUMNS) + "---|"]  # fmt: skip
    for method, cost in costs.items():
        cells = " | ".join(_cost_cell(cost["all"][key], decimals) for key, _, decimals in COST_COLUMNS)
        lines.append(f"| {method} | {cost['kind']} | {cost['cells']} | {cells} | {', '.join(cost['peak_memory_kind']) or 'n/a'} |")
    varying = [(method, cost) for method, cost in costs.items() if cost["varies_by_task"] and len(cost["by_task"]) > 1]
    if varying:
        lines += ["", "Per task (mean over seeds):", "",
                  "| method | task | " + " | ".join(title for _, title, _ in COST_COLUMNS) + " |",
                  "|---|---|" + "---:|" * len(COST_COLUMNS)]  # fmt: skip
        for method, cost in varying:
            for task, stats in cost["by_task"].items():
                cells = " | ".join(_cost_cell(stats[key], decimals) for key, _, decimals in COST_COLUMNS)
                lines.append(f"| {method} | {task} | {cells} |")
    return lines


def pareto_lines(numbers: dict) -> list[str]:
    """The Pareto front's members per task and axis (analysis.pareto), with each member's metric and x."""
    pareto = numbers.get("pareto")
    if not pareto:
        return ["No Pareto section (the report numbers predate it)."]
    lines = ["A method is on the front when no other method has a higher-or-equal task metric AND a lower-or-equal "
             "drift (or forgetting), one of them strictly; equal points are both on it. Mean over seeds."]  # fmt: skip
    if pareto.get("sweeps"):
        lines += ["", "Sweeps (joined in the figure in size order): " + "; ".join(
            f"{sweep['label']}: {', '.join(sweep['methods'])}" for sweep in pareto["sweeps"]) + "."]  # fmt: skip
    lines += ["", "| axis | task | front (lowest x first) | metric | x |", "|---|---|---|---|---|"]
    for axis in ("drift", "forgetting"):
        for task, part in (pareto.get(axis) or {}).items():
            front, points = part["front"], part["points"]
            lines.append(f"| {axis} | {task} | {', '.join(front) or 'none'} | "
                         f"{', '.join(fixed(points[m]['metric']) for m in front) or 'n/a'} | "
                         f"{', '.join(fixed(points[m]['x']) for m in front) or 'n/a'} |")  # fmt: skip
    if not pareto.get("forgetting"):
        lines += ["", "No forgetting values in the drift summary (forgetting is measured for decoder models only), so "
                  "no forgetting front."]  # fmt: skip
    return lines


def published_table(numbers: dict) -> list[str]:
    """The study's published reference numbers next to ours, the same metric on both sides (percent)."""
    published = numbers.get("published")
    if not published:
        return []
    lines = [f"Published numbers: {published['source']}. Each is compared with our mean ± SD over seeds of the same metric "
             "(the published metric column); our selection metric is named where it differs. In percent.", "",
             "| task | method | published metric | our selection metric | published | ours (same metric) | ours - published (pp) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task, by_task in published["tasks"].items():
        for method, ref in by_task["methods"].items():
            ours = "n/a" if ref["ours_pct"] is None else f"{fixed(ref['ours_pct'], 1)} ± {fixed(ref['ours_sd_pct'], 1)}"
            lines.append(f"| {task} | {method} | {by_task['metric']} | {by_task['selection_metric']} | "
                         f"{fixed(ref['value_pct'], 1)} | {ours} | {fixed(ref['diff_pp'], 1)} |")  # fmt: skip
    return lines + [""]


def forgetting_table(numbers: dict) -> list[str]:
    """Forgetting per task and method (the drift summary's `forgetting` section, analysis/forgetting.py, when the
    model is a decoder), next to the method's primary drift, and the drift-forgetting correlation over cells: is
    drift a proxy for forgetting?"""
    forgetting = numbers.get("forgetting")
    if not forgetting:
        return ["No forgetting values: forgetting is measured for decoder models only (it needs the base model's causal "
                "LM head), or the drift summary predates it."]  # fmt: skip
    settings = numbers["settings"]
    pooling, measure = settings["primary_pooling"], primary_measure(settings)
    lines = ["Forgetting = the base model's language-model loss on held-out text through the fine-tuned backbone minus "
             f"the base model's own ({forgetting.get('unit') or 'nats per token'}; 0 = nothing forgotten), mean over seeds "
             f"with its {forgetting.get('interval') or 'interval over seeds'}, next to the primary drift.", "",
             f"| task | method | forgetting | interval | base loss | drift ({measure}) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for task in numbers["tasks"]:
        for method, value in (forgetting.get(task) or {}).items():
            entry = numbers["results"][task]["methods"].get(method)
            drift = mean_sd(entry["drift"][pooling][measure]) if entry else "n/a"
            interval = f"[{fixed(value.get('lo'))}, {fixed(value.get('hi'))}]" if value.get("lo") is not None else "n/a"
            lines.append(f"| {task} | {method} | {fixed(value.get('mean'))} | {interval} | {fixed(value.get('base_loss'))} | "
                         f"{drift} |")  # fmt: skip
    correlation = forgetting.get("drift_correlation") or {}
    items = []
    scopes = [("all cells", correlation.get("all")), *(correlation.get("by_task") or {}).items()]
    for scope, corr in scopes:
        if not corr:
            continue
        what = (f"Spearman rho {fixed(corr['spearman_rho'], 3)}, Pearson r {fixed(corr.get('pearson_r'), 3)} over "
                f"{corr['n']} cells" if corr.get("spearman_rho") is not None
                else f"no correlation ({corr.get('why_none', 'n/a')})")  # fmt: skip
        items.append(f"- drift vs forgetting, {scope}: {what}")
    note = (correlation.get("all") or {}).get("note")
    return lines + ([""] + items if items else []) + (["", note] if note and items else [])


def weights_table(numbers: dict) -> list[str]:
    settings = numbers["settings"]
    if not numbers["weights"]:
        return ["No weight-space rows (no adapted modules found)."]
    extra = ("Full fine-tuning cells: the LoRA target modules (compared like with like in the method's row) and, in "
             "the \"(other linears)\" row, every other decoder linear."
             if settings.get("weights_full_extra_linears") else
             "Full fine-tuning cells: the LoRA target modules only (the other linears were too large to decompose here).")  # fmt: skip
    lines = [
        f"Per adapted module, the update delta W (full: W_ft - W0; LoRA: scale B A). Intruder dimensions: top "
        f"{settings['intruder_k']} left singular vectors of W_ft whose largest |cosine| with W0's is below "
        f"{fixed(settings['intruder_eps'], 1)}. " + extra,
        "",
        "| task | method | modules | module types | stable rank | effective rank | r90 | intruders per module | "
        "modules with intruders % | relative update norm |",
        "|---|---|---:|---|---|---|---|---|---|---|",
    ]
    for task in numbers["tasks"]:
        for method, weights in (numbers["weights"].get(task) or {}).items():
            lines.append(
                f"| {task} | {method} | {weights['modules']} | {', '.join(weights['module_types'])} | "
                f"{mean_sd(weights['stable_rank'], 2)} | {mean_sd(weights['effective_rank'], 2)} | {mean_sd(weights['r90'], 2)} | "
                f"{mean_sd(weights['n_intruders'], 2)} | {fixed(weights['modules_with_intruders_pct'], 1)} | "
                f"{mean_sd(weights['delta_rel'])} |"
            )
    return lines


def bench_tables(numbers: dict) -> list[str]:
    if not numbers.get("bench"):
        return ["No bench bundle was committed when this report was written: latency and H2 are not measured."]
    benches = numbers["bench"]
    backends = list(benches)
    lines = []
    for backend, bench in benches.items():
        skipped = f"; not possible on this platform: {', '.join(bench['regimes_skipped'])}" if bench.get("regimes_skipped") else ""
        lines.append(f"- `{backend}`: {stack_name(backend, bench.get('platform'))} on {device_words(bench)}, "
                     f"{bench.get('dtype')}, execution regimes {', '.join(bench.get('regimes') or ['eager'])}{skipped}; "
                     f"H2 for this backend: {_bold(bench.get('h2_verdict') or 'not measured')}")  # fmt: skip
        for key, by_batch_size in (bench.get("regime_vs_eager") or {}).items():  # the same mode in two regimes, not H2
            mode, name = key.rsplit(" ", 1)
            parts = [f"batch {size} {overhead['pct']:+.1f}% [{fixed(overhead['lo'], 1)}, {fixed(overhead['hi'], 1)}]"
                     for size, overhead in sorted(by_batch_size.items(), key=lambda kv: int(kv[0]))]  # fmt: skip
            lines.append(f"  - `{backend}` {mode}, {name.replace('_', ' ')} (latency; negative = faster): " + ", ".join(parts))
    lines += ["", "Mean batch latency (ms) per backend, side by side on the same requests, with the "
              f"{fixed(benches[backends[0]]['confidence_pct'], 0)}% CI over repeat means on the log scale (never below 0). "
              "Each row is one execution regime: overheads and H2 only compare modes of one backend in one regime.", "",
              "| regime | mode | order | batch | " + " | ".join(f"{b} ms [CI] | {b} req/s" for b in backends) + " |",
              "|---|---|---|---:|" + "---|---:|" * len(backends)]  # fmt: skip
    rows: dict[tuple, dict[str, dict]] = {}
    for backend, bench in benches.items():
        for config in bench["configs"]:
            key = (config.get("regime") or "eager", config["mode"], config["order"], config["batch_size"])
            rows.setdefault(key, {})[backend] = config
    for (regime, mode, order, batch_size), by_backend in rows.items():
        cells = []
        for backend in backends:
            config = by_backend.get(backend)
            if config is None:
                cells.append("n/a | n/a")
                continue
            ci = f" [{fixed(config['low'], 3)}, {fixed(config['high'], 3)}]" if config.get("low") is not None else ""
            cells.append(f"{fixed(config['mean_batch_ms'], 3)}{ci} | {fixed(config.get('throughput_rps'), 1)}")
        lines.append(f"| {regime} | {mode} | {order} | {batch_size} | " + " | ".join(cells) + " |")
    lines += ["", "Correctness per backend (class probabilities; vllm_vs_hf: vLLM's answer against HF transformers + PEFT "
              "for the same request):", "", "| backend | check | requests | argmax mismatches | max prob diff | ok |",
              "|---|---|---:|---:|---:|---|"]  # fmt: skip
    for backend, bench in benches.items():
        for check in bench.get("correctness") or []:
            lines.append(f"| {backend} | {check['check']} | {check['requests']} | {check['argmax_mismatches']} | "
                         f"{check['max_prob_diff']:.2e} | {check['ok']} |")  # fmt: skip
    lines.append("")
    return lines


def provenance(numbers: dict) -> list[str]:
    prov = numbers["provenance"]
    extract, drift = prov["extract"], prov["drift"]
    report = numbers.get("report") or {}
    hardware = drift["hardware"]
    timings = numbers["timings"]
    lines = [
        f"- run `{prov['run_id']}`, study `{prov['study']}` (hash `{prov['study_hash']}`)",
        f"- model `{prov['model']}` revision `{prov['model_revision']}` (resolved `{prov.get('model_commit') or 'n/a'}`); "
        f"dataset fingerprint `{prov.get('dataset_fingerprint')}`",
        f"- code: extract `{', '.join(extract['code_versions'])}`, drift `{prov['code_version']}`, report "
        f"`{report.get('code_version')}`",
        f"- extract hardware: devices `{', '.join(extract['devices'])}`, GPU `{', '.join(extract['gpu_names']) or 'none'}`, "
        f"CPU `{', '.join(extract['cpu_models'])}` ({', '.join(map(str, extract['cpu_cores_usable']))} usable cores); "
        f"{extract['bundles']} bundles, forward passes `{extract['forward_seconds_total']:.1f}` s in total",
        f"- drift hardware: CPU `{hardware.get('cpu_model')}`, `{hardware.get('cpu_cores_usable')}` usable cores, GPU none "
        f"(CPU phase); drift took `{timings['total_seconds']:.1f}` s (representations "
        f"`{timings['representations_seconds']:.1f}`, weights `{timings['weights_seconds']:.1f}`)",
        "- packages (extract): " + ", ".join(f"`{k} {v}`" for k, v in (extract.get("versions") or {}).items()),
        "- packages (drift): " + ", ".join(f"`{k} {v}`" for k, v in drift["versions"].items()),
        "- packages (report): " + ", ".join(f"`{k} {v}`" for k, v in (report.get("versions") or {}).items()),
        f"- H2 source: `{report.get('h2_source')}`; report written `{report.get('generated_at')}` on `{report.get('host')}`",
    ]
    return lines


def training_curves_note(numbers: dict) -> list[str]:
    """Which cells' training histories the curve figures draw, and which cells have none (and why)."""
    curves = (numbers.get("report") or {}).get("training_curves")
    if curves is None:
        return ["Training curves were not collected for this report."]
    if not curves["cells_with_history"]:
        return [f"**Training curves missing**: none of the {curves['cells']} cells has a history.json (cells committed "
                "before lorascope kept the Trainer's log history; retraining a cell records it)."]  # fmt: skip
    lines = [f"Loss and dev metric against the optimizer step, from the history.json of {curves['cells_with_history']} of "
             f"{curves['cells']} cells (figures below, one per task; seeds overlaid)."]  # fmt: skip
    if curves["missing"]:
        lines += ["", "No curves for: " + "; ".join(f"`{cell}` ({why})" for cell, why in curves["missing"].items()) + "."]
    return lines


def render(numbers: dict, figures: list[tuple[str, str]]) -> str:
    """The whole report. `figures`: (caption, relative path of the PNG) in display order."""
    prov = numbers["provenance"]
    out = [f"# Analysis report: study `{prov['study']}`, run `{prov['run_id']}`", ""]
    out += banner(numbers)
    out += ["## Hypotheses", ""] + hypothesis_table(numbers) + [""]
    out += seeds_section(numbers)
    out += ["## Task metric and drift per method", ""] + results_table(numbers) + [""] + published_table(numbers)
    out += ["## Accuracy vs drift: Pareto front", ""] + pareto_lines(numbers) + [""]
    out += ["## Forgetting", ""] + forgetting_table(numbers) + [""]
    out += ["## Verdicts per method pair", ""] + pairs_table(numbers) + [""]
    out += ["## Cost per method", ""] + costs_table(numbers) + [""]
    out += ["## Drift reduction: each method vs full fine-tuning", ""] + comparison_table(numbers) + [""]
    out += ["## Drift reduction per layer", ""] + layer_table(numbers) + [""]
    out += ["## Weight space", ""] + weights_table(numbers) + [""]
    out += ["## Serving latency", ""] + bench_tables(numbers) + [""]
    if numbers.get("generation_bench"):
        from lorascope.reporting import generation_bench

        out += ["## Generation serving", ""] + generation_bench.report_lines(numbers["generation_bench"]) + [""]
    out += ["## Training curves", ""] + training_curves_note(numbers) + [""]
    out += ["## Figures", ""]
    for title, path in figures:
        out += [f"### {title}", "", f"![{title}]({path})", ""]
    out += ["## Provenance", ""] + provenance(numbers) + [""]
    return "\n".join(out)
