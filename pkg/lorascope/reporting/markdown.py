"""ANALYSIS_REPORT.md from the report's numbers (the drift bundle's summary.json, H2/bench possibly re-read at report
time). Every number printed is a value of that dict, rounded by one of the formatters below; the test
tests/phases/test_report.py parses the report and checks it."""

from __future__ import annotations

import math
from typing import Any

from lorascope.reporting.bench_markdown import device_words, stack_name

FIGURES = {
    "layer_drift": "Layer-wise drift per task (every method, band = min..max over seeds, dashed = seed noise floor)",
    "metric_vs_drift": "Task metric against mean drift, one point per cell",
    "pareto": "Task metric against drift (and forgetting) per method, with the Pareto front",
    "drift_reduction": "Drift reduction with its confidence interval over examples",
    "weights": "Weight-space summary of the updates",
    "latency": "Serving latency by mode and batch size",
}


def f(x: Any, nd: int = 4) -> str:
    """Fixed decimals; n/a for a missing (non-finite) value."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{float(x):.{nd}f}"


def pv(x: Any) -> str:
    """A p-value: 3 decimals, or scientific below 0.001."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.3f}" if x >= 1e-3 else f"{x:.1e}"


def msd(s: dict, nd: int = 4) -> str:
    """mean ± SD (n) of a seed summary."""
    return f"{f(s.get('mean'), nd)} ± {f(s.get('sd'), nd)}"


def _verdict(v: str) -> str:
    return f"**{v}**"


def method_value(entry: dict, key: str) -> Any:
    """A compared method's field of a comparison: `method_<key>`, or `lora_<key>` in summaries written before
    methods other than LoRA were compared (format 2)."""
    return entry.get(f"method_{key}", entry.get(f"lora_{key}"))


def compared_methods(n: dict) -> list[str]:
    s = n["settings"]
    return s.get("compared_methods", s.get("lora_methods", []))


def banner(n: dict) -> list[str]:
    p = n["provenance"]
    lines = []
    if p.get("builtin_model"):
        llama = p["model"] == "builtin:tiny-llama"
        lines += [
            f"> **WARNING: THESE NUMBERS MEAN NOTHING ABOUT {'TINYLLAMA' if llama else 'ANY REAL MODEL'}.** This is a smoke "
            f"study: the model is `{p['model']}`, a tiny randomly initialised {'Llama' if llama else 'model'} built by the package"
            + (", trained on the synthetic GLUE-format fixtures shipped with it (not GLUE's text)" if p.get("synthetic_data") else "")
            + ". The report checks that the pipeline runs end to end and that its arithmetic is right; it says nothing "
            "about LoRA, full fine-tuning or any real model.",
            "",
        ]
    if p.get("model_variant"):
        lines += [f"> **Model:** `{p['model']}`: {p['model_variant']}.", ""]
    if not p.get("builtin_model") and p.get("synthetic_data"):
        lines += ["> **WARNING: synthetic data.** The tasks are the synthetic GLUE-format fixtures shipped with the "
                  "package, not GLUE: no conclusion about GLUE follows.", ""]  # fmt: skip
    return lines


def hypothesis_table(n: dict) -> list[str]:
    lines = ["| hypothesis | scope | verdict | evidence |", "|---|---|---|---|"]
    for key in ("H1a", "H1b", "H2"):
        h = n["hypotheses"].get(key)
        if not h:
            continue
        overall_ev = h.get("rule") or h.get("evidence", "")
        if h.get("no_reference"):
            overall_ev = h["no_reference"]
        lines.append(f"| {h['hypothesis']} | overall | {_verdict(h['verdict'])} | {overall_ev} |")
        for backend, v in (h.get("by_backend") or {}).items():  # H2: one verdict per serving backend
            lines.append(f"| | backend {backend} | {_verdict(v['verdict'])} | {v['evidence']} |")
        for method, v in (h.get("by_method") or {}).items():  # H1a/H1b: one verdict per (reference, method) pair
            lines.append(f"| | pair {method} | {_verdict(v['verdict'])} | {v['evidence']} |")
        for scope, part in (h.get("by") or {}).items():
            lines.append(f"| | {scope} | {part['verdict']} | {part['evidence']} |")
    return lines


def seeds_section(n: dict) -> list[str]:
    s = n["settings"]
    k = s["n_seeds"]
    iv = f(s["verdict_interval_pct"], 0)
    return [
        f"## What {k} seeds can and cannot show",
        "",
        f"- The unit of replication is the training seed: {k} per method and task. A verdict says **supported** only "
        f"when a one-sided {f(s['verdict_bound_pct'], 1)}% bound over seeds clears the threshold AND "
        f"every seed lies on the claimed side of it (the {iv}% intervals in the table are those two one-sided bounds). "
        f"With {k} seeds that often reads **inconclusive**: the honest answer. Each such verdict says how many seeds "
        f"would give {f(s['power_target_pct'], 0)}% power if the observed mean and spread were the truth.",
        "- H1a's interval adds the validation sampling error (a paired bootstrap over the validation examples, "
        f"{s['example_bootstrap']} resamples, the same for every cell) to the seed spread: more seeds cannot shrink that "
        "part.",
        "- Gates: a cell **learned** its task when its metric beats the majority baseline (the best constant predictor) "
        f"by at least {f(s['learn_margin_pct_of_headroom'], 0)}% of the headroom to a perfect score and the gain's "
        "one-sided bootstrap bound is above 0. H1b for a task with a cell that did not learn is **not assessable** (low "
        "drift of a model that did not move says nothing about preservation); H1a is not assessable when a full "
        "fine-tuning cell did not learn. Drift from the base that is not above the seed noise floor (the drift between "
        "two seeds of the same method) is **indistinguishable** from retraining noise; H1b is indistinguishable when "
        "full fine-tuning's drift is.",
        f"- An exact sign-flip (permutation) test on {k} paired differences cannot give p below "
        f"{f(s['sign_flip_floor_two_sided'], 3)} two-sided ({f(s['sign_flip_floor_one_sided'], 3)} one-sided), however "
        "large the effect: a sign-flip p at that floor means every seed agreed in sign, not weak evidence. The paired "
        "t-tests, d_z and Holm's correction across tasks are descriptive.",
        f"- The {f(s['ci_level_pct'], 0)}% intervals of the drift reduction over EXAMPLES (subsets of half the examples "
        "drawn without replacement, so the debiased estimator stays unbiased) are for these trained models: they say "
        "how much the reduction would move with other examples, not with other training seeds, and no verdict rests on "
        "them.",
        "- Debiased CKA (unbiased HSIC, Song et al. 2012) is the primary measure: at n examples < d features the plain "
        "(biased) linear CKA of unrelated representations is far from 0, so 1 - CKA_linear understates drift. Both are "
        "shown.",
        "",
    ]


def _layers_note(n: dict) -> str:
    parts = []
    for task in n["tasks"]:
        res = n["results"][task]
        for pooling, why in (res.get("layers_excluded") or {}).items():
            parts.append(f"{task} ({pooling}): " + "; ".join(f"{label}: {reason}" for label, reason in why.items()))
    used = {", ".join(v) for t in n["tasks"] for v in n["results"][t]["layers_in_mean"].values()}
    out = "Entries in every mean over layers: " + " / ".join(sorted(used)) + "."
    return out + (" Left out: " + "; ".join(parts) + "." if parts else "")


def results_table(n: dict) -> list[str]:
    s = n["settings"]
    p, m = s["primary_pooling"], s["primary_measure"].removeprefix("cka_")
    lines = [
        f"Drift = 1 - CKA against the base model, mean over the hidden-state entries in the mean, then mean ± SD over "
        f"seeds ({p} pooling). Metric: the task's selection metric on the validation split; learned: cells that beat "
        "the majority baseline (see the gates above). A drift marked (≤ floor) is within its seed noise floor.",
        "",
        _layers_note(n),
        "",
        "| task | method | n examples | metric | metric mean ± SD | majority baseline | learned | accuracy mean ± SD | "
        "drift (debiased) | drift (linear) | seed noise floor (debiased) | cosine | centred cosine |",
        "|---|---|---:|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in n["tasks"]:
        res = n["results"][task]
        for method, e in res["methods"].items():
            learned = [seed for seed, g in e["learning"].items() if g["learned"] is True]
            mark = " (≤ floor)" if e["within_floor"][p][m] else ""
            lines.append(
                f"| {task} | {method} | {res['n_examples']} | {res['metric_name']} | {msd(e['metric'])} | "
                f"{f(res.get('majority_baseline'))} | {len(learned)} of {len(e['learning'])} | {msd(e['accuracy'])} | "
                f"{msd(e['drift'][p][m])}{mark} | {msd(e['drift'][p]['linear'])} | {f(e['noise_floor'][p][m]['mean'])} | "
                f"{msd(e['cosine'][p]['cosine'])} | {msd(e['cosine'][p]['centered_cosine'])} |"
            )
    return lines


def layer_table(n: dict) -> list[str]:
    """Per-layer H1b: every hidden-state entry with its drifts, floors and the same seed-level rule."""
    s = n["settings"]
    lines = [f"H1b's rule on each hidden-state entry ({s['primary_pooling']} pooling, debiased): drift mean over seeds, "
             f"seed noise floor, mean of the per-seed reductions and its {f(s['verdict_interval_pct'], 0)}% interval over "
             "seeds. Nothing hides in the mean.", "",
             "| task | method | layer | in mean | FT drift | FT floor | method drift | method floor | reduction % | interval | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    frozen = False
    for task in n["tasks"]:
        for lm, comp in n["results"][task]["comparisons"].items():
            for label, v in (comp.get("layers") or {}).items():
                iv = f"[{f(v['lo'], 1)}, {f(v['hi'], 1)}]" if v.get("lo") is not None else "n/a"
                mark = " (frozen by construction)" if v.get("frozen_by_construction") else ""
                frozen = frozen or bool(mark)
                lines.append(f"| {task} | {lm} | {label} | {'yes' if v['in_mean'] else 'no'} | {f(v['ft_mean'])} | "
                             f"{f(v['ft_floor'])} | {f(method_value(v, 'mean'))} | {f(method_value(v, 'floor'))} | "
                             f"{f(v['estimate_pct'], 1)} | {iv} | {v['verdict']}{mark} |")  # fmt: skip
    if frozen:
        lines += ["", "(frozen by construction): a block a top-k-layers method does not train, so its output is the "
                  "base model's exactly (drift 0). Such entries stay in the means: that is the method's property."]  # fmt: skip
    return lines


def comparison_table(n: dict) -> list[str]:
    s = n["settings"]
    primary = (s["primary_pooling"], s["primary_measure"].removeprefix("cka_"))
    lines = [
        f"Full fine-tuning (the reference, FT) vs each compared method: mean drift, paired by seed; reduction % = "
        f"100 (FT - method) / FT of the seed means (descriptive: the "
        f"H1b verdict uses the per-seed reductions). The CI (primary measure only) is over examples, for these trained "
        f"models: {s['resamples']} subsets without replacement. Holm adjusts across the {len(n['tasks'])} tasks.",
        "",
        "| task | method | pooling | measure | FT drift | method drift | reduction % | CI over examples (these models) | t (df) | "
        "p (t) | Holm p (t) | sign-flip p (floor) | Holm p (sign-flip) | d_z |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for task in n["tasks"]:
        for lm, comp in n["results"][task]["comparisons"].items():
            order = [primary] + [(p, m) for p in s["poolings"] for m in s["measures"][::-1] if (p, m) != primary]
            for p, m in order:
                c = comp[p][m]
                ci = comp.get("reduction_ci") if (p, m) == primary else None
                ci_txt = f"[{f(ci['lo'], 1)}, {f(ci['hi'], 1)}]" if ci else "n/a"
                t = c["paired_t"]
                lines.append(
                    f"| {task} | {lm} | {p} | {m} | {f(c['ft_mean'])} | {f(method_value(c, 'mean'))} | {f(c['reduction_pct'], 1)} | "
                    f"{ci_txt} | {f(t['t'], 2)} ({t['df']}) | {pv(t['p'])} | {pv(c.get('holm_p_t'))} | "
                    f"{pv(c['sign_flip_p'])} ({f(c['sign_flip_floor'], 3)}) | {pv(c.get('holm_p_sign_flip'))} | {f(c['cohens_dz'], 2)} |"
                )
    return lines


def pairs_table(n: dict) -> list[str]:
    """One row per (reference, compared method) pair and task: the H1a and H1b verdicts of `hypotheses` (the same
    rule for every pair), the gap and the mean reduction, then the pair's overall verdicts."""
    s = n["settings"]
    if s.get("no_reference"):
        return [f"No verdicts per method pair: {s['no_reference']}."]
    if "pairs" not in n:
        return ["No table per pair: the drift summary predates it (the hypothesis table above has the verdicts)."]
    pairs = n["pairs"]
    if not pairs:
        return ["No method is compared with the reference."]
    lines = [f"Every method against the reference `{s.get('reference_method') or s.get('full_method')}` (the study's "
             "first full fine-tuning method), by the H1a and H1b rules above: gap = reference - method (pp, task "
             "metric), reduction = mean over seeds of the per-seed drift reductions (%).", "",
             "| method | kind | task | gap (pp) | H1a | reduction % | H1b |", "|---|---|---|---|---|---|---|"]  # fmt: skip
    for method, pv_ in pairs.items():
        for task, t in pv_["tasks"].items():
            lines.append(f"| {method} | {pv_['kind']} | {task} | {f(t['gap_pp'], 2)} | {t['H1a']} | "
                         f"{f(t['reduction_pct'], 1)} | {t['H1b']} |")  # fmt: skip
        lines.append(f"| {method} | {pv_['kind']} | all tasks | | {_verdict(pv_['H1a'])} | | {_verdict(pv_['H1b'])} |")
    return lines


COST_COLUMNS = (("trainable_params", "trainable params", 0), ("trainable_pct", "% of model", 3),
                ("trainable_mib", "trainable MiB", 3), ("artifact_mib", "artifact on disk MiB", 3),
                ("tokens_per_second", "train tokens/s", 1), ("peak_memory_mib", "peak memory MiB", 1),
                ("train_seconds", "train s", 1))  # fmt: skip


def _cost_cell(st: dict, nd: int) -> str:
    if st.get("mean") is None:
        return "n/a"
    if st["min"] is not None and abs(st["max"] - st["min"]) > 1e-9 * max(1.0, abs(st["mean"])):
        return f"{f(st['mean'], nd)} ({f(st['min'], nd)}..{f(st['max'], nd)})"
    return f(st["mean"], nd)


def costs_table(n: dict) -> list[str]:
    """Per method (mean over seeds and tasks; min..max when the cells differ), then per task for the fields that
    differ between tasks. n/a: the cells' metrics.json predate the field."""
    costs = (n.get("costs") or {}).get("methods") or {}
    if not costs:
        return ["No cost fields (the drift summary predates them)."]
    head = "| method | kind | cells | " + " | ".join(c[1] for c in COST_COLUMNS) + " | memory measured as |"
    lines = ["From each cell's metrics.json: trainable parameters, trainable bytes (trainable params x dtype size), the "
             "saved adapter/ or model/ folder on disk, training tokens per second, peak memory and training time. Mean "
             "over seeds and tasks, (min..max) when the cells differ; n/a: the cells' metrics.json lack the field.", "",
             head, "|---|---|---:|" + "---:|" * len(COST_COLUMNS) + "---|"]  # fmt: skip
    for method, c in costs.items():
        cells = " | ".join(_cost_cell(c["all"][k], nd) for k, _, nd in COST_COLUMNS)
        lines.append(f"| {method} | {c['kind']} | {c['cells']} | {cells} | {', '.join(c['peak_memory_kind']) or 'n/a'} |")
    varying = [(m, c) for m, c in costs.items() if c["varies_by_task"] and len(c["by_task"]) > 1]
    if varying:
        lines += ["", "Per task (mean over seeds):", "", "| method | task | " + " | ".join(c[1] for c in COST_COLUMNS) + " |",
                  "|---|---|" + "---:|" * len(COST_COLUMNS)]  # fmt: skip
        for method, c in varying:
            for task, st in c["by_task"].items():
                lines.append(f"| {method} | {task} | " + " | ".join(_cost_cell(st[k], nd) for k, _, nd in COST_COLUMNS) + " |")
    return lines


def pareto_lines(n: dict) -> list[str]:
    """The Pareto front's members per task and axis (analysis.pareto), with each member's metric and x."""
    par = n.get("pareto")
    if not par:
        return ["No Pareto section (the report numbers predate it)."]
    lines = ["A method is on the front when no other method has a higher-or-equal task metric AND a lower-or-equal "
             "drift (or forgetting), one of them strictly; equal points are both on it. Mean over seeds."]  # fmt: skip
    if par.get("sweeps"):
        lines += ["", "Sweeps (joined in the figure in size order): " + "; ".join(
            f"{sw['label']}: {', '.join(sw['methods'])}" for sw in par["sweeps"]) + "."]  # fmt: skip
    lines += ["", "| axis | task | front (lowest x first) | metric | x |", "|---|---|---|---|---|"]
    for axis in ("drift", "forgetting"):
        for task, part in (par.get(axis) or {}).items():
            front = part["front"]
            lines.append(f"| {axis} | {task} | {', '.join(front) or 'none'} | "
                         f"{', '.join(f(part['points'][m]['metric']) for m in front) or 'n/a'} | "
                         f"{', '.join(f(part['points'][m]['x']) for m in front) or 'n/a'} |")  # fmt: skip
    if not par.get("forgetting"):
        lines += ["", "No forgetting values in the drift summary (forgetting is measured for decoder models only), so "
                  "no forgetting front."]  # fmt: skip
    return lines


def published_table(n: dict) -> list[str]:
    """The study's published reference numbers next to ours, the same metric on both sides (percent)."""
    pub = n.get("published")
    if not pub:
        return []
    lines = [f"Published numbers: {pub['source']}. Each is compared with our mean ± SD over seeds of the same metric "
             "(the published metric column); our selection metric is named where it differs. In percent.", "",
             "| task | method | published metric | our selection metric | published | ours (same metric) | ours - published (pp) |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for task, t in pub["tasks"].items():
        for method, v in t["methods"].items():
            ours = "n/a" if v["ours_pct"] is None else f"{f(v['ours_pct'], 1)} ± {f(v['ours_sd_pct'], 1)}"
            lines.append(f"| {task} | {method} | {t['metric']} | {t['selection_metric']} | {f(v['value_pct'], 1)} | {ours} | "
                         f"{f(v['diff_pp'], 1)} |")  # fmt: skip
    return lines + [""]


def forgetting_table(n: dict) -> list[str]:
    """Forgetting per task and method (the drift summary's `forgetting` section, analysis/forgetting.py, when the
    model is a decoder), next to the method's primary drift, and the drift-forgetting correlation over cells: is
    drift a proxy for forgetting?"""
    fg = n.get("forgetting")
    if not fg:
        return ["No forgetting values: forgetting is measured for decoder models only (it needs the base model's causal "
                "LM head), or the drift summary predates it."]  # fmt: skip
    s = n["settings"]
    p, m = s["primary_pooling"], s["primary_measure"].removeprefix("cka_")
    lines = ["Forgetting = the base model's language-model loss on held-out text through the fine-tuned backbone minus "
             f"the base model's own ({fg.get('unit') or 'nats per token'}; 0 = nothing forgotten), mean over seeds with "
             f"its {fg.get('interval') or 'interval over seeds'}, next to the primary drift.", "",
             "| task | method | forgetting | interval | base loss | drift (debiased) |", "|---|---|---|---|---|---|"]  # fmt: skip
    for task in n["tasks"]:
        for method, v in (fg.get(task) or {}).items():
            e = n["results"][task]["methods"].get(method)
            drift = msd(e["drift"][p][m]) if e else "n/a"
            iv = f"[{f(v.get('lo'))}, {f(v.get('hi'))}]" if v.get("lo") is not None else "n/a"
            lines.append(f"| {task} | {method} | {f(v.get('mean'))} | {iv} | {f(v.get('base_loss'))} | {drift} |")
    corr = fg.get("drift_correlation") or {}
    items = []
    for scope, c in [("all cells", corr.get("all")), *((t, c) for t, c in (corr.get("by_task") or {}).items())]:
        if not c:
            continue
        what = (f"Spearman rho {f(c['spearman_rho'], 3)}, Pearson r {f(c.get('pearson_r'), 3)} over {c['n']} cells"
                if c.get("spearman_rho") is not None else f"no correlation ({c.get('why_none', 'n/a')})")  # fmt: skip
        items.append(f"- drift vs forgetting, {scope}: {what}")
    note = (corr.get("all") or {}).get("note")
    return lines + ([""] + items if items else []) + (["", note] if note and items else [])

def weights_table(n: dict) -> list[str]:
    s = n["settings"]
    if not n["weights"]:
        return ["No weight-space rows (no adapted modules found)."]
    extra = ("Full fine-tuning cells: the LoRA target modules (compared like with like in the method's row) and, in "
             "the \"(other linears)\" row, every other decoder linear."
             if s.get("weights_full_extra_linears") else
             "Full fine-tuning cells: the LoRA target modules only (the other linears were too large to decompose here).")  # fmt: skip
    lines = [
        f"Per adapted module, the update delta W (full: W_ft - W0; LoRA: scale B A). Intruder dimensions: top "
        f"{s['intruder_k']} left singular vectors of W_ft whose largest |cosine| with W0's is below {f(s['intruder_eps'], 1)}. "
        + extra,
        "",
        "| task | method | modules | module types | stable rank | effective rank | r90 | intruders per module | "
        "modules with intruders % | relative update norm |",
        "|---|---|---:|---|---|---|---|---|---|---|",
    ]
    for task in n["tasks"]:
        for method, w in (n["weights"].get(task) or {}).items():
            lines.append(
                f"| {task} | {method} | {w['modules']} | {', '.join(w['module_types'])} | {msd(w['stable_rank'], 2)} | "
                f"{msd(w['effective_rank'], 2)} | {msd(w['r90'], 2)} | {msd(w['n_intruders'], 2)} | "
                f"{f(w['modules_with_intruders_pct'], 1)} | {msd(w['delta_rel'])} |"
            )
    return lines


def bench_tables(n: dict) -> list[str]:
    if not n.get("bench"):
        return ["No bench bundle was committed when this report was written: latency and H2 are not measured."]
    backends = list(n["bench"])
    lines = []
    for backend, b in n["bench"].items():
        skipped = f"; not possible on this platform: {', '.join(b['regimes_skipped'])}" if b.get("regimes_skipped") else ""
        lines.append(f"- `{backend}`: {stack_name(backend, b.get('platform'))} on {device_words(b)}, {b.get('dtype')}, "
                     f"execution regimes {', '.join(b.get('regimes') or ['eager'])}{skipped}; H2 for "
                     f"this backend: {_verdict(b.get('h2_verdict') or 'not measured')}")  # fmt: skip
        for key, by_bs in (b.get("regime_vs_eager") or {}).items():  # the same mode in two regimes, not part of H2
            mode, name = key.rsplit(" ", 1)
            parts = [f"batch {bs} {o['pct']:+.1f}% [{f(o['lo'], 1)}, {f(o['hi'], 1)}]" for bs, o in sorted(by_bs.items(), key=lambda kv: int(kv[0]))]
            lines.append(f"  - `{backend}` {mode}, {name.replace('_', ' ')} (latency; negative = faster): " + ", ".join(parts))
    lines += ["", "Mean batch latency (ms) per backend, side by side on the same requests, with the "
              f"{f(n['bench'][backends[0]]['confidence_pct'], 0)}% CI over repeat means on the log scale (never below 0). "
              "Each row is one execution regime: overheads and H2 only compare modes of one backend in one regime.", "",
              "| regime | mode | order | batch | " + " | ".join(f"{b} ms [CI] | {b} req/s" for b in backends) + " |",
              "|---|---|---|---:|" + "---|---:|" * len(backends)]
    rows: dict[tuple, dict[str, dict]] = {}
    for backend, b in n["bench"].items():
        for c in b["configs"]:
            rows.setdefault((c.get("regime") or "eager", c["mode"], c["order"], c["batch_size"]), {})[backend] = c
    for (regime, mode, order, bs), by in rows.items():
        cells = []
        for backend in backends:
            c = by.get(backend)
            if c is None:
                cells.append("n/a | n/a")
                continue
            ci = f" [{f(c['low'], 3)}, {f(c['high'], 3)}]" if c.get("low") is not None else ""
            cells.append(f"{f(c['mean_batch_ms'], 3)}{ci} | {f(c.get('throughput_rps'), 1)}")
        lines.append(f"| {regime} | {mode} | {order} | {bs} | " + " | ".join(cells) + " |")
    lines += ["", "Correctness per backend (class probabilities; vllm_vs_hf: vLLM's answer against HF transformers + PEFT "
              "for the same request):", "", "| backend | check | requests | argmax mismatches | max prob diff | ok |",
              "|---|---|---:|---:|---:|---|"]  # fmt: skip
    for backend, b in n["bench"].items():
        for r in b.get("correctness") or []:
            lines.append(f"| {backend} | {r['check']} | {r['requests']} | {r['argmax_mismatches']} | {r['max_prob_diff']:.2e} | "
                         f"{r['ok']} |")
    lines.append("")
    return lines


def provenance(n: dict) -> list[str]:
    p = n["provenance"]
    ex, dr = p["extract"], p["drift"]
    rep = n.get("report") or {}
    hw = dr["hardware"]
    lines = [
        f"- run `{p['run_id']}`, study `{p['study']}` (hash `{p['study_hash']}`)",
        f"- model `{p['model']}` revision `{p['model_revision']}` (resolved `{p.get('model_commit') or 'n/a'}`); dataset fingerprint "
        f"`{p.get('dataset_fingerprint')}`",
        f"- code: extract `{', '.join(ex['code_versions'])}`, drift `{p['code_version']}`, report `{rep.get('code_version')}`",
        f"- extract hardware: devices `{', '.join(ex['devices'])}`, GPU `{', '.join(ex['gpu_names']) or 'none'}`, CPU "
        f"`{', '.join(ex['cpu_models'])}` ({', '.join(map(str, ex['cpu_cores_usable']))} usable cores); "
        f"{ex['bundles']} bundles, forward passes `{ex['forward_seconds_total']:.1f}` s in total",
        f"- drift hardware: CPU `{hw.get('cpu_model')}`, `{hw.get('cpu_cores_usable')}` usable cores, GPU none (CPU phase); "
        f"drift took `{n['timings']['total_seconds']:.1f}` s (representations `{n['timings']['representations_seconds']:.1f}`, "
        f"weights `{n['timings']['weights_seconds']:.1f}`)",
        "- packages (extract): " + ", ".join(f"`{k} {v}`" for k, v in (ex.get("versions") or {}).items()),
        "- packages (drift): " + ", ".join(f"`{k} {v}`" for k, v in dr["versions"].items()),
        "- packages (report): " + ", ".join(f"`{k} {v}`" for k, v in (rep.get("versions") or {}).items()),
        f"- H2 source: `{rep.get('h2_source')}`; report written `{rep.get('generated_at')}` on `{rep.get('host')}`",
    ]
    return lines


def training_curves_note(n: dict) -> list[str]:
    """Which cells' training histories the curve figures draw, and which cells have none (and why)."""
    tc = (n.get("report") or {}).get("training_curves")
    if tc is None:
        return ["Training curves were not collected for this report."]
    if not tc["cells_with_history"]:
        return [f"**Training curves missing**: none of the {tc['cells']} cells has a history.json (cells committed "
                "before lorascope kept the Trainer's log history; retraining a cell records it)."]  # fmt: skip
    lines = [f"Loss and dev metric against the optimizer step, from the history.json of {tc['cells_with_history']} of "
             f"{tc['cells']} cells (figures below, one per task; seeds overlaid)."]  # fmt: skip
    if tc["missing"]:
        lines += ["", "No curves for: " + "; ".join(f"`{cell}` ({why})" for cell, why in tc["missing"].items()) + "."]
    return lines


def render(n: dict, figures: list[tuple[str, str]]) -> str:
    """The whole report. `figures`: (caption, relative path of the PNG) in display order."""
    p = n["provenance"]
    out = [f"# Analysis report: study `{p['study']}`, run `{p['run_id']}`", ""]
    out += banner(n)
    out += ["## Hypotheses", ""] + hypothesis_table(n) + [""]
    out += seeds_section(n)
    out += ["## Task metric and drift per method", ""] + results_table(n) + [""] + published_table(n)
    out += ["## Accuracy vs drift: Pareto front", ""] + pareto_lines(n) + [""]
    out += ["## Forgetting", ""] + forgetting_table(n) + [""]
    out += ["## Verdicts per method pair", ""] + pairs_table(n) + [""]
    out += ["## Cost per method", ""] + costs_table(n) + [""]
    out += ["## Drift reduction: each method vs full fine-tuning", ""] + comparison_table(n) + [""]
    out += ["## Drift reduction per layer", ""] + layer_table(n) + [""]
    out += ["## Weight space", ""] + weights_table(n) + [""]
    out += ["## Serving latency", ""] + bench_tables(n) + [""]
    out += ["## Training curves", ""] + training_curves_note(n) + [""]
    out += ["## Figures", ""]
    for title, path in figures:
        out += [f"### {title}", "", f"![{title}]({path})", ""]
    out += ["## Provenance", ""] + provenance(n) + [""]
    return "\n".join(out)
