"""Tests for lorascope.analysis.similarity (CKA, HSIC, cosines, Gram caching)."""

import numpy as np
import pytest

from lorascope.analysis import similarity as sim
from lorascope.errors import ConfigError
from lorascope.registry import Registry


def _rng(seed=0):
    return np.random.default_rng(seed)


def _pair(n=60, d=40, seed=0, noise=1.0):
    rng = _rng(seed)
    X = rng.standard_normal((n, d)) + 3.0  # non-zero mean on purpose
    Y = X @ rng.standard_normal((d, d)) * 0.3 + noise * rng.standard_normal((n, d))
    return X, Y


def _orthogonal(d, seed):
    Q, R = np.linalg.qr(_rng(seed).standard_normal((d, d)))
    return Q * np.sign(np.diag(R))


def _u_centered_hsic(K, L):
    """Szekely & Rizzo (2014) U-centring form, as in Kornblith et al.'s notebook."""
    n = K.shape[0]

    def ucenter(G):
        G = G.copy()
        np.fill_diagonal(G, 0.0)
        means = G.sum(axis=0) / (n - 2)
        means -= means.sum() / (2 * (n - 1))
        G -= means[:, None] + means[None, :]
        np.fill_diagonal(G, 0.0)
        return G

    return np.vdot(ucenter(K), ucenter(L)) / (n * (n - 3))


# ---- identities ------------------------------------------------------------------------------


def test_self_similarity_is_one():
    X, _ = _pair()
    assert sim.linear_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    assert sim.debiased_cka(X, X) == pytest.approx(1.0, abs=1e-12)
    K = sim.gram_linear(X)
    assert sim.cka_from_grams(K, K) == pytest.approx(1.0, abs=1e-12)
    assert sim.cka_from_grams(K, K, debiased=True) == pytest.approx(1.0, abs=1e-12)
    g = sim.CachedGram.from_features(X)
    assert sim.cka_cached(g, g) == pytest.approx((1.0, 1.0), abs=1e-12)
    assert sim.drift(sim.linear_cka(X, X)) == pytest.approx(0.0, abs=1e-12)


def test_float32_input_is_computed_in_float64():
    X, Y = _pair()
    assert sim.gram_linear(X.astype(np.float32)).dtype == np.float64
    assert sim.linear_cka(X.astype(np.float32), Y.astype(np.float32)) == pytest.approx(
        sim.linear_cka(X.astype(np.float32).astype(np.float64), Y.astype(np.float32)), abs=1e-14
    )


@pytest.mark.parametrize("debiased", [False, True])
def test_invariant_to_orthogonal_transform_and_isotropic_scaling(debiased):
    X, Y = _pair()
    f = sim.debiased_cka if debiased else sim.linear_cka
    ref = f(X, Y)
    Q = _orthogonal(X.shape[1], 1)
    assert f(X @ Q, Y) == pytest.approx(ref, abs=1e-12)
    assert f(X, 7.5 * Y) == pytest.approx(ref, abs=1e-12)
    assert f(0.01 * X @ Q, 3.0 * Y @ _orthogonal(Y.shape[1], 2)) == pytest.approx(ref, abs=1e-12)
    assert f(X + 100.0, Y - 5.0) == pytest.approx(ref, abs=1e-10)  # translation


@pytest.mark.parametrize("debiased", [False, True])
def test_not_invariant_to_anisotropic_scaling(debiased):
    # the invariance test above can fail: scaling features unequally changes CKA
    X, Y = _pair()
    f = sim.debiased_cka if debiased else sim.linear_cka
    scale = np.ones(X.shape[1])
    scale[:5] = 20.0
    assert abs(f(X * scale, Y) - f(X, Y)) > 0.02


def test_feature_space_form_equals_gram_form():
    X, Y = _pair(n=50, d=80)  # n < d
    K, L = sim.gram_linear(X), sim.gram_linear(Y)
    lin = sim.linear_cka(X, Y)
    assert sim.cka_from_grams(K, L) == pytest.approx(lin, abs=1e-12)
    hsic = sim.hsic_biased
    assert hsic(K, L) / np.sqrt(hsic(K, K) * hsic(L, L)) == pytest.approx(lin, abs=1e-12)
    # Gram of column-centred features == H K H
    Xc = X - X.mean(axis=0)
    np.testing.assert_allclose(sim.center_gram(K), Xc @ Xc.T, atol=1e-9)


def test_hsic_unbiased_matches_u_centering_and_is_shift_invariant():
    X, Y = _pair(n=40, d=30)
    K, L = sim.gram_linear(X), sim.gram_linear(Y)
    ref = _u_centered_hsic(K, L)
    assert sim.hsic_unbiased(K, L) == pytest.approx(ref, rel=1e-9)
    # invariant to centring the Gram and to shifting the features
    assert sim.hsic_unbiased(sim.center_gram(K), L) == pytest.approx(ref, rel=1e-9)
    assert sim.hsic_unbiased(sim.gram_linear(X - 4.0), L) == pytest.approx(ref, rel=1e-9)
    with pytest.raises(ValueError):
        sim.hsic_unbiased(K[:3, :3], L[:3, :3])


def test_debiased_cka_near_zero_for_independent_gaussians_biased_is_not():
    # n = 750 < d = 2048: the biased estimator sits near d / (d + n) = 0.732 for independent data
    n, d = 750, 2048
    rng = _rng(0)
    X = rng.standard_normal((n, d))
    Y = rng.standard_normal((n, d))
    gx, gy = sim.CachedGram.from_features(X), sim.CachedGram.from_features(Y)
    lin, deb = sim.cka_cached(gx, gy)
    assert abs(deb) < 0.01  # measured -0.0010 (seed 0); spread over seeds ~0.002
    assert 0.72 < lin < 0.745  # measured 0.7313; expectation ~ d / (d + n)
    assert lin == pytest.approx(d / (d + n), abs=0.005)
    assert sim.drift(lin) < 0.3 < sim.drift(deb)


# ---- cosines ---------------------------------------------------------------------------------


def test_mean_cosine_known_values():
    X = np.array([[1.0, 0.0], [0.0, 2.0], [3.0, 3.0]])
    Y = np.array([[2.0, 0.0], [0.0, -1.0], [1.0, 0.0]])
    # rows: cos = 1, -1, 1/sqrt(2)
    assert sim.mean_cosine(X, Y) == pytest.approx((1 - 1 + 1 / np.sqrt(2)) / 3, abs=1e-15)
    assert sim.mean_cosine(X, X) == pytest.approx(1.0, abs=1e-15)
    with pytest.raises(ValueError):
        sim.mean_cosine(np.zeros((2, 2)), Y[:2])


def test_centered_cosine_known_values():
    mu = np.array([10.0, 10.0])
    X = mu + np.array([[1.0, 0.0], [0.0, 1.0]])
    Y = mu + np.array([[0.0, 1.0], [0.0, 2.0]])
    # raw cosines are ~1 because of the shared mean; centred: orthogonal, parallel -> 0, 1
    assert sim.mean_cosine(X, Y) > 0.99
    assert sim.centered_cosine(X, Y, mu) == pytest.approx(0.5, abs=1e-15)
    # the base mean, not each matrix's own mean, is subtracted
    assert sim.centered_cosine(X, X + 1.0, mu) != pytest.approx(1.0)


# ---- caching -----------------------------------------------------------------------------------


def test_pairwise_drift_cache_equals_recomputation():
    rng = _rng(3)
    n, d = 80, 50
    base = rng.standard_normal((n, d)) + 2.0
    reps = {"base": base.astype(np.float32)}
    for i in range(4):
        reps[f"m{i}"] = (base + (0.2 + 0.3 * i) * rng.standard_normal((n, d))).astype(np.float32)
    pairs = [("base", f"m{i}") for i in range(4)] + [("m0", "m1"), ("m1", "m2"), ("m0", "m2")]
    cache = sim.GramCache(reps)
    rows = sim.pairwise_drift(reps, pairs, base="base", cache=cache)
    assert sorted(cache.computed()) == sorted(reps)  # one Gram per representation
    mu = reps["base"].astype(np.float64).mean(axis=0)
    for row, (a, b) in zip(rows, pairs, strict=True):
        X, Y = reps[a], reps[b]
        assert (row["a"], row["b"]) == (a, b)
        assert row["cka_linear"] == pytest.approx(sim.linear_cka(X, Y), abs=1e-12)
        assert row["cka_debiased"] == pytest.approx(sim.debiased_cka(X, Y), abs=1e-12)
        assert row["cka_debiased"] == pytest.approx(
            sim.cka_from_grams(sim.gram_linear(X), sim.gram_linear(Y), debiased=True), abs=1e-10
        )
        assert row["drift_linear"] == pytest.approx(1 - row["cka_linear"], abs=1e-15)
        assert row["drift_debiased"] == pytest.approx(1 - row["cka_debiased"], abs=1e-15)
        assert row["cosine"] == pytest.approx(sim.mean_cosine(X, Y), abs=1e-12)
        assert row["centered_cosine"] == pytest.approx(sim.centered_cosine(X, Y, mu), abs=1e-12)
    # without base: CKA only
    assert set(sim.pairwise_drift(reps, pairs[:1])[0]) == {
        "a",
        "b",
        "cka_linear",
        "cka_debiased",
        "drift_linear",
        "drift_debiased",
    }


def test_cached_gram_from_gram_equals_from_features():
    X, Y = _pair()
    a = sim.CachedGram.from_gram(sim.gram_linear(X))
    b = sim.CachedGram.from_features(Y)
    assert sim.cka_cached(a, b) == pytest.approx((sim.linear_cka(X, Y), sim.debiased_cka(X, Y)), abs=1e-12)


def test_subset_without_replacement_is_valid():
    X, Y = _pair(n=100, d=30)
    gx, gy = sim.CachedGram.from_features(X), sim.CachedGram.from_features(Y)
    idx = np.sort(_rng(5).choice(100, size=50, replace=False))
    sx, sy = gx.subset(idx), gy.subset(idx)
    # debiased CKA(X, X) stays exactly 1 on a subsample
    assert sim.cka_cached(sx, sx) == pytest.approx((1.0, 1.0), abs=1e-12)
    # and a subset of cached Grams equals recomputing from the subset's features
    assert sim.cka_cached(sx, sy) == pytest.approx(
        (sim.linear_cka(X[idx], Y[idx]), sim.debiased_cka(X[idx], Y[idx])), abs=1e-12
    )
    cache = sim.GramCache({"x": X, "y": Y})
    cache.pair("x", "y")
    sub = cache.subset(idx)
    assert sub.pair("x", "y")["cka_debiased"] == pytest.approx(sim.debiased_cka(X[idx], Y[idx]))
    with pytest.raises(ValueError, match="duplicated"):
        gx.subset(np.array([0, 1, 1, 2, 3]))


def test_duplicated_rows_would_bias_debiased_cka():
    # why subset() refuses duplicates: a with-replacement bootstrap breaks the U-statistic
    rng = _rng(7)
    X, Y = rng.standard_normal((200, 300)), rng.standard_normal((200, 300))
    idx = rng.choice(200, size=200, replace=True)
    assert abs(sim.debiased_cka(X, Y)) < 0.03
    assert sim.debiased_cka(X[idx], Y[idx]) > 0.1


# ---- the measure registry ----------------------------------------------------------------------


def test_registry_holds_the_four_measures_with_their_columns():
    assert sim.MEASURES.names() == ("linear", "debiased", "cosine", "centered_cosine")
    got = {m.name: (m.column, m.drift_column, m.label, m.cka, m.noise_floor) for m in sim.layer_measures()}
    assert got == {
        "linear": ("cka_linear", "drift_linear", "linear CKA", True, True),
        "debiased": ("cka_debiased", "drift_debiased", "debiased CKA", True, True),
        "cosine": ("cosine", None, "cosine", False, False),
        "centered_cosine": ("centered_cosine", None, "centred cosine", False, False),
    }
    assert [m.name for m in sim.cka_measures()] == ["linear", "debiased"]
    assert [m.name for m in sim.noise_floor_measures()] == ["linear", "debiased"]
    assert sim.measure_of_column("cka_debiased").name == "debiased"
    assert sim.MEASURES.get("debiased").function is sim.debiased_cka  # the registered function is the plain one
    with pytest.raises(ConfigError, match="unknown similarity measure 'rbf'; known: linear, debiased, cosine"):
        sim.MEASURES.get("rbf")


@pytest.mark.parametrize("name", ["linear", "debiased", "cosine", "centered_cosine"])
def test_each_fast_path_equals_its_function(name):
    measure = sim.MEASURES.get(name)
    rng = _rng(11)
    base = rng.standard_normal((40, 12)) + 1.5
    reps = {"base": base, "m0": base + 0.4 * rng.standard_normal((40, 12)), "m1": rng.standard_normal((40, 12))}
    pairs = [("base", "m0"), ("base", "m1"), ("m0", "m1")]
    mu = base.mean(axis=0)
    batch = sim.PairBatch(reps, pairs, sim.GramCache(reps), mu)
    want = [measure(reps[a], reps[b], mu) for a, b in pairs]
    assert measure.fast is not None
    assert measure.values(batch) == pytest.approx(want, abs=1e-12)


def test_a_new_measure_is_one_registered_function(monkeypatch):
    registry = Registry("similarity measure")
    for name, measure in sim.MEASURES.items():
        registry.add(name, measure)
    monkeypatch.setattr(sim, "MEASURES", registry)  # the throwaway measures leave with the test

    @sim.register_measure("mean_abs", column="mean_abs_diff", label="mean |x - y|")
    def mean_abs_diff(X, Y) -> float:
        return float(np.mean(np.abs(np.asarray(X, dtype=np.float64) - np.asarray(Y, dtype=np.float64))))

    @sim.register_measure("procrustes", column="cka_procrustes", label="Procrustes similarity", cka=True, noise_floor=True)
    def procrustes(X, Y) -> float:  # 1 - normalised orthogonal Procrustes distance (Ding et al. 2021), in [0, 1]
        X = np.asarray(X, dtype=np.float64) - np.mean(X, axis=0)
        Y = np.asarray(Y, dtype=np.float64) - np.mean(Y, axis=0)
        X, Y = X / np.linalg.norm(X), Y / np.linalg.norm(Y)
        return float(np.linalg.norm(X.T @ Y, ord="nuc"))

    X, Y = _pair(n=30, d=8)
    rows = sim.pairwise_drift({"base": X, "m": Y}, [("base", "m")], base="base")
    assert list(rows[0]) == ["a", "b", "cka_linear", "cka_debiased", "cka_procrustes", "drift_linear", "drift_debiased",
                             "drift_procrustes", "cosine", "centered_cosine", "mean_abs_diff"]  # fmt: skip
    assert rows[0]["mean_abs_diff"] == pytest.approx(float(np.mean(np.abs(X - Y))), abs=1e-12)
    assert rows[0]["drift_procrustes"] == pytest.approx(1.0 - procrustes(X, Y), abs=1e-15)
    Q = _orthogonal(8, 3)
    assert procrustes(X, 2.0 * X @ Q) == pytest.approx(1.0, abs=1e-12)
    # without a base: the noise-floor measures, the new CKA among them
    assert list(sim.pairwise_drift({"x": X, "y": Y}, [("x", "y")])[0]) == [
        "a", "b", "cka_linear", "cka_debiased", "cka_procrustes", "drift_linear", "drift_debiased", "drift_procrustes"]  # fmt: skip


def test_registering_refuses_a_taken_column_and_a_base_mean_in_the_noise_floor(monkeypatch):
    registry = Registry("similarity measure")
    for name, measure in sim.MEASURES.items():
        registry.add(name, measure)
    monkeypatch.setattr(sim, "MEASURES", registry)
    with pytest.raises(ValueError, match=r"column\(s\) \['cosine'\] already filled"):
        sim.register_measure("cosine2", column="cosine", label="cosine again")(sim.mean_cosine)
    with pytest.raises(ValueError, match="against the base only"):
        sim.register_measure("cc", column="cc", label="cc", uses_base_mean=True, noise_floor=True)(sim.centered_cosine)
    with pytest.raises(ValueError, match="registered twice"):
        sim.register_measure("linear", column="other", label="other")(sim.linear_cka)
    assert sim.MEASURES.names() == ("linear", "debiased", "cosine", "centered_cosine")
