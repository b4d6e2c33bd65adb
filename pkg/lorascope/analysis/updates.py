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
