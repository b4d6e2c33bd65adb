"""What the drift summary reads of the study, and the roles it gives the methods: the primary pooling, the reference
(the first method whose kind is the reference: full fine-tuning) and every other method compared with it, a task's
cells, and the modules full fine-tuning's weight rows are compared on (like with like).

`study` is the typed study, duck-typed (tasks, methods with `name` and `kind`, cells, extraction.pooling); what a
method's kind means is asked of its kind (`lorascope.methods.kind_of`). Pure Python.
"""

from __future__ import annotations

from typing import Any

from lorascope.methods import kind_of


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


def targets_of(m: Any) -> list[str]:
    """The module names / roles a method adapts, as its kind reads them (LoRA, IA3: target_modules, plus IA3's
    feedforward_modules)."""
    return kind_of(m).targets(m)


def lora_targets(study: Any) -> set[str]:
    """The short module names (`q_proj`, `query`) full fine-tuning's weight updates are measured on, like with like:
    the targets of the methods whose kind comes first by `MethodKind.weight_targets_priority` (the LoRA methods',
    else the IA3 methods'), else q and v (LoraMethod's defaults). Roles and groups (families.ROLES / GROUPS) map to
    the short name of the role in every known family, `all-linear` to every linear weights.py analyses. Works for
    any mix of kinds."""
    from lorascope.analysis.weights import LINEAR_NAMES
    from lorascope.models import families

    ranked = [(kind_of(m).weight_targets_priority, m) for m in study.methods]
    first = min((rank for rank, _ in ranked if rank is not None), default=None)
    picked = [t for rank, m in ranked if first is not None and rank == first for t in targets_of(m)] or ["q", "v"]
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
