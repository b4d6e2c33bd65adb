"""Which hidden-state entries enter a mean over layers, like with like: one rule for every method kind.

An entry a method cannot change by construction (its kind's `MethodKind.fixed_by_construction`: the embedding output
for LoRA on projections of the blocks, IA3, prefix tuning, top-k layers and BitFit on a decoder; the outputs of the
blocks a top-k-layers method leaves frozen) has drift exactly 0 for that method whatever it learned. Averaged in, it
pulls that method's mean towards 0 and "reduces" its drift against any method that can change it: on TinyLlama, a
top_layers k=1 method would be at least 95% "below" full fine-tuning from 21 zeros of 22 entries. So:

* a comparison of two methods (a pair) averages only the entries BOTH can change (`pair_layers`);
* a table over every method (the results table, the Pareto front) averages only the entries EVERY method of the
  study can change (`layers_in_mean`);
* the entries left out are listed with the reason (`fixed_entries`, `unchangeable_entries`) and their drift is shown
  apart (the per-layer tables);
* the whole-model mean, over every entry where CKA is defined, is reported too, labelled as such
  (`defined_layers`): "frozen blocks do not move" is a true property a reader may want.

What a method leaves fixed is declared once, on its kind; this module only reads it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

from lorascope.analysis import similarity
from lorascope.analysis.study_layout import targets_of
from lorascope.methods import kind_of

EMBEDDINGS = "embeddings"  # the label of hidden_states[0] (phases/extract.layer_labels)
UNDEFINED = "CKA undefined (a constant representation)"


def _fixed(m: Any, labels: list[str], encoder: bool | None):
    """What method `m` leaves at the base's by construction on a model with these hidden-state labels (entries 1..n
    are the outputs of the n blocks): its kind's `fixed_by_construction`."""
    return kind_of(m).fixed_by_construction(m, len(labels) - 1, encoder)


def _describe(m: Any) -> str:
    """`lora (lora on q_proj, v_proj)`, `top1 (top_layers)`: a method and what it adapts, for the reasons."""
    return f"{m.kind}" + (f" on {', '.join(targets_of(m))}" if targets_of(m) else "")


def fixed_entries(study: Any, labels: list[str], encoder: bool | None = None) -> dict[str, dict[int, str]]:
    """{method: {hidden-state index: why}} for every method of the study: the entries it cannot change by
    construction (its kind's `fixed_by_construction`): the embedding output (entry 0, when labelled so) and the
    outputs of its frozen blocks (entry block + 1). With the architecture unknown (`encoder` None) BitFit is assumed to
    change the embedding output: nothing is left out without a reason. A method that can change everything is absent."""
    out: dict[str, dict[int, str]] = {}
    for m in study.methods:
        fixed = _fixed(m, labels, encoder)
        entries: dict[int, str] = {}
        if fixed.embedding_output and labels and labels[0] == EMBEDDINGS:
            entries[0] = f"{m.name} ({_describe(m)}) cannot change the embedding output: it is the base model's by construction"
        for block in fixed.frozen_blocks or ():
            if 0 < block + 1 < len(labels):
                entries[block + 1] = f"{m.name}: {fixed.why_frozen}"
        if entries:
            out[m.name] = entries
    return out


def unchangeable_entries(study: Any, labels: list[str], encoder: bool | None = None) -> dict[int, str]:
    """{hidden-state index: why} for the entries some method of the study cannot change by construction: left out of
    the means over every method (the results table, the Pareto front). Methods of one kind on the same targets share
    one description ("lora, lora-r4 (lora on q_proj, v_proj); top1 (top_layers) cannot change the embedding output:
    ...")."""
    out: dict[int, str] = {}
    fixed = fixed_entries(study, labels, encoder)
    if any(0 in v for v in fixed.values()):
        groups: dict[str, list[str]] = {}
        for m in study.methods:
            if 0 in fixed.get(m.name, {}):
                groups.setdefault(_describe(m), []).append(m.name)
        what = "; ".join(f"{', '.join(names)} ({desc})" for desc, names in groups.items())
        out[0] = f"{what} cannot change the embedding output: it is the base model's by construction (drift exactly 0)"
    for index in sorted({i for v in fixed.values() for i in v if i != 0}):
        out[index] = "; ".join(v[index] for v in fixed.values() if index in v) + " (drift exactly 0)"
    return out


def frozen_entries(study: Any, labels: list[str]) -> dict[str, dict[int, str]]:
    """{method: {hidden-state index: why}} for the block outputs a method leaves frozen (its kind's
    `fixed_by_construction`: a top_layers method with n blocks, n = len(labels) - 1, and the last k trained leaves
    entries 1..n-k at the base's, drift 0); the per-layer tables mark them."""
    out: dict[str, dict[int, str]] = {}
    for m in study.methods:
        fixed = _fixed(m, labels, None)
        if fixed.frozen_blocks is not None:
            out[m.name] = {block + 1: fixed.why_frozen for block in fixed.frozen_blocks}
    return out


def defined_layers(rows: Iterable[dict]) -> dict[tuple[str, str], list[int]]:
    """(task, pooling) -> the layer indexes where every cell's linear and debiased CKA vs the base is defined: the
    entries of the whole-model mean."""
    bad: dict[tuple[str, str], set[int]] = {}
    seen: dict[tuple[str, str], set[int]] = {}
    for r in rows:
        key = (r["task"], r["pooling"])
        seen.setdefault(key, set()).add(int(r["layer_index"]))
        if not all(math.isfinite(r[m.column]) for m in similarity.cka_measures()):
            bad.setdefault(key, set()).add(int(r["layer_index"]))
    return {k: sorted(v - bad.get(k, set())) for k, v in seen.items()}


def _select(defined: Mapping[tuple[str, str], list[int]], fixed: Mapping[int, str],
            labels: list[str]) -> tuple[dict, dict]:  # fmt: skip
    used, why = {}, {}
    for key, layers in defined.items():
        used[key] = [li for li in layers if li not in fixed]
        why[key] = {labels[li]: fixed[li] if li in layers else UNDEFINED for li in range(len(labels)) if li not in used[key]}
    return used, why


def layers_in_mean(rows: list[dict], study: Any, labels: list[str], encoder: bool | None = None) -> tuple[dict, dict]:
    """((task, pooling) -> layer indexes entering the means over every method, (task, pooling) -> {label: why left
    out}): the defined entries that every method of the study can change."""
    return _select(defined_layers(rows), unchangeable_entries(study, labels, encoder), labels)


def pair_layers(defined: Mapping[tuple[str, str], list[int]], fixed: Mapping[str, Mapping[int, str]],
                methods: Sequence[str], labels: list[str]) -> tuple[dict, dict]:  # fmt: skip
    """For a comparison of `methods` (a pair): ((task, pooling) -> the defined entries every one of them can change,
    (task, pooling) -> {label: why left out}). `fixed`: `fixed_entries`."""
    why: dict[int, str] = {}
    for m in methods:
        for index, reason in (fixed.get(m) or {}).items():
            why[index] = f"{why[index]}; {reason}" if index in why else reason
    return _select(defined, why, labels)


def seed_means(rows: Iterable[dict], key: str, layers: Mapping[tuple[str, str], list[int]]) -> dict[tuple, float]:
    """(task, pooling, method, seed) -> mean of rows[key] over the layers in `layers` (nan when there are none)."""
    acc: dict[tuple, list[float]] = {}
    for r in rows:
        k = (r["task"], r["pooling"], r["method"], int(r["seed"]))
        acc.setdefault(k, [])
        if int(r["layer_index"]) in layers[(r["task"], r["pooling"])]:
            acc[k].append(float(r[key]))
    return {k: float(np.mean(v)) if v else float("nan") for k, v in acc.items()}
