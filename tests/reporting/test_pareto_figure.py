"""The Pareto figure for 2 methods (today's studies) and for 10 (a rank sweep), with and without forgetting: one
marker per method at its seed mean, the sweep joined in rank order, the front drawn through its members, published
numbers of the same metric as reference lines, and the markdown lists the front."""

from __future__ import annotations

from types import SimpleNamespace as NS

import matplotlib.pyplot as plt
import numpy as np
import pytest

from lorascope.analysis import pareto
from lorascope.reporting import figures, markdown
from tests.fixtures.summaries import methods_summary

PNG = b"\x89PNG\r\n\x1a\n"


def _numbers(n_methods: int, forgetting: bool = False, published=None) -> dict:
    s = methods_summary(n_methods, forgetting)
    methods = [NS(name="full", kind="full"), *[NS(name=f"lora-r{2**i}", kind="lora", r=2**i, alpha=16, target_modules=["q", "v"])
                                               for i in range(n_methods - 1)]]  # fmt: skip
    s["pareto"] = pareto.pareto_section(s, methods)
    s["published"] = published
    return s


@pytest.mark.parametrize("n_methods", [2, 10])
def test_one_marker_per_method_sweep_line_and_front(n_methods, tmp_path):
    n = _numbers(n_methods)
    fig = figures.draw_pareto(n)
    axes = [ax for ax in fig.axes if ax.get_visible() and ax.axison]
    assert len(axes) == 2  # one panel per task, no forgetting row
    for ax, task in zip(axes, n["tasks"], strict=True):
        part = n["pareto"]["drift"][task]
        marks = {t.get_text(): t.xy for t in ax.texts}  # every marker carries its method's name
        assert set(marks) == set(part["points"])
        for m, xy in marks.items():
            assert xy == pytest.approx((part["points"][m]["x"], part["points"][m]["metric"]))
        lines = {ln.get_label(): ln for ln in ax.get_lines()}
        front = lines["Pareto front"]
        assert list(front.get_xdata()) == pytest.approx([part["points"][m]["x"] for m in part["front"]])
        sweep = [sw for sw in n["pareto"]["sweeps"]]
        if n_methods > 2:
            line = lines[sweep[0]["label"]]
            assert list(line.get_xdata()) == pytest.approx([part["points"][m]["x"] for m in sweep[0]["methods"]])
            assert len(sweep[0]["methods"]) == n_methods - 1
        else:
            assert sweep == []  # one LoRA method: no sweep line
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend[: n_methods] == list(n["results"]["mrpc"]["methods"])  # one entry per method, study order
    assert "Pareto front" in legend
    plt.close(fig)
    out = figures.pareto(n, tmp_path / "p.png")
    data = out.read_bytes()
    assert data.startswith(PNG) and len(data) > 10_000


def test_forgetting_row_and_published_line():
    pub = {"source": "paper", "tasks": {"rte": {"metric": "accuracy", "selection_metric": "accuracy",
                                                "methods": {"full": {"value": 0.787, "same_metric": True}}},
                                        "mrpc": {"metric": "accuracy", "selection_metric": "f1",
                                                 "methods": {"full": {"value": 0.902, "same_metric": False}}}}}  # fmt: skip
    n = _numbers(3, forgetting=True, published=pub)
    fig = figures.draw_pareto(n)
    axes = [ax for ax in fig.axes if ax.axison]
    assert len(axes) == 4  # drift row and forgetting row, one column per task
    assert axes[2].get_title() == "mrpc: f1 vs forgetting"
    assert "forgetting" in axes[2].get_xlabel()
    ref = {ax.get_title(): [ln for ln in ax.get_lines() if ln.get_label() == "published full"] for ax in axes}
    assert [float(np.asarray(ln.get_ydata())[0]) for ln in ref["rte: accuracy vs drift"]] == pytest.approx([0.787])
    assert ref["mrpc: f1 vs drift"] == []  # published MRPC accuracy is not drawn on an F1 axis
    plt.close(fig)


def test_markdown_lists_the_front_and_the_sweeps():
    n = _numbers(4, forgetting=True)
    md = "\n".join(markdown.pareto_lines(n))
    for axis in ("drift", "forgetting"):
        for task in ("mrpc", "rte"):
            front = n["pareto"][axis][task]["front"]
            assert f"| {axis} | {task} | {', '.join(front)} |" in md
    assert "lora r sweep (target_modules=q+v): lora-r1, lora-r2, lora-r4" in md
    assert "no forgetting front" not in md
    assert "no forgetting front" in "\n".join(markdown.pareto_lines(_numbers(2)))


def test_forgetting_table_prints_the_summary_values():
    from tests.fixtures.report_numbers import unmatched_numbers

    n = _numbers(3, forgetting=True)
    n["settings"]["measures"] = ["linear", "debiased"]
    for task in n["tasks"]:
        for m, e in n["results"][task]["methods"].items():
            vals = e["drift"]["mean"]["debiased"]["values"]
            e["drift"]["mean"]["debiased"].update(mean=float(np.mean(list(vals.values()))), sd=0.0141)
            fg = n["forgetting"][task][m]
            fg.update(mean=float(np.mean(list(fg["values"].values()))), lo=0.001, hi=0.5, base_loss=3.638)
    n["forgetting"].update(unit="nats per token", interval="two-sided 95% t-interval over seeds",
                           drift_correlation={"all": {"n": 12, "spearman_rho": 0.913, "pearson_r": 0.871, "note": "cells, not seeds"},
                                              "by_task": {"rte": {"n": 2, "spearman_rho": None, "why_none": "2 cells"}}})  # fmt: skip
    md = "\n".join(markdown.forgetting_table(n))
    assert unmatched_numbers(md, n) == []
    assert "| rte | full | 0.3100 | [0.0010, 0.5000] | 3.6380 |" in md
    assert "- drift vs forgetting, all cells: Spearman rho 0.913, Pearson r 0.871 over 12 cells" in md
    assert "- drift vs forgetting, rte: no correlation (2 cells)" in md
    assert "decoder models only" in "\n".join(markdown.forgetting_table(_numbers(2)))
