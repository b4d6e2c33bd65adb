"""The drift bundle's weights.csv: which modules each cell's weight update is analysed on (`update_plan`), and one row
per (module, cell) with the spectral summary of the update (`update_rows`).

A cell's update comes in one of three forms, each read by the method's kind (`MethodKind.weight_update`): "lora"
({weight name: (B, A, scale)}: the rank measures from the r x r core, `lora.lora_module_summary`), "dense" (the
fine-tuned weight of exactly the modules it lists: DoRA, IA3, top_layers; `lora.DenseUpdates`) or "full" (the cell's
weights; `weights.module_summary` of W_ft - W0). Here because it uses both `weights` and `lora` (which builds on
`weights`), so neither imports the other back.
"""

from __future__ import annotations

import numpy as np

from lorascope.analysis.lora import lora_module_summary
from lorascope.analysis.weights import (
    BLOCK_LISTS,
    ENCODER_LINEARS,
    FUSED_LINEARS,
    GPT2_LINEARS,
    LINEAR_NAMES,
    left_singular_basis,
    module_parts,
    module_summary,
)

WEIGHT_COLUMNS = ["task", "method", "seed", "cell", "block", "module", "name", "rows", "cols", "source", "delta_fro",
                  "delta_rel", "delta_spec", "stable_rank", "effective_rank", "r90", "n_intruders", "k", "eps",
                  "intruder_max_cos"]  # fmt: skip


def _targeted(short: str, targets: set[str]) -> bool:
    """PEFT's rule for a target_modules entry, on the path inside a block: equal, or ending in '.<entry>'."""
    return any(short == t or short.endswith("." + t) for t in targets)


def update_plan(base, updates: dict, targets: set[str], extra_max_elements: int) -> tuple[list[str], dict[str, list[str]], bool]:
    """(every module analysed, per cell the modules analysed for it, whether full cells got the extra linears).

    `base`: the base weights (`names()`, `shape(name)`); `updates`: {cell: ("lora", {weight name: (B, A, scale)}),
    ("dense", the fine-tuned weights of exactly the modules it lists: DoRA, IA3, top_layers; `lora.DenseUpdates`) or
    ("full", the cell's weights)}. LoRA cells: the modules their adapter adapts. Full cells: the LoRA target modules
    (`targets`), and every other decoder linear when their total size over all full cells is at most
    `extra_max_elements`."""
    linears = [n for n in base.names() if n.endswith(".weight") and module_parts(n)[0] is not None
               and module_parts(n)[1] in (*LINEAR_NAMES, *FUSED_LINEARS, *ENCODER_LINEARS, *GPT2_LINEARS)]  # fmt: skip
    adapted = [n for n in linears if _targeted(module_parts(n)[1], targets)]
    extra = [n for n in linears if n not in adapted]
    n_full = sum(form == "full" for form, _ in updates.values())
    with_extra = bool(extra) and n_full * sum(int(np.prod(base.shape(n))) for n in extra) <= extra_max_elements
    per_cell = {c: sorted(u) if form in ("lora", "dense") else adapted + (extra if with_extra else [])
                for c, (form, u) in updates.items()}  # fmt: skip
    modules = [n for n in linears if any(n in v for v in per_cell.values())]
    return modules, per_cell, with_extra


def update_rows(base, cells: dict, updates: dict, targets: set[str], k: int, eps: float, extra_max_elements: int,
                progress=lambda it, n: it) -> tuple[list[dict], bool]:  # fmt: skip
    """weights.csv rows, module-major: W0 and its left singular basis once per module, then every cell's update
    (`lora.lora_module_summary` from the factors for LoRA cells, `module_summary` of W_ft - W0 for full cells).
    `cells`: {cell name: cell (task, method, seed)}; `updates` as in `update_plan`."""
    modules, per_cell, with_extra = update_plan(base, updates, targets, extra_max_elements)
    rows: list[dict] = []
    for module in progress(modules, len(modules)):
        W0 = base.get(module)
        basis = left_singular_basis(W0)
        block, short = module_parts(module)
        for cname, cell in cells.items():
            if module not in per_cell[cname]:
                continue
            form, u = updates[cname]
            if form == "lora":
                B, A, scale = u[module]
                s = lora_module_summary(module, W0, B, A, scale, k, eps, basis)
            else:
                s = module_summary(module, W0, u.get(module), k, eps, base_basis=basis)
            rows.append({"task": cell.task, "method": cell.method, "seed": cell.seed, "cell": cname, "block": block,
                         "module": short, "name": module, "rows": s["shape"][0], "cols": s["shape"][1],
                         "source": {"lora": "lora_factors", "dense": getattr(u, "source", "dense")}.get(form, "full_delta"),
                         **{key: s[key] for key in ("delta_fro", "delta_rel", "delta_spec", "stable_rank", "effective_rank",
                                                    "r90", "n_intruders", "k", "eps")},
                         "intruder_max_cos": ";".join(repr(float(c)) for c in s["intruder_max_cos"])})  # fmt: skip
    return rows, with_extra


# ------------------------------------------------------------------------------------------------ backbone names
def backbone_prefix(names) -> str | None:
    """The path above the block list of the first name that has one: 'model' for 'model.layers.0.mlp.up_proj.weight',
    'roberta.encoder' for RoBERTa, 'transformer' for GPT-2 and for Llama's QA class (LlamaForQuestionAnswering keeps
    its backbone under `transformer.*` where the causal-LM checkpoint has `model.*`)."""
    for n in names:
        parts = n.split(".")
        for i, p in enumerate(parts[:-1]):
            if p in BLOCK_LISTS and parts[i + 1].isdigit():
                return ".".join(parts[:i])
    return None


def _rename(name: str, old: str, new: str) -> str:
    return new + name[len(old) :] if name == old or name.startswith(old + ".") else name


class BackboneAliased:
    """The base weights answering a cell's backbone names too (`transformer.layers.0...` read as `model.layers.0...`):
    what a method kind reads W0 through when it builds a cell's update (DoRA, IA3)."""

    def __init__(self, base) -> None:
        self.base, self.prefix = base, backbone_prefix(base.names())

    def _name(self, name: str) -> str:
        own = backbone_prefix([name])
        return _rename(name, own, self.prefix) if own is not None and self.prefix is not None else name

    def names(self) -> list[str]:
        return self.base.names()

    def shape(self, name: str) -> tuple[int, ...]:
        return self.base.shape(self._name(name))

    def get(self, name: str) -> np.ndarray:
        return self.base.get(self._name(name))


class _Renamed:
    """A "full" or "dense" update whose names are the base's (`in_base_names`)."""

    def __init__(self, u, old: str, new: str) -> None:
        self.u, self.old, self.new = u, old, new
        self.source = getattr(u, "source", None)

    def __iter__(self):
        return iter(_rename(n, self.old, self.new) for n in self.u)

    def names(self) -> list[str]:
        return sorted(_rename(n, self.old, self.new) for n in self.u.names())

    def shape(self, name: str) -> tuple[int, ...]:
        return self.u.shape(_rename(name, self.new, self.old))

    def get(self, name: str) -> np.ndarray:
        return self.u.get(_rename(name, self.new, self.old))


def in_base_names(form: str, u, base_names) -> tuple[str, object]:
    """A cell's update (`MethodKind.weight_update`: form, update) named as the base weights are: a model class whose
    backbone sits under another path than the base checkpoint's (Llama's QA head: `transformer.*` vs `model.*`) has
    its names moved to the base's path; otherwise the update unchanged."""
    names = list(u) if form in ("lora", "dense") else u.names()
    own, base = backbone_prefix(names), backbone_prefix(base_names)
    if own is None or base is None or own == base:
        return form, u
    if form == "lora":
        return form, {_rename(n, own, base): v for n, v in u.items()}
    return form, _Renamed(u, own, base)
