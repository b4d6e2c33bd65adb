"""reporting.markdown: the formatters, and the results table's measure columns read from the measure registry."""

import pytest

from lorascope.analysis import similarity as sim
from lorascope.registry import Registry
from lorascope.reporting import markdown


def _numbers(cosines: dict) -> dict:
    def seeds(mean, sd):
        return {"mean": mean, "sd": sd}

    entry = {
        "metric": seeds(0.8, 0.01), "accuracy": seeds(0.81, 0.02), "learning": {"1": {"learned": True}, "2": {"learned": False}},
        "within_floor": {"mean": {"debiased": True}},
        "drift": {"mean": {"linear": seeds(0.1, 0.01), "debiased": seeds(0.2, 0.02)}},
        "noise_floor": {"mean": {"debiased": {"mean": 0.25}}},
        "cosine": {"mean": cosines},
    }  # fmt: skip
    return {
        "settings": {"primary_pooling": "mean", "primary_measure": "cka_debiased", "measures": ["linear", "debiased"]},
        "tasks": ["t"],
        "results": {"t": {"n_examples": 12, "metric_name": "accuracy", "majority_baseline": 0.5,
                          "layers_in_mean": {"mean": ["layer_0", "layer_1"]}, "methods": {"lora": entry}}},
    }  # fmt: skip


def test_formatters():
    assert markdown.fixed(0.123456) == "0.1235"
    assert markdown.fixed(2, 1) == "2.0"
    assert markdown.fixed(float("nan")) == markdown.fixed(None) == "n/a"
    assert markdown.p_value(0.25) == "0.250"
    assert markdown.p_value(0.00012) == "1.2e-04"
    assert markdown.mean_sd({"mean": 0.5, "sd": 0.25}, 2) == "0.50 ± 0.25"
    assert markdown.mean_sd({}) == "n/a ± n/a"
    assert markdown.primary_measure({"primary_measure": "cka_debiased"}) == "debiased"


def test_results_table_columns_come_from_the_summary_and_the_registry():
    cosines = {"cosine": {"mean": 0.9, "sd": 0.01}, "centered_cosine": {"mean": 0.7, "sd": 0.03}}
    lines = markdown.results_table(_numbers(cosines))
    assert lines[4].endswith("| accuracy mean ± SD | drift (debiased) | drift (linear) | seed noise floor (debiased) | "
                             "cosine | centred cosine |")  # fmt: skip
    assert lines[5] == "|---|---|---:|---|---|---|---|---|---|---|---|---|---|"
    assert lines[6] == ("| t | lora | 12 | accuracy | 0.8000 ± 0.0100 | 0.5000 | 1 of 2 | 0.8100 ± 0.0200 | "
                        "0.2000 ± 0.0200 (≤ floor) | 0.1000 ± 0.0100 | 0.2500 | 0.9000 ± 0.0100 | 0.7000 ± 0.0300 |")  # fmt: skip


def test_a_registered_per_example_measure_gets_a_column(monkeypatch):
    registry = Registry("similarity measure")
    for name, measure in sim.MEASURES.items():
        registry.add(name, measure)
    monkeypatch.setattr(sim, "MEASURES", registry)
    sim.register_measure("norm_ratio", column="norm_ratio", label="norm ratio")(lambda X, Y: 1.0)
    cosines = {"cosine": {"mean": 0.9, "sd": 0.01}, "centered_cosine": {"mean": 0.7, "sd": 0.03},
               "norm_ratio": {"mean": 1.5, "sd": 0.5}}  # fmt: skip
    lines = markdown.results_table(_numbers(cosines))
    assert lines[4].endswith("| cosine | centred cosine | norm ratio |")
    assert lines[5].count("|") == 15
    assert lines[6].endswith("| 0.9000 ± 0.0100 | 0.7000 ± 0.0300 | 1.5000 ± 0.5000 |")
    # a summary written before the measure existed: n/a, not a crash
    old = markdown.results_table(_numbers({"cosine": {"mean": 0.9, "sd": 0.01}}))
    assert old[6].endswith("| 0.9000 ± 0.0100 | n/a ± n/a | n/a ± n/a |")


@pytest.mark.parametrize("primary", ["cka_linear", "cka_debiased"])
def test_primary_measure_is_a_registered_cka(primary):
    assert sim.MEASURES.get(markdown.primary_measure({"primary_measure": primary})).cka
