"""The gate of H1b asks whether the reference moved at all (`verdicts.moved`), on synthetic representations with a
known change: none, a change made only of seed-specific parts, and a change of the same size shared by every seed.
Debiased CKA, n = 400 examples, d = 64 features, 3 seeds, the example spread from the same subsets the drift phase
uses (`similarity.SubsetDebiasedCKA`, `stats.subsample_se`). docs/analysis.md, "The gate", quotes these numbers.

Why: the old gate called drift from the base "indistinguishable" when it was not above the drift between two seeds
of the same method. For small changes 1 - CKA grows with the squared size of the change, so with a shared part S and
seed parts N_1, N_2 drift from the base is about |S|^2 + |N|^2 while two seeds differ by about 2 |N|^2: the old gate
fired whenever the shared part was smaller than the seed part, however large the change."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from lorascope.analysis import similarity as sim
from lorascope.analysis import stats
from lorascope.analysis import verdicts as vd

N, D, SEEDS = 400, 64, (0, 1, 2)
SIZE = 0.75  # the change's size relative to the base's RMS entry: drift ~ 0.08 (the example)


def simulate(shared: float, seed_specific: float, seed: int = 0) -> dict:
    """Base X (low-rank structure plus noise) and per seed Y_s = X + shared * S + seed_specific * N_s (S, N_s
    independent Gaussians scaled to X's RMS entry). Returns the per-seed drift from the base, the seed-to-seed drift
    (mean over the 3 seed pairs) and the example SE of the mean drift over seeds."""
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((N, 8)) @ rng.standard_normal((8, D)) + 0.5 * rng.standard_normal((N, D))
    rms = float(np.sqrt(np.mean(X**2)))
    S = rng.standard_normal((N, D)) * rms
    reps = {"base": X, **{f"s{s}": X + shared * S + seed_specific * rms * rng.standard_normal((N, D)) for s in SEEDS}}
    cache = sim.GramCache(reps)
    drift = {s: 1.0 - sim.cka_cached(cache["base"], cache[f"s{s}"])[1] for s in SEEDS}
    pairs = [1.0 - sim.cka_cached(cache[f"s{a}"], cache[f"s{b}"])[1] for a, b in itertools.combinations(SEEDS, 2)]
    resampler = sim.SubsetDebiasedCKA(N, N // 2, 200, seed=0)
    base = resampler.prepare(cache["base"])
    subsets = np.mean([1.0 - resampler.cka(base, resampler.prepare(cache[f"s{s}"])) for s in SEEDS], axis=0)
    return {"drift": drift, "seed_to_seed": float(np.mean(pairs)), "pairs": len(pairs),
            "example_se": stats.subsample_se(subsets, N, N // 2)}  # fmt: skip


@pytest.fixture(scope="module")
def cases():
    return {"did not move": simulate(0.0, 0.0), "seed-specific": simulate(0.0, SIZE), "shared": simulate(SIZE, 0.0),
            "both": simulate(SIZE / np.sqrt(2), SIZE / np.sqrt(2))}  # fmt: skip


def gate(case: dict) -> dict:
    return vd.moved(case["drift"], case["example_se"], case["seed_to_seed"], case["pairs"])


def test_the_gate_tells_not_moved_seed_specific_and_shared_apart(cases):
    still, specific, shared, both = (gate(cases[k]) for k in ("did not move", "seed-specific", "shared", "both"))
    # did not move: drift exactly 0 on every seed, no spread
    assert still["mean"] == 0.0 and not still["moved"]
    # the two changes have the same size: drift from the base ~0.08 for both
    assert specific["mean"] == pytest.approx(0.08, abs=0.02) and shared["mean"] == pytest.approx(specific["mean"], rel=0.1)
    # both moved: the lower bound over seeds and examples is far above 0
    assert specific["moved"] and shared["moved"] and both["moved"]
    assert specific["lo"] > 0.5 * specific["mean"] and shared["lo"] > 0.5 * shared["mean"]
    # what tells them apart is consistency: seed-specific changes differ between seeds by about twice their drift,
    # a shared change not at all; the shared share (small-change approximation) reads ~0, ~1 and ~0.5
    assert specific["seed_to_seed"] == pytest.approx(2 * specific["mean"], rel=0.1) and shared["seed_to_seed"] < 1e-12
    assert abs(specific["shared_share"]) < 0.1 and shared["shared_share"] > 0.99
    assert both["shared_share"] == pytest.approx(0.5, abs=0.1)
    assert shared["se_seeds"] < 1e-12 < shared["se_examples"]  # identical seeds: the example spread alone


def test_the_old_noise_floor_rule_called_a_large_seed_specific_change_indistinguishable(cases):
    """The rule the gate replaces: drift from the base not above the seed-to-seed drift."""
    old = {k: c["drift"] and np.mean(list(c["drift"].values())) <= c["seed_to_seed"] for k, c in cases.items()}
    assert old["seed-specific"] and not old["shared"]  # the same size of change, opposite answers
    assert old["did not move"]  # 0 <= 0


def test_h1b_on_the_gate():
    """A reference that did not move makes H1b indistinguishable; one that moved in seed-specific directions does
    not (its drift is there to be reduced, and the rule over seeds decides)."""
    from lorascope.analysis.drift_stats import not_moved_text

    specific = simulate(0.0, SIZE, seed=1)
    g = gate(specific)
    lora = {s: 0.4 * v for s, v in specific["drift"].items()}
    assert vd.h1b(specific["drift"], lora, 20.0, indistinguishable=not_moved_text(g))["verdict"] == "supported"
    still = gate(simulate(0.0, 0.0))
    v = vd.h1b({s: 0.0 for s in SEEDS}, {s: 0.0 for s in SEEDS}, 20.0, indistinguishable=not_moved_text(still))
    assert v["verdict"] == "indistinguishable" and "not distinguishable from 0" in v["evidence"]


def test_the_gate_on_hand_made_values():
    t = 4.302652729911275  # t_{0.975, 2}
    g = vd.moved({1: 0.10, 2: 0.12, 3: 0.11}, 0.01, 0.05, 3)
    se = np.sqrt(np.var([0.10, 0.12, 0.11], ddof=1) / 3 + 0.01**2)
    assert g["lo"] == pytest.approx(0.11 - t * se) and g["moved"] and g["df"] == 2
    assert g["shared_share"] == pytest.approx(1 - 0.05 / 0.22)
    assert not vd.moved({1: 0.01, 2: 0.03, 3: -0.005}, None)["moved"]  # a seed at or below 0
    assert not vd.moved({1: 0.002, 2: 0.02, 3: 0.001}, 0.01)["moved"]  # the bound reaches 0
    assert vd.moved({1: 0.01, 2: 0.01}, None)["moved"]  # no spread at all: above 0 is moved


if __name__ == "__main__":  # the table docs/analysis.md quotes: python -m tests.analysis.test_moved
    print("| change | drift from the base | lower bound | SE seeds | SE examples | seed-to-seed | shared share | moved | old gate |")
    print("|---|---|---|---|---|---|---|---|---|")
    for name, (shared, specific) in {"did not move": (0.0, 0.0), "seed-specific only": (0.0, SIZE),
                                     "shared only": (SIZE, 0.0), "half shared, half seed-specific":
                                     (SIZE / np.sqrt(2), SIZE / np.sqrt(2))}.items():  # fmt: skip
        g = gate(simulate(shared, specific))
        share = "n/a" if g["shared_share"] is None else f"{g['shared_share']:.2f}"
        old = "indistinguishable" if g["mean"] <= g["seed_to_seed"] else "above floor"
        print(f"| {name} | {g['mean']:.4f} | {g['lo']:.4f} | {g['se_seeds']:.4f} | {g['se_examples']:.4f} | "
              f"{g['seed_to_seed']:.4f} | {share} | {'yes' if g['moved'] else 'no'} | {old} |")
