"""The hypotheses, each by a rule in `verdicts` on numbers the summary already holds: H1a (task metric within a gap of
the reference's) and H1b (drift, over the entries both methods can change, at least a given percentage below the
reference's) per task and compared method, one verdict per (reference, method) pair (`pair_verdicts`), the overall
line (the study's reference pair's verdict and a count of the pairs per verdict: no single word for a family of
methods), and H2 (separate adapter serving at most a given overhead slower than merged) from the committed bench
summaries, which the drift phase and the report phase evaluate with the same `h2_hypothesis`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from lorascope.analysis import verdicts as vd
from lorascope.analysis.drift_stats import PRIMARY_MEASURE, not_moved_text
from lorascope.analysis.study_layout import NO_REFERENCE, method_roles, primary_pooling
from lorascope.methods import kind_of


def _not_learned(method: str, gates: Mapping[str, dict], unit: str = "pp", baseline: str = "majority baseline") -> list[str]:
    """The learning-gate failures of one method's cells ({seed: gate}), as evidence text (`unit`: the task metric's
    points, `baseline`: what its trivial predictor is called)."""
    out = []
    for seed, g in gates.items():
        if g["learned"] is None:
            out.append(f"{method} seed {seed}: learning not checked (no per-example predictions, no majority baseline)")
        elif not g["learned"]:
            lower = f", gain lower bound {100 * g['gain_lower']:.1f} {unit}" if g["gain_lower"] is not None else ""
            out.append(f"{method} seed {seed} did not learn ({100 * g['value']:.1f} vs {baseline} {100 * g['baseline']:.1f}, "
                       f"needs +{100 * g['margin']:.1f} {unit}{lower})")  # fmt: skip
    return out


def _units_words(study: Any, task_facts: Mapping[str, Mapping[str, Any]] | None) -> str:
    """H1a's margin in the tasks' units: "pp" when every task's primary metric is a share (accuracy, F1), else the
    points of each task's metric ("points of the task's primary metric: stsb Pearson correlation points, ...")."""
    facts = task_facts or {}
    if all(facts.get(t.name, {}).get("unit", "pp") == "pp" for t in study.tasks):
        return "pp"
    named = ", ".join(f"{t.name} {facts.get(t.name, {}).get('units', 'pp')}" for t in study.tasks)
    return f"points of the task's primary metric ({named})"


def compared_words(study: Any) -> str:
    """How the hypotheses name the compared methods: their kind's `hypothesis_subject` when every one is of one kind
    that has one ("LoRA" for LoRA methods, the seed study), else "each compared method's"."""
    _, compared = method_roles(study)
    subjects = {kind_of(m).hypothesis_subject for m in compared}
    return subjects.pop() if len(subjects) == 1 and None not in subjects else "each compared method's"


def reference_pair(study: Any) -> Any | None:
    """The compared method of the study's reference pair: the first method of a kind the hypotheses name (LoRA's
    `hypothesis_subject`) against the reference (the first full method); without one, the first compared method;
    None without a reference."""
    _, compared = method_roles(study)
    named = [m for m in compared if kind_of(m).hypothesis_subject is not None]
    return (named or compared or [None])[0]


def _moved_note(name: str, gate: Mapping[str, Any]) -> str:
    """How a method's change reads: whether it moved, and its seed-to-seed drift as consistency."""
    what = "moved" if gate["moved"] else "not distinguishable from the base"
    share = gate.get("shared_share")
    shared = f"; shared share {share:.2f} (small-change approximation)" if share is not None else ""
    return f"{name}: {what}, {gate['evidence']}{shared}"


def hypotheses_from(study: Any, results: Mapping[str, Any], task_facts: Mapping[str, Mapping[str, Any]] | None = None) -> dict:
    """H1a and H1b per task and compared method (every method but the reference, of any kind) by `verdicts.h1a` /
    `verdicts.h1b`, one verdict per (reference, method) pair and task (`by_method`: combined over the tasks of one
    pair, `verdicts.combine`). H1b compares the drift over the entries both methods can change (the comparison's
    `ft_values` / `method_values`), gated by whether the reference moved at all (`reference_moved`). The overall line
    (`RULES["pairs"]`): `verdict` is the study's reference pair's (`reference_pair`, combined over its tasks) and
    `counts` counts the pairs per verdict category. No reference: not measured, and `no_reference` says why.
    `task_facts`: {task: the task type's gate facts} (units: H1a's margin and gaps are in points of the task's primary
    metric, `unit`: "pp" for accuracy and F1, "points" of a correlation)."""
    full, loras = method_roles(study)
    hyp = study.hypotheses
    primary = primary_pooling(study)
    h1a: dict[str, Any] = {}
    h1b: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for task, res in results.items() if full is not None else []:
        fm = res["methods"][full.name]
        facts = (task_facts or {}).get(task, {})
        majority = facts.get("trivial_value") is None and facts.get("label_kind", "class") == "class"  # QA, text: not classes
        unit, trivial = facts.get("unit", "pp"), "majority baseline" if majority else "trivial baseline"
        for lm in loras:
            key = task if len(loras) == 1 else f"{task}/{lm.name}"
            owner[key] = lm.name
            lmm = res["methods"][lm.name]
            ft_gates, lo_gates = (_not_learned(m, e["learning"], unit, trivial) for m, e in ((full.name, fm), (lm.name, lmm)))
            h1a[key] = vd.h1a({int(s): v for s, v in fm["metric"]["values"].items()},
                              {int(s): v for s, v in lmm["metric"]["values"].items()}, hyp.h1a_max_gap_pp,
                              example_se_pp=res["example_se_gap_pp"].get(lm.name), gates=ft_gates,
                              names=(full.name, lm.name), unit=unit)  # fmt: skip
            comp = res["comparisons"][lm.name]
            pair = comp[primary][PRIMARY_MEASURE]
            ft = {int(s): v for s, v in pair["ft_values"].items()}
            lo = {int(s): v for s, v in pair["method_values"].items()}
            indist = not_moved_text(comp["reference_moved"])
            v = vd.h1b(ft, lo, hyp.h1b_min_reduction_pct, gates=ft_gates + lo_gates, indistinguishable=indist)
            entries = comp["layers_in_mean"][primary]
            notes = [f"over the {len(entries)} entries both methods can change ({', '.join(entries)})"]
            left = (comp.get("layers_excluded") or {}).get(primary) or {}
            if left:
                layers = comp["layers"]
                notes.append("left out: " + "; ".join(
                    f"{label} ({why}; drift {full.name} {layers[label]['ft_mean']:.4f}, {lm.name} {layers[label]['method_mean']:.4f})"
                    for label, why in left.items()))  # fmt: skip
            whole = comp.get("whole_model")
            if whole:
                notes.append(f"whole-model mean (every entry, labelled as such): {full.name} {whole['ft_mean']:.4f}, "
                             f"{lm.name} {whole['method_mean']:.4f}, reduction {whole['reduction_pct']:.1f}%")  # fmt: skip
            notes += [_moved_note(full.name, comp["reference_moved"]), _moved_note(lm.name, comp["method_moved"])]
            ci = comp.get("reduction_ci")
            if ci:
                notes.append(f"for these trained models, 95% CI over examples of the reduction of the means "
                             f"[{ci['lo']:.1f}, {ci['hi']:.1f}] (not a seed-level interval)")  # fmt: skip
            layer_v = [f"{label}: {lv['verdict']}" + (" (frozen by construction)" if lv.get("frozen_by_construction") else "")
                       for label, lv in comp["layers"].items()]  # fmt: skip
            notes.append("per layer " + ", ".join(layer_v))
            v["evidence"] += "; " + "; ".join(notes)
            h1b[key] = v
    who = compared_words(study)
    ref = reference_pair(study)
    out = {}
    for name, parts, text in (
        ("H1a", h1a, f"H1a: {who} task metric within {hyp.h1a_max_gap_pp:g} {_units_words(study, task_facts)} of full "
                     "fine-tuning"),
        ("H1b", h1b, f"H1b: {who} representation drift at least {hyp.h1b_min_reduction_pct:g}% below full "
                     f"fine-tuning ({PRIMARY_MEASURE} CKA, {primary} pooling, mean over the entries both methods can change)"),
    ):  # fmt: skip
        by_method = {m.name: vd.combine({k: v for k, v in parts.items() if owner[k] == m.name}) for m in loras}
        verdict = by_method[ref.name] if ref is not None and full is not None else vd.combine(parts)
        out[name] = {"hypothesis": text, "verdict": verdict, "by": parts,
                     "rule": vd.RULES[name] + "; over tasks: " + vd.RULES["overall"] + "; over pairs: " + vd.RULES["pairs"],
                     "counts": vd.counts(by_method),
                     "reference_pair": {"reference": full.name, "method": ref.name, "verdict": verdict}
                     if ref is not None and full is not None else None}  # fmt: skip
        if len(loras) > 1:
            out[name]["by_method"] = {m.name: {"verdict": by_method[m.name],
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
