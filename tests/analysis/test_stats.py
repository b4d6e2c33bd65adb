"""Tests for lorascope.analysis.stats against SciPy and hand-computed values."""

import numpy as np
import pytest
from scipy import stats as st

from lorascope.analysis import stats as S

FT = np.array([0.31, 0.27, 0.35])  # e.g. drift of full fine-tuning, 3 seeds
LORA = np.array([0.12, 0.15, 0.10])


def test_seed_summary_and_reduction():
    out = S.seed_summary([1.0, 2.0, 4.0])
    assert out["n"] == 3
    assert out["mean"] == pytest.approx(7 / 3)
    assert out["sd"] == pytest.approx(np.std([1.0, 2.0, 4.0], ddof=1))
    assert np.isnan(S.seed_summary([1.0])["sd"])
    assert S.drift_reduction_pct(0.4, 0.1) == pytest.approx(75.0)
    assert S.drift_reduction_pct(0.2, 0.3) == pytest.approx(-50.0)
    assert np.isnan(S.drift_reduction_pct(0.0, 0.1))
    np.testing.assert_allclose(S.drift_reduction_pct(FT, LORA), 100 * (FT - LORA) / FT)


def test_paired_t_matches_scipy():
    a = np.array([0.81, 0.79, 0.84, 0.80, 0.83])
    b = np.array([0.78, 0.80, 0.80, 0.77, 0.79])
    ref = st.ttest_rel(a, b)
    out = S.paired_t(a, b)
    assert out["t"] == pytest.approx(ref.statistic) and out["p"] == pytest.approx(ref.pvalue)
    assert out["df"] == 4
    d = a - b
    assert out["t"] == pytest.approx(d.mean() / (d.std(ddof=1) / np.sqrt(5)))
    assert S.paired_t(a, b, "greater")["p"] == pytest.approx(ref.pvalue / 2)


def test_cohens_dz():
    a, b = np.array([3.0, 5.0, 7.0]), np.array([1.0, 2.0, 3.0])  # diffs 2, 3, 4
    assert S.cohens_dz(a, b) == pytest.approx(3.0 / 1.0)
    assert S.cohens_dz([2.0, 2.0], [1.0, 1.0]) == np.inf
    assert np.isnan(S.cohens_dz([1.0, 1.0], [1.0, 1.0]))


@pytest.mark.parametrize(
    "diffs",
    [
        [0.3, 0.1, 0.2],
        [0.3, -0.1, 0.2, 0.05, -0.02, 0.4],
        [-0.5, 0.1, -0.2, -0.3, 0.0, 0.25, -0.05],
        [1.0, 1.0, -1.0, 1.0],  # ties in the null distribution
    ],
)
@pytest.mark.parametrize("alternative", ["two-sided", "greater", "less"])
def test_sign_flip_exact_matches_scipy_permutation_test(diffs, alternative):
    d = np.array(diffs)
    ref = st.permutation_test((d,), np.mean, permutation_type="samples", n_resamples=np.inf, alternative=alternative)
    assert S.sign_flip_pvalue(d, alternative) == pytest.approx(ref.pvalue, abs=1e-12)


def test_sign_flip_floor_three_seeds():
    d = FT - LORA  # all positive, as large an effect as you like
    assert S.sign_flip_pvalue(d) == pytest.approx(0.25)
    assert S.sign_flip_pvalue(100 * d) == pytest.approx(0.25)
    assert S.sign_flip_floor(3) == 0.25
    assert S.sign_flip_floor(3, "greater") == 0.125
    assert S.sign_flip_pvalue(d, "greater") == pytest.approx(0.125)
    assert S.sign_flip_floor(5) == pytest.approx(1 / 16)
    # the paired t-test on the same numbers goes lower, by assuming normality of 3 values
    assert S.paired_t(FT, LORA)["p"] < 0.05


def test_holm_hand_example():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> monotone:
    # 0.02, 0.03, 0.06, 0.06
    p = [0.01, 0.04, 0.03, 0.005]
    np.testing.assert_allclose(S.holm(p), [0.03, 0.06, 0.06, 0.02])
    np.testing.assert_allclose(S.holm([0.5, 0.4, 0.01]), [0.8, 0.8, 0.03])  # capped/monotone
    np.testing.assert_allclose(S.holm([0.6, 0.9]), [1.0, 1.0])  # capped at 1
    np.testing.assert_allclose(S.holm([0.02]), [0.02])
    # not what scipy's FDR control computes (Benjamini-Hochberg)
    assert not np.allclose(S.holm(p), st.false_discovery_control(p))
    with pytest.raises(ValueError):
        S.holm([0.1, np.nan])


def test_jackknife_of_the_mean_is_the_standard_error():
    x = np.random.default_rng(0).normal(size=60)
    out = S.jackknife_ci(lambda idx: x[idx].mean(), 60)
    se = x.std(ddof=1) / np.sqrt(60)
    assert out["se"] == pytest.approx(se, rel=1e-10)
    assert out["bias"] == pytest.approx(0.0, abs=1e-12)
    assert out["lo"] == pytest.approx(x.mean() - st.norm.ppf(0.975) * se)


@pytest.mark.parametrize("m", [200, 100])  # m = n/2 (scale 1) and m = n/4 (scale sqrt(1/3))
def test_subsample_ci_scale_and_determinism(m):
    n = 400
    x = np.random.default_rng(1).normal(size=n)
    seen = []

    def stat(idx):
        seen.append(idx)
        return x[idx].mean()

    out = S.subsample_bootstrap_ci(stat, n, m=m, n_resamples=400, seed=3)
    se = x.std(ddof=1) / np.sqrt(n)
    assert out["se"] == pytest.approx(se, rel=0.12)
    # the uncorrected sqrt(m/n) scaling would be too narrow by sqrt(1 - m/n)
    assert out["se"] * np.sqrt(1 - m / n) < 0.93 * se
    assert out["lo"] < x.mean() < out["hi"]
    assert out["hi"] - out["lo"] == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert all(np.unique(i).size == i.size for i in seen)  # never a duplicated example
    assert all(i.size == m for i in seen[1:])
    again = S.subsample_bootstrap_ci(lambda idx: x[idx].mean(), n, m=m, n_resamples=400, seed=3)
    assert again == out
    with pytest.raises(ValueError):
        S.subsample_bootstrap_ci(stat, n, m=n)


def test_noise_floor():
    out = S.noise_floor([0.02, 0.03, 0.04])
    assert out["mean"] == pytest.approx(0.03) and out["max"] == pytest.approx(0.04)
    assert out["n"] == 3 and out["sd"] == pytest.approx(0.01)


# ---- verdicts --------------------------------------------------------------------------------


def test_subsample_ci_with_cached_grams():
    # end to end: example-level CI of CKA from cached Grams, subsets without replacement.
    # The biased estimator's value depends on n (d/(d+n) for independent data), so its
    # half-size subsamples are shifted; the debiased one is not.
    from lorascope.analysis import similarity as sim

    rng = np.random.default_rng(2)
    n, d = 200, 400
    cache = sim.GramCache({"x": rng.standard_normal((n, d)), "y": rng.standard_normal((n, d))})

    def cka(which):
        return lambda idx: cache.subset(idx, ["x", "y"]).pair("x", "y")[which]

    deb = S.subsample_bootstrap_ci(cka("cka_debiased"), n, n_resamples=40, seed=0)
    lin = S.subsample_bootstrap_ci(cka("cka_linear"), n, n_resamples=40, seed=0)
    # independent data: HSIC_u is a degenerate U-statistic (rate n, not sqrt(n)), so the
    # interval is conservative here (se ~0.015 vs a true sd of ~0.007 at this size)
    assert deb["lo"] < 0 < deb["hi"] and deb["se"] < 0.03
    assert abs(deb["subsample_mean"] - deb["estimate"]) < 0.01
    assert lin["estimate"] == pytest.approx(d / (d + n), abs=0.02)
    assert lin["subsample_mean"] == pytest.approx(d / (d + n / 2), abs=0.02)
    assert lin["lo"] < lin["estimate"] < lin["hi"]  # interval not dragged by the shift


def test_subsample_se_matches_example_sampling_sd_for_cka():
    # dependent representations (CKA ~0.91), fixed maps, fresh examples each replicate: the
    # spread of CKA over examples is what the subsampling se must estimate
    n, d = 200, 100
    r0 = np.random.default_rng(7)
    A = r0.standard_normal((8, d))
    AB = A @ r0.standard_normal((d, d)) / 10

    def draw(seed):
        r = np.random.default_rng(seed)
        Z = r.standard_normal((n, 8))
        return Z @ A + r.standard_normal((n, d)), Z @ AB + 2 * r.standard_normal((n, d))

    from lorascope.analysis import similarity as sim

    true_sd = np.std([sim.debiased_cka(*draw(1000 + i)) for i in range(60)], ddof=1)
    cache = sim.GramCache(dict(zip("xy", draw(0), strict=True)))
    out = S.subsample_bootstrap_ci(
        lambda idx: cache.subset(idx, "xy").pair("x", "y")["cka_debiased"], n, n_resamples=100, seed=0
    )
    assert out["se"] == pytest.approx(true_sd, rel=0.35)
    assert out["lo"] < out["estimate"] < out["hi"]
