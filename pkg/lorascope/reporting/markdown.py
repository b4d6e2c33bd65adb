"""ANALYSIS_REPORT.md from the report's numbers (the drift bundle's summary.json, H2/bench possibly re-read at report
time). Every number printed is a value of that dict, rounded by one of the formatters below; the test
tests/phases/test_report.py parses the report and checks it."""

from __future__ import annotations

import math
from typing import Any

FIGURES = {
    "layer_drift": "Layer-wise drift per task (both methods, band = min..max over seeds, dashed = seed noise floor)",
    "metric_vs_drift": "Task metric against mean drift, one point per cell",
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


def banner(n: dict) -> list[str]:
    p = n["provenance"]
    lines = []
    if p.get("builtin_model"):
        lines += [
            "> **WARNING: THESE NUMBERS MEAN NOTHING ABOUT TINYLLAMA.** This is the smoke study: the model is "
            f"`{p['model']}`, a tiny randomly initialised Llama built by the package"
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
        lines.append(f"| {h['hypothesis']} | overall | {_verdict(h['verdict'])} | {overall_ev} |")
        for scope, part in (h.get("by") or {}).items():
            lines.append(f"| | {scope} | {part['verdict']} | {part['evidence']} |")
    return lines


def seeds_section(n: dict) -> list[str]:
    s = n["settings"]
    k = s["n_seeds"]
    return [
        f"## What {k} seeds can and cannot show",
        "",
        f"- The unit of replication is the training seed: {k} per method and task. Seed-level tests pair the methods by "
        "seed.",
        f"- An exact sign-flip (permutation) test on {k} paired differences cannot give p below "
        f"{f(s['sign_flip_floor_two_sided'], 3)} two-sided ({f(s['sign_flip_floor_one_sided'], 3)} one-sided), however "
        "large the effect: a sign-flip p at that floor means every seed agreed in sign, not weak evidence. Nothing here "
        "is significant at 0.05 by that test, by construction.",
        f"- The paired t-test can go lower only by assuming the {k} differences are normal; it is reported with Cohen's "
        "d_z and Holm's correction across tasks, and should be read as descriptive.",
        f"- The {f(s['ci_level_pct'], 0)}% intervals of the drift reduction resample EXAMPLES (subsets of half the "
        "examples drawn without replacement, so the debiased estimator stays unbiased). They say how much the reduction "
        "would move with other examples for these trained models, not with other training seeds; seed-to-seed spread "
        "is the SD column and the seed noise floor.",
        "- The seed noise floor is the drift between two seeds of the same method: drift from the base below that floor "
        "is indistinguishable from retraining noise.",
        "- Debiased CKA (unbiased HSIC, Song et al. 2012) is the primary measure: at n examples < d features the plain "
        "(biased) linear CKA of unrelated representations is far from 0, so 1 - CKA_linear understates drift. Both are "
        "shown.",
        "",
    ]


def results_table(n: dict) -> list[str]:
    s = n["settings"]
    p, m = s["primary_pooling"], s["primary_measure"].removeprefix("cka_")
    lines = [
        f"Drift = 1 - CKA against the base model, mean over the {s['layers']} hidden-state entries, then mean ± SD over "
        f"seeds ({p} pooling). Metric: the task's selection metric on the validation split.",
        "",
        "| task | method | n examples | metric | metric mean ± SD | accuracy mean ± SD | drift (debiased) | "
        "drift (linear) | seed noise floor (debiased) | cosine | centred cosine |",
        "|---|---|---:|---|---|---|---|---|---|---|---|",
    ]
    for task in n["tasks"]:
        res = n["results"][task]
        for method, e in res["methods"].items():
            lines.append(
                f"| {task} | {method} | {res['n_examples']} | {res['metric_name']} | {msd(e['metric'])} | {msd(e['accuracy'])} | "
                f"{msd(e['drift'][p][m])} | {msd(e['drift'][p]['linear'])} | {f(e['noise_floor'][p][m]['mean'])} | "
                f"{msd(e['cosine'][p]['cosine'])} | {msd(e['cosine'][p]['centered_cosine'])} |"
            )
    excluded = [f"{task} ({pooling}): {', '.join(labels)}" for task in n["tasks"]
                for pooling, labels in (n["results"][task].get("layers_excluded") or {}).items()]  # fmt: skip
    if excluded:
        lines += ["", "Left out of every mean over layers, because CKA is undefined there (a constant representation, "
                  "e.g. the last token's embedding when every example ends with the same token): " + "; ".join(excluded) + "."]  # fmt: skip
    return lines


def comparison_table(n: dict) -> list[str]:
    s = n["settings"]
    primary = (s["primary_pooling"], s["primary_measure"].removeprefix("cka_"))
    lines = [
        f"FT vs LoRA mean drift, paired by seed; reduction % = 100 (FT - LoRA) / FT. The CI (primary measure only) is "
        f"over examples: {s['resamples']} subsets without replacement. Holm adjusts across the {len(n['tasks'])} tasks.",
        "",
        "| task | LoRA method | pooling | measure | FT drift | LoRA drift | reduction % | CI over examples | t (df) | "
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
                    f"| {task} | {lm} | {p} | {m} | {f(c['ft_mean'])} | {f(c['lora_mean'])} | {f(c['reduction_pct'], 1)} | "
                    f"{ci_txt} | {f(t['t'], 2)} ({t['df']}) | {pv(t['p'])} | {pv(c.get('holm_p_t'))} | "
                    f"{pv(c['sign_flip_p'])} ({f(c['sign_flip_floor'], 3)}) | {pv(c.get('holm_p_sign_flip'))} | {f(c['cohens_dz'], 2)} |"
                )
    return lines


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
    lines = []
    for backend, b in n["bench"].items():
        lines += [f"Backend `{backend}` on {b.get('device_name') or b.get('device')} ({b.get('dtype')}); mean batch "
                  "latency with the CI over repeats.", "", "| mode | order | batch | mean batch ms | CI | req/s |",
                  "|---|---|---:|---|---|---|"]  # fmt: skip
        for c in b["configs"]:
            ci = f"[{f(c['low'], 3)}, {f(c['high'], 3)}]" if c.get("low") is not None else "n/a"
            lines.append(f"| {c['mode']} | {c['order']} | {c['batch_size']} | {f(c['mean_batch_ms'], 3)} | {ci} | "
                         f"{f(c.get('throughput_rps'), 1)} |")  # fmt: skip
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


def render(n: dict, figures: list[tuple[str, str]]) -> str:
    """The whole report. `figures`: (caption, relative path of the PNG) in display order."""
    p = n["provenance"]
    out = [f"# Analysis report: study `{p['study']}`, run `{p['run_id']}`", ""]
    out += banner(n)
    out += ["## Hypotheses", ""] + hypothesis_table(n) + [""]
    out += seeds_section(n)
    out += ["## Task metric and drift per method", ""] + results_table(n) + [""]
    out += ["## Drift reduction: LoRA vs full fine-tuning", ""] + comparison_table(n) + [""]
    out += ["## Weight space", ""] + weights_table(n) + [""]
    out += ["## Serving latency", ""] + bench_tables(n) + [""]
    out += ["## Figures", ""]
    for title, path in figures:
        out += [f"### {title}", "", f"![{title}]({path})", ""]
    out += ["## Provenance", ""] + provenance(n) + [""]
    return "\n".join(out)
