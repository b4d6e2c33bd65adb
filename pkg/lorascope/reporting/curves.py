"""Training curves in the report: each cell's history.json (lorascope.history, written by the train phase), drawn per
task and method with the seeds overlaid. One figure per task: a row per method; left, the training loss (solid) and
the dev loss (dashed) against the optimizer step; right, the task's selection metric on dev against the step, with
the best step (the committed model) marked. Cells committed before lorascope kept the history (no history.json)
are listed as missing instead of drawn; a run without any history gets no figure and the report says so.

Draws the histories the report phase read from the cell bundles (`phases.report.cell_histories`); computes no
statistic (the curves are the logged values as they are).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.lines import Line2D  # noqa: E402

DPI = 120  # as reporting/figures.py
SEED_COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
CAPTION = "Training curves per method, seeds overlaid (loss: training solid, dev dashed; dev metric, ★ = best step)"


def availability(study: Any, found: Mapping[str, dict], missing: Mapping[str, str]) -> dict[str, Any]:
    """What the report says about the curves (kept in the report's numbers)."""
    return {
        "cells": len(study.cells()),
        "cells_with_history": len(found),
        "missing": dict(missing),
    }


def _series(rows: list[dict], key: str) -> tuple[list[int], list[float]]:
    pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
    return [p[0] for p in pts], [float(p[1]) for p in pts]


def task_figure(study: Any, task: str, found: Mapping[str, dict], path: Path) -> Path | None:
    """One task's figure (a row per method with any history); None when no cell of the task has a history."""
    methods = [m.name for m in study.methods]
    cells = {m: [c for c in study.cells() if c.task == task and c.method == m and c.name in found] for m in methods}
    rows = [m for m in methods if cells[m]]
    if not rows:
        return None
    metric = study.task(task).selection_metric
    seeds = list(study.seeds)
    fig, axes = plt.subplots(len(rows), 2, figsize=(10, 3.0 * len(rows) + 0.6), squeeze=False, sharey="col")
    for r, method in enumerate(rows):
        ax_loss, ax_metric = axes[r]
        for cell in cells[method]:
            h = found[cell.name]
            color = SEED_COLORS[seeds.index(cell.seed) % len(SEED_COLORS)]
            x, y = _series(h["train"], "loss")
            ax_loss.plot(x, y, color=color, lw=1.6, marker="o", ms=2.5, label=f"seed {cell.seed}")
            x, y = _series(h["eval"], "loss")
            ax_loss.plot(x, y, color=color, lw=1.2, ls="--")
            x, y = _series(h["eval"], metric)
            ax_metric.plot(x, y, color=color, lw=1.6, marker="o", ms=2.5, label=f"seed {cell.seed}")
            best = [(s, v) for s, v in zip(x, y, strict=True) if s == h.get("best_step")]
            if best:
                ax_metric.plot([best[0][0]], [best[0][1]], marker="*", ms=13, color=color, mec="black", mew=0.6,
                               ls="none")  # fmt: skip
            if h.get("resumed_from_step"):
                for ax in (ax_loss, ax_metric):
                    ax.axvline(h["resumed_from_step"], color=color, lw=0.8, ls=":", alpha=0.8)
        all_seeds = [c for c in study.cells() if c.task == task and c.method == method]
        partial = f" ({len(cells[method])} of {len(all_seeds)} seeds)" if len(cells[method]) < len(all_seeds) else ""
        ax_loss.set_title(f"{task} / {method}: loss{partial}", fontsize=11)
        ax_metric.set_title(f"{task} / {method}: dev {metric}{partial}", fontsize=11)
        ax_loss.set_ylabel("cross-entropy", fontsize=10)
        ax_metric.set_ylabel(f"dev {metric}", fontsize=10)
        for ax in (ax_loss, ax_metric):
            ax.set_xlabel("optimizer step", fontsize=10)
            ax.tick_params(labelsize=9)
            ax.grid(alpha=0.3)
            ax.margins(y=0.12)
            ax.set_xlim(left=0)
    # one key for the whole figure, below the panels (a legend inside a panel covers curves)
    drawn = sorted({c.seed for m in rows for c in cells[m]}, key=seeds.index)
    key = [Line2D([], [], color=SEED_COLORS[seeds.index(seed) % len(SEED_COLORS)], lw=1.6, marker="o", ms=2.5,
                  label=f"seed {seed}") for seed in drawn]  # fmt: skip
    key += [Line2D([], [], color="0.3", lw=1.6, label="training loss"),
            Line2D([], [], color="0.3", lw=1.2, ls="--", label="dev loss"),
            Line2D([], [], color="0.3", marker="*", ms=11, mec="black", mew=0.6, ls="none", label="best step (committed)")]  # fmt: skip
    if any(found[c.name].get("resumed_from_step") for m in rows for c in cells[m]):
        key.append(Line2D([], [], color="0.3", lw=0.8, ls=":", label="resumed from a checkpoint"))
    fig.suptitle(f"{task}: training curves (seeds overlaid)", fontsize=12)
    fig.tight_layout()
    fig.legend(handles=key, fontsize=9, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=min(len(key), 4),
               frameon=False)  # fmt: skip
    return _save(fig, path)


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, bbox_inches="tight", metadata={"Software": None})
    plt.close(fig)
    return path


def figures(study: Any, found: Mapping[str, dict], folder: Path) -> list[tuple[str, str]]:
    """The curves' PNGs under folder/figures, as (caption, relative path) in task order."""
    out = []
    for task in [t.name for t in study.tasks]:
        rel = f"figures/training_curves_{task}.png"
        if task_figure(study, task, found, folder / rel) is not None:
            out.append((f"{CAPTION}: {task}", rel))
    return out
