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
    "layer_drift": "Layer-wise drift per task (every method, band = min..max over seeds, dashed = seed-to-seed drift)",
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


def overall_scope(hyp: dict) -> str:
    """What the headline verdict of a hypothesis is about: the reference pair for H1a / H1b (summaries of format 4),
    else "overall" (H2, and older summaries, whose overall verdict combined every pair)."""
    pair = hyp.get("reference_pair")
    return f"reference pair {pair['reference']} vs {pair['method']}" if pair else "overall"


def hypothesis_table(numbers: dict) -> list[str]:
    lines = ["| hypothesis | scope | verdict | evidence |", "|---|---|---|---|"]
    for key in ("H1a", "H1b", "H2"):
        hyp = numbers["hypotheses"].get(key)
        if not hyp:
            continue
        evidence = hyp.get("rule") or hyp.get("evidence", "")
        if hyp.get("no_reference"):
            evidence = hyp["no_reference"]
        lines.append(f"| {hyp['hypothesis']} | {overall_scope(hyp)} | {_bold(hyp['verdict'])} | {evidence} |")
        for backend, part in (hyp.get("by_backend") or {}).items():  # H2: one verdict per serving backend
            lines.append(f"| | backend {backend} | {_bold(part['verdict'])} | {part['evidence']} |")
        for method, part in (hyp.get("by_method") or {}).items():  # H1a/H1b: one verdict per (reference, method) pair
            lines.append(f"| | pair {method} | {_bold(part['verdict'])} | {part['evidence']} |")
        for scope, part in (hyp.get("by") or {}).items():
            lines.append(f"| | {scope} | {part['verdict']} | {part['evidence']} |")
    return lines


def counts_table(numbers: dict) -> list[str]:
    """The overall line of H1a and H1b: how many (reference, method) pairs got each verdict (a pair's verdict combines
    its tasks), next to the reference pair's verdict; no single word for a family of methods. Empty for summaries
    that predate it."""
    hyps = [(key, numbers["hypotheses"].get(key) or {}) for key in ("H1a", "H1b")]
    hyps = [(key, hyp) for key, hyp in hyps if hyp.get("counts")]
    if not hyps:
        return []
    categories = list(hyps[0][1]["counts"])
    lines = ["Pairs per verdict (each (reference, method) pair counted once, its verdict combined over its tasks); the "
             "verdict in the table above is the study's reference pair's (the first LoRA method against the first full "
             "method). No verdict is given for a whole family of methods.", "",
             "| hypothesis | reference pair | its verdict | " + " | ".join(categories) + " |",
             "|---|---|---|" + "---:|" * len(categories)]  # fmt: skip
    for key, hyp in hyps:
        pair = hyp.get("reference_pair") or {}
        who = f"{pair['reference']} vs {pair['method']}" if pair else "none"
        lines.append(f"| {key} | {who} | {_bold(hyp['verdict'])} | " + " | ".join(str(hyp["counts"][c]) for c in categories) + " |")
    return lines + [""]


def _few_seeds(settings: dict) -> list[str]:
    """The exploratory line: a study with fewer seeds than a verdict needs (summaries of format 4)."""
    need = settings.get("min_seeds_for_verdict")
    if need is None or not settings.get("exploratory"):
        return []
    seeds = settings["n_seeds"]
    return [f"- **Exploratory: {seeds} seeds.** H1a and H1b need at least {need} seeds per method for a verdict: with "
            f"fewer, the one-sided bound uses very few degrees of freedom and rewards the seeds agreeing rather than the "
            f"size of the effect. Every H1a and H1b entry reads \"exploratory\" with its numbers and intervals; none is "
            "a verdict. The seed-to-seed drift rests on the seed pairs it names."]  # fmt: skip


def _gate_line(settings: dict) -> str:
    if settings.get("min_seeds_for_verdict") is None:  # summaries before format 4: the noise-floor gate
        return ("Drift from the base that is not above the seed noise floor (the drift between two seeds of the same "
                "method) is **indistinguishable** from retraining noise; H1b is indistinguishable when full "
                "fine-tuning's drift is.")  # fmt: skip
    return ("The H1b gate asks whether the reference moved at all: its drift from the base against 0, with the seed "
            "spread and the example spread (the one-sided lower bound must be above 0); when it did not, H1b is "
            "**indistinguishable** (there is no drift to reduce). The seed-to-seed drift (between two seeds of one "
            "method) is shown beside it as how consistent the change is across seeds, not as a bar to clear: a change "
            "made of seed-specific directions differs between seeds by about twice its drift from the base however "
            "large it is.")  # fmt: skip


def seeds_section(numbers: dict) -> list[str]:
    settings = numbers["settings"]
    seeds = settings["n_seeds"]
    interval = fixed(settings["verdict_interval_pct"], 0)
    return [
        f"## What {seeds} seeds can and cannot show",
        "",
        *_few_seeds(settings),
        f"- The unit of replication is the training seed: {seeds} per method and task. A verdict says **supported** only "
        f"when a one-sided {fixed(settings['verdict_bound_pct'], 1)}% bound over seeds clears the threshold AND "
        f"every seed lies on the claimed side of it (the {interval}% intervals in the table are those two one-sided bounds). "
        + (f"With {seeds} seeds that often reads **inconclusive**: the honest answer. Each such verdict says how many seeds "
           f"would give {fixed(settings['power_target_pct'], 0)}% power if the observed mean and spread were the truth."
           if not settings.get("exploratory") else f"With {seeds} seeds the rule is not applied (above)."),
        "- H1a's interval adds the validation sampling error (a paired bootstrap over the validation examples, "
        f"{settings['example_bootstrap']} resamples, the same for every cell) to the seed spread: more seeds cannot shrink that "
        "part.",
        "- Gates: a cell **learned** its task when its metric beats the majority baseline (the best constant predictor) "
        f"by at least {fixed(settings['learn_margin_pct_of_headroom'], 0)}% of the headroom to a perfect score and the gain's "
        "one-sided bootstrap bound is above 0. H1b for a task with a cell that did not learn is **not assessable** (low "
        "drift of a model that did not move says nothing about preservation); H1a is not assessable when a full "
        "fine-tuning cell did not learn. " + _gate_line(settings),
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
    if numbers["settings"].get("min_seeds_for_verdict") is None:  # summaries before format 4
        out = "Entries in every mean over layers: " + " / ".join(sorted(used)) + "."
        return out + (" Left out: " + "; ".join(parts) + "." if parts else "")
    out = ("Entries every method can change (the means of this table and of the Pareto front; each pair's comparison "
           "below averages the entries both of its methods can change): " + " / ".join(sorted(used)) + ".")
    if parts:
        out += (" Left out (a method cannot change them by construction: drift exactly 0 whatever it learned, shown per "
                "layer below; or CKA undefined): " + "; ".join(parts) + ".")  # fmt: skip
    return out + (" The whole-model drift is the mean over every entry where CKA is defined, those entries included "
                  "(labelled as such: \"frozen blocks do not move\" is a true property, not a comparison).")  # fmt: skip


METRIC_WORDS = ("Metric: the task's selection metric on the validation split, in its units; learned: cells that beat the "
                "trivial baseline of the task's type (majority class for accuracy and F1, 0 for a correlation; see the gates "
                "above); every other metric of each task is in the task metrics table.")


def results_table(numbers: dict) -> list[str]:
    """One row per task and method: metric, learning gate, the drift of every CKA measure the summary holds (the
    primary first, with its seed noise floor), and every per-example measure of the registry (the cosines)."""
    settings = numbers["settings"]
    pooling, primary = settings["primary_pooling"], primary_measure(settings)
    other_ckas = [m for m in settings["measures"] if m != primary]
    per_example = [m for m in similarity.layer_measures() if not m.cka]
    new = settings.get("min_seeds_for_verdict") is not None  # format 4: whole-model drift, moved, seed-to-seed drift
    drift_heads = [f"drift ({primary})", *(f"drift ({m})" for m in other_ckas)]
    if new:
        drift_heads += [f"whole-model drift ({primary})", f"moved ({primary})", f"seed-to-seed drift ({primary}, consistency)"]
    else:
        drift_heads += [f"seed noise floor ({primary})"]
    intro = (f"Drift = 1 - CKA against the base model, mean over the entries every method can change, then mean ± SD over "
             f"seeds ({pooling} pooling); the whole-model drift averages every entry. Moved: the drift's one-sided "
             f"{fixed(settings.get('verdict_bound_pct'), 1)}% lower bound over seeds and examples is above 0. Seed-to-seed "
             "drift: between two seeds of the method, mean over its seed pairs (how many in brackets): how consistent its "
             "change is, not how large. " + METRIC_WORDS if new else
             f"Drift = 1 - CKA against the base model, mean over the hidden-state entries in the mean, then mean ± SD over "
             f"seeds ({pooling} pooling). " + METRIC_WORDS + " A drift marked (≤ floor) is within its seed noise floor.")  # fmt: skip
    lines = [
        intro,
        "",
        _layers_note(numbers),
        "",
        "| task | method | n examples | metric (units) | metric mean ± SD | trivial baseline | learned | accuracy mean ± SD | "
        + " | ".join([*drift_heads, *(m.label for m in per_example)]) + " |",
        "|---|---|---:|---|---|---|---|---|" + "---|" * (len(drift_heads) + len(per_example)),
    ]
    for task in numbers["tasks"]:
        result = numbers["results"][task]
        for method, entry in result["methods"].items():
            learned = [seed for seed, gate in entry["learning"].items() if gate["learned"] is True]
            drift = entry["drift"][pooling]
            floor = entry["noise_floor"][pooling][primary]
            if new:
                gate = (entry.get("moved") or {}).get(pooling) or {}
                whole = (entry.get("drift_whole_model") or {}).get(pooling) or {}
                extra = [mean_sd(whole.get(primary, {})), {True: "yes", False: "no"}.get(gate.get("moved"), "n/a"),
                         f"{fixed(floor['mean'])} ({floor.get('n')} pair{'s' if floor.get('n') != 1 else ''})"]  # fmt: skip
                mark = ""
            else:
                extra = [fixed(floor["mean"])]
                mark = " (≤ floor)" if (entry.get("within_floor") or {}).get(pooling, {}).get(primary) else ""
            cells = [mean_sd(drift[primary]) + mark, *(mean_sd(drift[m]) for m in other_ckas), *extra,
                     *(mean_sd(entry["cosine"][pooling].get(m.name, {})) for m in per_example)]  # fmt: skip
            lines.append(
                f"| {task} | {method} | {result['n_examples']} | {_metric_name(numbers, task)} | {mean_sd(entry['metric'])} | "
                f"{fixed(result.get('majority_baseline'))} | {len(learned)} of {len(entry['learning'])} | "
                f"{mean_sd(entry['accuracy']) if entry.get('accuracy') else 'n/a (no classes)'} | " + " | ".join(cells) + " |"
            )
    return lines


def _metric_name(numbers: dict, task: str) -> str:
    """The task's primary metric with its units ("pearson (Pearson correlation points)"), from the summary's task facts."""
    facts = numbers["settings"].get("tasks", {}).get(task, {})
    name = numbers["results"][task]["metric_name"]
    return f"{name} ({facts['units']})" if facts.get("units") else name


def task_metrics_table(numbers: dict) -> list[str]:
    """Per task its type, primary metric and units (H1a's margin is in them), what its trivial predictor scores, and
    per method every metric the task reports on its reported split and on its further validation splits (mnli:
    matched is reported, mismatched beside it), mean ± SD over seeds. Empty for a summary without task facts."""
    facts = numbers["settings"].get("tasks")
    if not facts:
        return []
    lines = ["Each task in its own metrics: the primary metric decides HPO, model selection, the learning gate and H1a "
             "(its margin is in points of that metric: pp for accuracy and F1, correlation points for a correlation); "
             "the trivial predictor is what a cell must beat to count as having learned.", "",
             "| task | type | primary metric (units) | trivial predictor | method | metrics on validation, mean ± SD | "
             "further validation splits |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task in numbers["tasks"]:
        f, result = facts.get(task, {}), numbers["results"][task]
        for method, entry in result["methods"].items():
            own = {result["metric_name"]: entry["metric"], **({"accuracy": entry["accuracy"]} if entry.get("accuracy") else {}),
                   **(entry.get("other_metrics") or {})}  # fmt: skip
            splits = "; ".join(f"{s.removeprefix('validation_')} {k} {mean_sd(v)}"
                               for s, by in (entry.get("other_splits") or {}).items() for k, v in by.items())  # fmt: skip
            lines.append(f"| {task} | {f.get('type', 'n/a')} | {result['metric_name']} ({f.get('units', 'n/a')}) | "
                         f"{f.get('trivial', 'n/a')} | {method} | {'; '.join(f'{k} {mean_sd(v)}' for k, v in own.items())} | "
                         f"{splits or 'none'} |")  # fmt: skip
    return lines + [""]


def layer_table(numbers: dict) -> list[str]:
    """Per-layer H1b: every hidden-state entry with its drifts, floors and the same seed-level rule."""
    settings = numbers["settings"]
    lines = [f"H1b's rule on each hidden-state entry ({settings['primary_pooling']} pooling, {primary_measure(settings)}): "
             f"drift mean over seeds, seed-to-seed drift (floor), mean of the per-seed reductions and its "
             f"{fixed(settings['verdict_interval_pct'], 0)}% interval over seeds. Nothing hides in the mean: an entry one "
             "method of the pair cannot change is not compared, its drift shown with the reason.", "",
             "| task | method | layer | in mean | FT drift | FT floor | method drift | method floor | reduction % | interval | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    frozen = False
    for task in numbers["tasks"]:
        for method, comparison in numbers["results"][task]["comparisons"].items():
            for label, layer in (comparison.get("layers") or {}).items():
                interval = f"[{fixed(layer['lo'], 1)}, {fixed(layer['hi'], 1)}]" if layer.get("lo") is not None else "n/a"
                why = layer.get("not_compared_why")
                mark = f" ({why})" if why else " (frozen by construction)" if layer.get("frozen_by_construction") else ""
                frozen = frozen or bool(layer.get("frozen_by_construction"))
                lines.append(f"| {task} | {method} | {label} | {'yes' if layer['in_mean'] else 'no'} | {fixed(layer['ft_mean'])} | "
                             f"{fixed(layer['ft_floor'])} | {fixed(method_value(layer, 'mean'))} | "
                             f"{fixed(method_value(layer, 'floor'))} | {fixed(layer['estimate_pct'], 1)} | {interval} | "
                             f"{layer['verdict']}{mark} |")  # fmt: skip
    if frozen and settings.get("min_seeds_for_verdict") is None:  # summaries before format 4 kept them in the means
        lines += ["", "(frozen by construction): a block a top-k-layers method does not train, so its output is the "
                  "base model's exactly (drift 0). Such entries stay in the means: that is the method's property."]  # fmt: skip
    elif frozen:
        lines += ["", "Frozen by construction: a block a top-k-layers method does not train, so its output is the base "
                  "model's exactly (drift 0). Such an entry is left out of that method's comparisons (a mean with it "
                  "would reduce drift by zeros whatever the method did) and is counted in its whole-model drift."]  # fmt: skip
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
    entries = [f"{task}/{method}: {', '.join(comparison['layers_in_mean'][primary[0]])}"
               for task in numbers["tasks"] for method, comparison in numbers["results"][task]["comparisons"].items()
               if comparison.get("layers_in_mean")]  # fmt: skip
    if entries:
        lines[0] += (" Each pair's means cover only the entries both of its methods can change (" + "; ".join(entries)
                     + f", {primary[0]} pooling).")  # fmt: skip
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
    whole = [(task, method, comparison["whole_model"]) for task in numbers["tasks"]
             for method, comparison in numbers["results"][task]["comparisons"].items() if comparison.get("whole_model")]  # fmt: skip
    if whole:
        lines += ["", f"Whole-model means (every entry where CKA is defined, the entries a method cannot change included; "
                  f"{primary[0]} pooling, {primary[1]}): what the models are, not a like-for-like comparison.", "",
                  "| task | method | FT whole-model drift | method whole-model drift | reduction % (whole model) |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for task, method, by in whole:
            lines.append(f"| {task} | {method} | {fixed(by['ft_mean'])} | {fixed(method_value(by, 'mean'))} | "
                         f"{fixed(by['reduction_pct'], 1)} |")  # fmt: skip
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
             "(the study's first full fine-tuning method), by the H1a and H1b rules above: gap = reference - method (in "
             "points of the task metric: pp for accuracy and F1, correlation points for a correlation), reduction = mean over seeds of the per-seed drift reductions (%).", "",
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
    """The Pareto front's members per task and axis (analysis.pareto), with each member's metric and x, the learned
    methods tied with a member (seed ranges overlap) and the methods that did not learn (never on the front)."""
    pareto = numbers.get("pareto")
    if not pareto:
        return ["No Pareto section (the report numbers predate it)."]
    rule = pareto.get("rule")
    lines = [f"Rule: {rule}. Mean over seeds; x is the drift over the entries every method can change, or forgetting."
             if rule else
             "A method is on the front when no other method has a higher-or-equal task metric AND a lower-or-equal "
             "drift (or forgetting), one of them strictly; equal points are both on it. Mean over seeds."]  # fmt: skip
    if pareto.get("sweeps"):
        lines += ["", "Sweeps (joined in the figure in size order): " + "; ".join(
            f"{sweep['label']}: {', '.join(sweep['methods'])}" for sweep in pareto["sweeps"]) + "."]  # fmt: skip
    lines += ["", "| axis | task | front (lowest x first) | metric | x | tied with a front member (seed ranges overlap) | "
              "did not learn (never on the front) |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for axis in ("drift", "forgetting"):
        for task, part in (pareto.get(axis) or {}).items():
            front, points = part["front"], part["points"]
            tied = "; ".join(f"{m} ~ {', '.join(with_)}" for m, with_ in (part.get("tied") or {}).items()) or "none"
            lines.append(f"| {axis} | {task} | {', '.join(front) or 'none'} | "
                         f"{', '.join(fixed(points[m]['metric']) for m in front) or 'n/a'} | "
                         f"{', '.join(fixed(points[m]['x']) for m in front) or 'n/a'} | {tied} | "
                         f"{', '.join(part.get('not_learned') or []) or 'none'} |")  # fmt: skip
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


WEIGHT_HEAD = ("| task | method | modules | module types | stable rank | effective rank | r90 | intruders per module | "
               "modules with intruders % | relative update norm |")


def _weight_rows(by_task: dict, tasks: list[str]) -> list[str]:
    lines = [WEIGHT_HEAD, "|---|---|---:|---|---|---|---|---|---|---|"]
    for task in tasks:
        for method, weights in (by_task.get(task) or {}).items():
            lines.append(
                f"| {task} | {method} | {weights['modules']} | {', '.join(weights['module_types'])} | "
                f"{mean_sd(weights['stable_rank'], 2)} | {mean_sd(weights['effective_rank'], 2)} | {mean_sd(weights['r90'], 2)} | "
                f"{mean_sd(weights['n_intruders'], 2)} | {fixed(weights['modules_with_intruders_pct'], 1)} | "
                f"{mean_sd(weights['delta_rel'])} |"
            )
    return lines


def weights_table(numbers: dict) -> list[str]:
    """Like for like: every method over the same modules (the intersection of what the methods with weight rows
    change), then each method over everything it changes (the union, labelled: not comparable), a note per method
    whose update is a dense rescaling, and why some methods have no rows."""
    settings = numbers["settings"]
    if "weights_union" not in numbers:
        return _weights_table_before_format_4(numbers)
    if not numbers["weights_union"]:
        return ["No weight-space rows (no adapted modules found)."]
    tasks = numbers["tasks"]
    intro = (f"Per adapted module, the update delta W (full fine-tuning and top-k layers: W_ft - W0; LoRA: scale B A; "
             f"DoRA and IA3: the effective weight minus W0). Intruder dimensions: top {settings['intruder_k']} left "
             f"singular vectors of W_ft whose largest |cosine| with W0's is below {fixed(settings['intruder_eps'], 1)}. "
             "Full fine-tuning cells are analysed on the modules the study's LoRA methods adapt (else its IA3 methods') "
             "and on every other decoder linear when those total at most "
             f"{settings['weights_extra_linears_max_elements']:.1e} elements over all full cells.")  # fmt: skip
    reference = settings.get("reference_method")
    covered = [f"{t}: {', '.join(numbers['weights_union'][t][reference]['module_types'])}" for t in tasks
               if reference in (numbers["weights_union"].get(t) or {})]  # fmt: skip
    if covered:
        intro += f" Here the rows of `{reference}` cover " + "; ".join(covered) + "."
    lines = [intro, ""]
    common = [t for t in tasks if numbers["weights"].get(t)]
    modules = numbers.get("weights_modules") or {}
    if common:
        where = "; ".join(f"{t}: {len(modules[t]['common'])} module{'s' if len(modules[t]['common']) != 1 else ''} "
                          f"({', '.join(modules[t]['common_types'])})" for t in common)  # fmt: skip
        lines += [f"**Like for like**: every method over the same modules, the ones every method with weight rows changes "
                  f"({where}).", ""] + _weight_rows(numbers["weights"], common) + [""]  # fmt: skip
    else:
        lines += ["**Like for like**: the methods with weight rows share no module, so there is no table over the same "
                  "modules.", ""]  # fmt: skip
    lines += ["**Each method over every module it changes** (the union; the modules differ between rows, so these rows "
              "are NOT comparable across methods):", ""] + _weight_rows(numbers["weights_union"], tasks)  # fmt: skip
    notes = [f"- `{m}`: {note}" for m, note in (settings.get("weights_notes") or {}).items()]
    notes += [f"- `{m}`: no weight rows: {why}" for m, why in (settings.get("weights_skipped") or {}).items()]
    return lines + (["", "Notes per method:", "", *notes] if notes else [])


def _weights_table_before_format_4(numbers: dict) -> list[str]:
    """The weight table of a drift summary before format 4: each method on the LoRA target modules, a full method's
    other linears apart."""
    settings = numbers["settings"]
    if not numbers["weights"]:
        return ["No weight-space rows (no adapted modules found)."]
    extra = ("Full fine-tuning cells: the LoRA target modules (compared like with like in the method's row) and, in "
             "the \"(other linears)\" row, every other decoder linear."
             if settings.get("weights_full_extra_linears") else
             "Full fine-tuning cells: the LoRA target modules, and no \"(other linears)\" row (none was analysed apart).")  # fmt: skip
    return [
        f"Per adapted module, the update delta W (full: W_ft - W0; LoRA: scale B A). Intruder dimensions: top "
        f"{settings['intruder_k']} left singular vectors of W_ft whose largest |cosine| with W0's is below "
        f"{fixed(settings['intruder_eps'], 1)}. " + extra,
        "",
        *_weight_rows(numbers["weights"], numbers["tasks"]),
    ]


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
    out += ["## Hypotheses", ""] + hypothesis_table(numbers) + [""] + counts_table(numbers)
    out += seeds_section(numbers)
    out += ["## Task metric and drift per method", ""] + results_table(numbers) + [""] + published_table(numbers)
    out += (["## Task metrics", ""] + task_metrics_table(numbers)) if numbers["settings"].get("tasks") else []
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
