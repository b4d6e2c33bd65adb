"""Statistics for seed-level comparisons (3 seeds per method) and example-level resampling.

Design notes
------------
* With 3 seeds, per-seed values are the unit of replication.  An exact sign-flip test on
  3 paired differences cannot give p < 2 / 2^3 = 0.25 (two-sided) or 0.125 (one-sided), no
  matter how large the effect: :func:`sign_flip_floor` states this so that reports do not
  read "p = 0.25" as weak evidence of no effect.  The paired t-test can go lower, but only
  by leaning on normality of 3 numbers; report both, with the effect size.
* Uncertainty over *examples* (n = 750) uses resampling WITHOUT replacement, because the
  debiased (U-statistic) CKA treats every pair of rows as two distinct examples: a bootstrap
  sample with duplicated rows turns self-similarities into cross terms and biases it upwards.
  See :func:`subsample_bootstrap_ci` (random delete-d jackknife) and :func:`jackknife_ci`.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from scipy import stats as _st

__all__ = [
    "cohens_dz",
    "drift_reduction_pct",
    "holm",
    "jackknife_ci",
    "noise_floor",
    "paired_t",
    "seed_summary",
    "sign_flip_floor",
    "sign_flip_pvalue",
    "subsample_bootstrap_ci",
    "subsample_se",
]

_ALTERNATIVES = ("two-sided", "greater", "less")


def _vec(values) -> np.ndarray:
    return np.atleast_1d(np.asarray(values, dtype=np.float64)).ravel()


def seed_summary(values) -> dict:
    """Mean, sample SD (ddof=1; nan for n < 2) and n of per-seed values."""
    v = _vec(values)
    return {
        "mean": float(v.mean()) if v.size else float("nan"),
        "sd": float(v.std(ddof=1)) if v.size > 1 else float("nan"),
        "n": int(v.size),
    }


def drift_reduction_pct(ft, lora):
    """Relative drift reduction of LoRA vs full fine-tuning, 100 (FT - LoRA) / FT, in %.

    Positive: LoRA drifts less.  nan where FT drift is 0.  Works elementwise on arrays.
    """
    ft, lora = np.asarray(ft, dtype=np.float64), np.asarray(lora, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = np.where(ft != 0, 100.0 * (ft - lora) / np.where(ft != 0, ft, 1.0), np.nan)
    return float(out) if out.ndim == 0 else out


def paired_t(a, b, alternative: str = "two-sided") -> dict:
    """Paired t-test of a vs b (scipy.stats.ttest_rel): t, p, df = n - 1."""
    a, b = _vec(a), _vec(b)
    res = _st.ttest_rel(a, b, alternative=alternative)
    return {"t": float(res.statistic), "p": float(res.pvalue), "df": int(a.size - 1)}


def cohens_dz(a, b) -> float:
    """Cohen's d_z for paired data: mean(a - b) / sd(a - b, ddof=1).

    +-inf when all differences are equal and non-zero, nan when they are all zero or n < 2.
    """
    d = _vec(a) - _vec(b)
    if d.size < 2:
        return float("nan")
    m, s = d.mean(), d.std(ddof=1)
    if s == 0:
        return float("nan") if m == 0 else math.copysign(math.inf, m)
    return float(m / s)


def sign_flip_pvalue(diffs, alternative: str = "two-sided") -> float:
    """Exact sign-flip (paired permutation) p-value for the mean of paired differences.

    Under H0 (differences symmetric about 0) each of the 2^n sign patterns is equally likely;
    p = fraction of patterns whose mean is at least as extreme as the observed one
    (two-sided: |T*| >= |T|; 'greater': T* >= T; 'less': T* <= T), with a 1e-12 relative
    tolerance for ties.  Matches scipy.stats.permutation_test((d,), np.mean,
    permutation_type='samples', n_resamples=np.inf).  Enumerates all patterns (n <= 20).
    Smallest attainable p: :func:`sign_flip_floor` -- 0.25 two-sided for 3 seeds.
    """
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}")
    d = _vec(diffs)
    n = d.size
    if n == 0 or n > 20:
        raise ValueError("exact enumeration supports 1 <= n <= 20 differences")
    bits = (np.arange(2**n)[:, None] >> np.arange(n)) & 1
    null = ((1 - 2 * bits) @ d) / n
    obs = d.mean()
    tol = 1e-12 * max(float(np.abs(d).max()), np.finfo(float).tiny)
    if alternative == "two-sided":
        hits = np.abs(null) >= abs(obs) - tol
    elif alternative == "greater":
        hits = null >= obs - tol
    else:
        hits = null <= obs + tol
    return float(hits.mean())


def sign_flip_floor(n: int, alternative: str = "two-sided") -> float:
    """Smallest p-value an exact sign-flip test on n non-zero differences can return.

    2 / 2^n two-sided (the observed pattern and its mirror), 1 / 2^n one-sided.
    With 3 seeds: 0.25 two-sided, 0.125 one-sided -- never below 0.05.
    """
    if alternative not in _ALTERNATIVES:
        raise ValueError(f"alternative must be one of {_ALTERNATIVES}")
    return min(1.0, (2.0 if alternative == "two-sided" else 1.0) / 2.0**n)


def holm(pvalues) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (Holm 1979), in the input order.

    With p_(1) <= ... <= p_(m):  p~_(i) = min(1, max_{j <= i} (m - j + 1) p_(j)).
    Reject H_(i) at family-wise level alpha iff p~_(i) <= alpha.
    (scipy.stats.false_discovery_control does Benjamini-Hochberg/-Yekutieli, not Holm.)
    """
    p = _vec(pvalues)
    if np.any(np.isnan(p)) or np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must be in [0, 1] and not nan")
    m = p.size
    order = np.argsort(p, kind="stable")
    adj = np.minimum(1.0, np.maximum.accumulate((m - np.arange(m)) * p[order]))
    out = np.empty(m)
    out[order] = adj
    return out


def _interval(estimate: float, dev: np.ndarray, scale: float, alpha: float) -> tuple[float, float]:
    lo_q, hi_q = np.quantile(dev, [alpha / 2, 1 - alpha / 2])
    return float(estimate - scale * hi_q), float(estimate - scale * lo_q)


def subsample_bootstrap_ci(
    stat_fn: Callable[[np.ndarray], float],
    n: int,
    m: int | None = None,
    n_resamples: int = 200,
    alpha: float = 0.05,
    seed: int = 0,
) -> dict:
    """CI of an example-level statistic by subsampling m of n examples WITHOUT replacement.

    Method: random delete-d jackknife (Shao & Wu 1989; Shao & Tu 1995, sec. 2.3), d = n - m,
    equivalently m-out-of-n subsampling (Politis & Romano 1994) with the finite-population
    correction.  For each of ``n_resamples`` sorted index sets S (no duplicates, drawn with
    ``np.random.default_rng(seed)``) compute T_S = stat_fn(S); with
        c = sqrt(m / (n - m))
    the spread of c (T_S - mean_S T_S) estimates that of T_n.  Returned:
        se = c * sd(T_S),   CI = [T_n - c q_{1-a/2}, T_n - c q_{a/2}],  q: quantiles of
        T_S - mean(T_S).
    Why c = sqrt(m/(n-m)) and not the textbook sqrt(m/n): without replacement,
    Var(T_m) ~ sigma^2 / m * (1 - m/n), so sqrt(m/n) is only right as m/n -> 0; at the default
    m = n/2 it would give intervals 1/sqrt(2) too narrow.  With m = n/2, c = 1 (half-sampling).
    Deviations are taken from the mean of the T_S, not from T_n, so an estimator whose bias
    depends on the sample size (the *biased* linear CKA at n < d) does not shift the interval;
    the shift is reported as ``subsample_mean`` - ``estimate``.  Why not the ordinary
    bootstrap: duplicated examples invalidate the debiased (U-statistic) HSIC/CKA.
    Validity: the scaling assumes a sqrt(n)-rate statistic, true for CKA of dependent
    representations (fine-tuned vs base; checked by simulation in the tests).  Near
    independence (CKA ~ 0) HSIC_u is a degenerate U-statistic with rate n, and the interval
    is conservative (about n/m times too wide: 2x at half-sampling).

    ``stat_fn(idx)`` gets a sorted int array of unique example indices (``np.arange(n)`` for
    the full-sample estimate).  Returns dict(estimate, lo, hi, se, subsample_mean, m, n,
    n_resamples, alpha, method).
    """
    if m is None:
        m = n // 2
    if not 2 <= m < n:
        raise ValueError(f"need 2 <= m < n, got m={m}, n={n}")
    rng = np.random.default_rng(seed)
    estimate = float(stat_fn(np.arange(n)))
    reps = np.array([float(stat_fn(np.sort(rng.choice(n, size=m, replace=False)))) for _ in range(n_resamples)])
    c = math.sqrt(m / (n - m))
    center = float(reps.mean())
    lo, hi = _interval(estimate, reps - center, c, alpha)
    return {
        "estimate": estimate,
        "lo": lo,
        "hi": hi,
        "se": float(c * reps.std(ddof=1)),
        "subsample_mean": center,
        "m": int(m),
        "n": int(n),
        "n_resamples": int(n_resamples),
        "alpha": float(alpha),
        "method": "delete-d jackknife (m-out-of-n subsampling without replacement, scale sqrt(m/(n-m)))",
    }


def subsample_se(values, n: int, m: int) -> float:
    """Standard error over examples of a statistic from its values on subsets of m of n examples drawn without
    replacement (the sets of :func:`subsample_bootstrap_ci`): sqrt(m / (n - m)) * sd(values, ddof=1), the scale of
    that function's interval. nan with fewer than 2 finite values."""
    v = _vec(values)
    v = v[np.isfinite(v)]
    if v.size < 2 or not 0 < m < n:
        return float("nan")
    return float(math.sqrt(m / (n - m)) * v.std(ddof=1))


def jackknife_ci(stat_fn: Callable[[np.ndarray], float], n: int, alpha: float = 0.05) -> dict:
    """Delete-1 jackknife (Tukey 1958) standard error and normal-approximation CI.

    T_(i) = stat_fn(all indices but i),  se^2 = (n-1)/n sum_i (T_(i) - mean T_(.))^2,
    CI = T_n -+ z_{1-a/2} se.  Also returns the jackknife bias estimate (n-1)(mean T_(.) - T_n).
    n calls of ``stat_fn``; consistent for smooth statistics such as CKA (a smooth function of
    U/V-statistics), and no example is ever duplicated.
    """
    if n < 3:
        raise ValueError("jackknife needs n >= 3")
    full = np.arange(n)
    estimate = float(stat_fn(full))
    loo = np.array([float(stat_fn(np.delete(full, i))) for i in range(n)])
    se = math.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2))
    z = _st.norm.ppf(1 - alpha / 2)
    return {
        "estimate": estimate,
        "lo": estimate - z * se,
        "hi": estimate + z * se,
        "se": se,
        "bias": float((n - 1) * (loo.mean() - estimate)),
        "n": int(n),
        "alpha": float(alpha),
        "method": "delete-1 jackknife, normal interval",
    }


def noise_floor(seed_pair_drifts) -> dict:
    """Seed-to-seed drift: drift between different seeds of the SAME method (and task, layer).

    ``seed_pair_drifts``: the drift values (1 - CKA from :mod:`similarity`) of each seed pair,
    e.g. 3 values for seeds {0,1,2}; ``n`` says how many seed pairs it rests on (1 with 2 seeds).
    It measures how consistent a method's change is across seeds, not how large it is (see
    ``verdicts.moved``).  Returns dict(mean, sd, n, max).
    """
    v = _vec(seed_pair_drifts)
    out = seed_summary(v)
    out["max"] = float(v.max()) if v.size else float("nan")
    return out
