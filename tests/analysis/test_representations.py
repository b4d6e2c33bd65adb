"""analysis.representations: the drift bundle's rows, their columns from the measure registry, and the fallback for a
measure undefined against the base."""

from dataclasses import dataclass

import numpy as np
import pytest

from lorascope.analysis import representations
from lorascope.analysis import similarity as sim
from lorascope.registry import Registry


@dataclass
class Cell:
    name: str
    method: str
    seed: int


class Reps:
    """A reps reader: `.labels` and `.layer(pooling, index)`."""

    def __init__(self, layers: list[np.ndarray]) -> None:
        self.layers = layers
        self.labels = [f"layer_{i}" for i in range(len(layers))]

    def layer(self, pooling: str, index: int) -> np.ndarray:
        return self.layers[index]


def _study(seed=0, n=24, d=6, layers=2):
    rng = np.random.default_rng(seed)
    base = [rng.standard_normal((n, d)) + 1.0 for _ in range(layers)]
    cells = [Cell(f"t-{m}-s{s}", m, s) for m in ("full", "lora") for s in (1, 2)]
    reps = {"base": Reps(base)}
    for c in cells:
        reps[c.name] = Reps([b + (0.2 if c.method == "lora" else 1.0) * rng.standard_normal((n, d)) for b in base])
    return cells, reps


def _no_log(*args, **kw):
    pass


def test_columns_are_the_committed_csv_format():
    assert representations.layer_columns() == [
        "task", "method", "seed", "layer_index", "layer", "pooling", "cka_linear", "cka_debiased", "drift_linear",
        "drift_debiased", "cosine", "centered_cosine"]  # fmt: skip
    assert representations.noise_columns() == [
        "task", "method", "seed_a", "seed_b", "layer_index", "layer", "pooling", "cka_linear", "cka_debiased",
        "drift_linear", "drift_debiased"]  # fmt: skip


def test_rows_carry_every_measure_against_the_base_and_the_noise_floor_ones_between_seeds():
    cells, reps = _study()
    rows, noise, subset = representations.representation_drift("t", cells, reps, ["mean"], "mean", None, _no_log)
    assert len(rows) == 4 * 2 and len(noise) == 2 * 1 * 2  # cells x layers; methods x seed pairs x layers
    assert all(list(r) == representations.layer_columns() for r in rows)
    assert all(list(r) == representations.noise_columns() for r in noise)
    r = rows[0]
    X, Y = reps["base"].layer("mean", 0), reps[cells[0].name].layer("mean", 0)
    assert (r["method"], r["seed"], r["layer_index"]) == ("full", 1, 0)
    assert r["cka_debiased"] == pytest.approx(sim.debiased_cka(X, Y), abs=1e-12)
    assert r["centered_cosine"] == pytest.approx(sim.centered_cosine(X, Y, X.mean(axis=0)), abs=1e-12)
    n0 = noise[0]
    A, B = reps[cells[0].name].layer("mean", 0), reps[cells[1].name].layer("mean", 0)
    assert (n0["method"], n0["seed_a"], n0["seed_b"]) == ("full", 1, 2)
    assert n0["drift_linear"] == pytest.approx(1.0 - sim.linear_cka(A, B), abs=1e-12)
    assert subset == {}


def test_a_registered_measure_reaches_the_rows(monkeypatch):
    registry = Registry("similarity measure")
    for name, measure in sim.MEASURES.items():
        registry.add(name, measure)
    monkeypatch.setattr(sim, "MEASURES", registry)  # the throwaway measure leaves with the test

    @sim.register_measure("norm_ratio", column="norm_ratio", label="norm ratio", noise_floor=True)
    def norm_ratio(X, Y) -> float:
        """||Y||_F / ||X||_F."""
        return float(np.linalg.norm(Y) / np.linalg.norm(X))

    assert representations.layer_columns()[-1] == "norm_ratio"
    assert representations.noise_columns()[-1] == "norm_ratio"
    cells, reps = _study()
    rows, noise, _ = representations.representation_drift("t", cells, reps, ["mean"], "mean", None, _no_log)
    X, Y = reps["base"].layer("mean", 1), reps[cells[3].name].layer("mean", 1)
    row = next(r for r in rows if r["seed"] == 2 and r["method"] == "lora" and r["layer_index"] == 1)
    assert row["norm_ratio"] == pytest.approx(np.linalg.norm(Y) / np.linalg.norm(X), rel=1e-12)
    A, B = reps[cells[2].name].layer("mean", 0), reps[cells[3].name].layer("mean", 0)
    seeds = next(r for r in noise if r["method"] == "lora" and r["layer_index"] == 0)
    assert seeds["norm_ratio"] == pytest.approx(np.linalg.norm(B) / np.linalg.norm(A), rel=1e-12)


def test_a_cosine_undefined_for_one_pair_is_nan_there_only():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((20, 5)) + 2.0
    zero_row = base + 0.3 * rng.standard_normal((20, 5))
    zero_row[3] = 0.0  # a zero vector: its cosine with anything is undefined
    layer = {"base": base, "a": base + 0.3 * rng.standard_normal((20, 5)), "b": zero_row}
    pairs = [("base", "a"), ("base", "b")]
    rows = representations.drift_rows(layer, pairs, sim.GramCache(layer))
    mu = base.mean(axis=0)
    assert rows[0]["cosine"] == pytest.approx(sim.mean_cosine(base, layer["a"]), abs=1e-12)
    assert rows[0]["centered_cosine"] == pytest.approx(sim.centered_cosine(base, layer["a"], mu), abs=1e-12)
    assert np.isnan(rows[1]["cosine"])
    assert rows[1]["centered_cosine"] == pytest.approx(sim.centered_cosine(base, zero_row, mu), abs=1e-12)  # defined
    assert rows[1]["cka_debiased"] == pytest.approx(sim.debiased_cka(base, zero_row), abs=1e-12)


def test_a_centred_cosine_of_a_constant_representation_is_nan_not_rounding_noise():
    """The last token's embedding output when every example ends with the same token: every row is one vector, so
    each centred row is 0 (the base's own mean) and the centred cosine is 0/0. Before: stored as 1.0 (a cell equal
    to the base) or ~3e-8 (a full cell whose embedding changed), the cosine of float64 rounding noise."""
    rng = np.random.default_rng(5)
    token = rng.standard_normal(64).astype(np.float32) * 3.0 + 1.0
    base = np.tile(token, (50, 1)).astype(np.float64)
    moved = np.tile(token + 0.5 * rng.standard_normal(64).astype(np.float32), (50, 1)).astype(np.float64)
    layer = {"base": base, "same": base.copy(), "moved": moved}
    rows = representations.drift_rows(layer, [("base", "same"), ("base", "moved")], sim.GramCache(layer))
    assert all(np.isnan(r["centered_cosine"]) for r in rows)
    assert rows[0]["cosine"] == pytest.approx(1.0) and 0 < rows[1]["cosine"] < 1  # the raw cosine is defined
    with pytest.raises(ValueError, match="0/0"):
        sim.centered_cosine(base, moved, base.mean(axis=0))
    # a row that merely lies close to the mean is still defined
    near = base + 1e-3 * rng.standard_normal(base.shape)
    assert np.isfinite(sim.centered_cosine(near, near + 1e-4, near.mean(axis=0)))
