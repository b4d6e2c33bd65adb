"""Which hidden-state entries enter a mean over layers, like with like.

`layers_in_mean`: the entries where every cell's CKA is defined, minus those some compared method cannot change by
construction (the embedding output, for LoRA on projections of the blocks, IA3, prefix tuning, top-k layers, BitFit on
a decoder: its drift is exactly 0 there and full fine-tuning's is not, which would favour that method in every mean).
The same entries for every method, seed and measure of a task. The block outputs a top_layers method leaves frozen
(drift 0 by construction) stay in the means: that is what the method does; per-layer tables mark them
(`frozen_entries`). What a method leaves fixed is declared once, on its kind (`MethodKind.fixed_by_construction`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from lorascope.analysis import similarity
from lorascope.analysis.study_layout import method_roles, targets_of
from lorascope.methods import kind_of

EMBEDDINGS = "embeddings"  # the label of hidden_states[0] (phases/extract.layer_labels)


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
                groups.setdefault(f"{m.kind}" + (f" on {', '.join(targets_of(m))}" if targets_of(m) else ""), []).append(m.name)
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
        if not all(math.isfinite(r[m.column]) for m in similarity.cka_measures()):
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
