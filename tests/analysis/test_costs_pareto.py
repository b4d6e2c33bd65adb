"""The cost table from synthetic metrics.json (fields missing in older bundles -> None, never a crash), the Pareto
front on hand-made points (ties, dominated, non-finite), sweeps from method fields, and the published reference
numbers compared like with like."""

from __future__ import annotations

import math
from types import SimpleNamespace as NS

import pytest

from lorascope.analysis import costs, pareto
from lorascope.analysis import summary as sm
from tests.fixtures.summaries import methods_summary

MIB = 1024**2


def _study(methods, tasks=("mrpc", "rte"), seeds=(1, 2)):
    cells = [NS(task=t, method=m.name, seed=s, name=f"{t}-{m.name}-s{s}") for t in tasks for m in methods for s in seeds]
    return NS(methods=methods, cells=lambda: cells)


def test_cost_table_means_ranges_and_missing_fields():
    full, lora = NS(name="full", kind="full"), NS(name="lora", kind="lora")
    st = _study([full, lora])
    metrics = {}
    for c in st.cells():
        if c.method == "full":
            metrics[c.name] = {"trainable_params": 1000, "total_params": 1000, "trainable_bytes": 4000,
                               "artifact_bytes": 2 * MIB, "tokens_per_second": 100.0 if c.task == "mrpc" else 200.0,
                               "peak_memory_bytes": 512 * MIB, "peak_memory_kind": "process_peak_rss", "train_seconds": 10}  # fmt: skip
        else:  # an older bundle: no artifact_bytes / trainable_bytes; one cell with no numbers at all
            metrics[c.name] = {} if c.name == "rte-lora-s2" else {"trainable_params": 10, "total_params": 1000,
                                                                   "tokens_per_second": 300.0, "peak_memory_kind": "cuda_max_memory_allocated"}  # fmt: skip
    t = costs.cost_table(st, metrics)["methods"]
    f = t["full"]
    assert f["cells"] == 4 and f["all"]["trainable_params"] == {"mean": 1000.0, "min": 1000.0, "max": 1000.0, "n": 4}
    assert f["all"]["trainable_pct"]["mean"] == 100.0 and f["all"]["artifact_mib"]["mean"] == 2.0
    assert f["all"]["peak_memory_mib"]["mean"] == 512.0 and f["all"]["trainable_mib"]["mean"] == pytest.approx(4000 / MIB)
    assert f["all"]["tokens_per_second"] == {"mean": 150.0, "min": 100.0, "max": 200.0, "n": 4}
    assert f["varies_by_task"] == ["tokens_per_second"] and f["by_task"]["rte"]["tokens_per_second"]["mean"] == 200.0
    lo = t["lora"]
    assert lo["all"]["artifact_mib"] == {"mean": None, "min": None, "max": None, "n": 0}
    assert lo["all"]["trainable_params"]["n"] == 3 and lo["all"]["trainable_pct"]["mean"] == pytest.approx(1.0)
    assert lo["peak_memory_kind"] == ["cuda_max_memory_allocated"]
    assert lo["by_task"]["rte"]["tokens_per_second"]["n"] == 1
    assert costs.cell_costs({"trainable_params": True, "total_params": float("nan")})["trainable_params"] is None


def test_pareto_front_on_hand_made_points():
    pts = {"a": (0.1, 0.80), "b": (0.2, 0.85), "c": (0.3, 0.84),  # c: dominated by b
           "d": (0.2, 0.85),  # a tie with b: neither dominates the other, both on the front
           "e": (0.5, 0.90), "f": (0.1, 0.79),  # f: same x as a, lower metric -> dominated
           "g": (float("nan"), 0.99), "h": (0.05, None)}  # non-finite: on no front
    assert pareto.pareto_front(pts) == ["a", "b", "d", "e"]
    assert pareto.pareto_front({"x": (0.3, 0.5)}) == ["x"]
    assert pareto.pareto_front({}) == []
    assert pareto.pareto_front({"lo": (0.0, 0.9), "hi": (0.5, 0.9)}) == ["lo"]  # same metric, more drift: dominated


def test_sweeps_group_methods_that_differ_only_in_size():
    def lora(name, r, targets, **kw):
        return NS(name=name, kind="lora", r=r, alpha=2 * r, dropout=0.05, target_modules=targets, use_dora=False, **kw)

    methods = [NS(name="full", kind="full"), lora("lora-r16-qv", 16, ["q", "v"]), lora("lora-r4-qv", 4, ["q", "v"]),
               lora("lora-r8-qv", 8, ["q", "v"]), lora("lora-r8-all", 8, ["all-linear"]), lora("lora-r4-all", 4, ["all-linear"]),
               lora("dora-r8", 8, ["q", "v"], use_rslora=True),  # another variant: not in the q/v sweep
               NS(name="top1", kind="top_layers", k=1), NS(name="top2", kind="top_layers", k=2), NS(name="ia3", kind="ia3")]  # fmt: skip
    sw = pareto.sweeps(methods)
    assert [s["methods"] for s in sw] == [["lora-r4-qv", "lora-r8-qv", "lora-r16-qv"], ["lora-r4-all", "lora-r8-all"],
                                          ["top1", "top2"]]  # fmt: skip
    assert sw[0]["label"] == "lora r sweep (target_modules=q+v)" and sw[2]["knob"] == "k"


def test_pareto_section_points_are_seed_means_with_ranges():
    s = methods_summary(4, forgetting=True)
    methods = [NS(name="full", kind="full"), *[NS(name=f"lora-r{2**i}", kind="lora", r=2**i, alpha=8, target_modules=["q"])
                                               for i in range(3)]]  # fmt: skip
    sec = pareto.pareto_section(s, methods)
    p = sec["drift"]["rte"]["points"]["full"]
    assert p["metric"] == pytest.approx(0.895) and p["metric_min"] == pytest.approx(0.89) and p["metric_max"] == pytest.approx(0.90)
    assert p["x"] == pytest.approx(0.61) and p["x_min"] == 0.6 and p["x_max"] == pytest.approx(0.62)
    assert sec["drift"]["rte"]["front"][-1] == "full"  # the most accurate is on the front
    assert set(sec["forgetting"]) == {"mrpc", "rte"}  # "texts" is provenance, not a task
    assert sec["forgetting"]["rte"]["points"]["lora-r1"]["x"] == pytest.approx(0.01)
    assert sec["sweeps"][0]["methods"] == ["lora-r1", "lora-r2", "lora-r4"]
    assert pareto.pareto_section(methods_summary(2), methods[:2])["forgetting"] is None


def test_a_method_whose_cells_did_not_learn_is_never_on_the_front():
    """Before: on the demo's rte, LoRA (no cell learned: 52.2% against a 50% baseline) sat on both fronts because a
    model that did not move has low drift and low forgetting. Now it is drawn but never on the front; a learned
    method off the front whose seed ranges overlap a front member's is "tied" with it."""
    s = methods_summary(3, forgetting=True)
    rte = s["results"]["rte"]["methods"]
    rte["lora-r1"]["learned"] = False  # the lowest drift and forgetting of all: on both fronts before
    methods = [NS(name="full", kind="full"), NS(name="lora-r1", kind="lora", r=1), NS(name="lora-r2", kind="lora", r=2)]
    sec = pareto.pareto_section(s, methods)
    for axis in ("drift", "forgetting"):
        part = sec[axis]["rte"]
        assert "lora-r1" not in part["front"] and part["not_learned"] == ["lora-r1"], axis
        assert part["points"]["lora-r1"]["learned"] is False and part["points"]["full"]["learned"] is True
        assert "lora-r1" in sec[axis]["mrpc"]["front"]  # the same method learned mrpc: on that front
    assert sec["drift"]["rte"]["front"] == ["lora-r2", "full"]
    assert pareto.pareto_front({m: (p["x"], p["metric"]) for m, p in sec["drift"]["rte"]["points"].items()})[0] == "lora-r1"
    assert "learned their task" in sec["rule"] and "tied" in sec["rule"]
    # tied: off the front by means, but its seed ranges overlap a front member's on both axes
    pts = {"a": {"n": 2, "learned": True, "x": 0.10, "x_min": 0.08, "x_max": 0.12, "metric": 0.85, "metric_min": 0.84, "metric_max": 0.86},
           "b": {"n": 2, "learned": True, "x": 0.11, "x_min": 0.09, "x_max": 0.13, "metric": 0.845, "metric_min": 0.83, "metric_max": 0.855},
           "c": {"n": 2, "learned": True, "x": 0.50, "x_min": 0.49, "x_max": 0.51, "metric": 0.84, "metric_min": 0.83, "metric_max": 0.85}}  # fmt: skip
    got = pareto.front_of(pts)
    assert got["front"] == ["a"] and got["tied"] == {"b": ["a"]} and got["not_learned"] == []  # c: dominated, apart


def test_published_numbers_compare_like_with_like():
    s = methods_summary(2)
    ref = NS(source="Hu et al. 2021, Table 2", values={"mrpc": {"full": 90.2, "lora-r1": 89.7}, "rte": {"full": 78.7}},
             metric_of=lambda t: "accuracy")  # fmt: skip
    pub = sm.published_section(NS(report=NS(reference=ref)), s)
    m = pub["tasks"]["mrpc"]
    assert m["metric"] == "accuracy" and m["selection_metric"] == "f1"
    assert not m["methods"]["full"]["same_metric"]  # our MRPC selection metric is F1: compared with our accuracy
    assert m["methods"]["full"]["ours_pct"] == pytest.approx(100 * s["results"]["mrpc"]["methods"]["full"]["accuracy"]["mean"])
    assert m["methods"]["full"]["diff_pp"] == pytest.approx(m["methods"]["full"]["ours_pct"] - 90.2)
    assert m["methods"]["full"]["value"] == pytest.approx(0.902)
    assert pub["tasks"]["rte"]["methods"]["full"]["same_metric"]
    f1_ref = NS(source="x", values={"rte": {"full": 80.0}}, metric_of=lambda t: "f1")  # F1 on a task we score by accuracy
    v = sm.published_section(NS(report=NS(reference=f1_ref)), s)["tasks"]["rte"]["methods"]["full"]
    assert v["ours_pct"] is None and v["diff_pp"] is None and not math.isnan(v["value_pct"])
    assert sm.published_section(NS(report=NS(reference=None)), s) is None
    assert sm.published_section(NS(), s) is None
