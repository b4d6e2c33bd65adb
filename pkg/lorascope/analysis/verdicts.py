"""The verdict rules: when the data let the report say "supported", and what it says otherwise.

Each rule is one function here, imported by every caller (the drift summary, the report, the bench phase); no
caller restates one. docs/analysis.md states each rule with its justification. Pure numpy/scipy.

Vocabulary (per task, batch size or layer, and overall):
  supported          the one-sided (1 - ALPHA) bound over the unit of replication clears the threshold AND every
                     replicate (seed, repeat) lies on the claimed side of it
  not supported      the opposite one-sided bound is past the threshold (the data exclude the claim)
  inconclusive       neither; also fewer than 2 replicates, zero variance (no interval can be estimated), or a
                     missing error component (no per-example predictions)
  exploratory: N seeds  (H1a, H1b) fewer than MIN_SEEDS seeds per method: the numbers and intervals are shown, no
                     verdict is drawn from them (`exploratory`)
  indistinguishable  (H1b) the reference's drift from the base is not distinguishable from 0 (`moved`): there is no
                     drift to reduce
  not assessable     a learning gate failed: a cell did not beat its majority baseline (`learning_gate`)
  not measured       no data (no bench bundle)
  not compared       (per layer) an entry left out of every mean: a method cannot change it by construction, or
                     its CKA is undefined

Units of replication: training seeds for H1a and H1b (3 per method in the studies; fewer than MIN_SEEDS give
exploratory numbers, not verdicts), fresh-load repeats for H2.
The printed interval of every verdict is [lower, upper] one-sided (1 - ALPHA) = 97.5% bounds, i.e. a two-sided
(1 - 2 ALPHA) = 95% interval: "supported" means the whole 95% interval is on the claimed side.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from scipy import stats as _st

ALPHA = 0.025  # one-sided level of every bound a verdict uses: the two ends of a two-sided 95% interval
MIN_SEEDS = 3  # fewer seeds per method: exploratory numbers, no H1a / H1b verdict
SMALL_CHANGE_DRIFT = 0.2  # `moved`'s shared share is given up to this drift (1 - CKA ~ squared size of the change)
LEARN_ALPHA = 0.05  # one-sided level of the learning gate's bootstrap bound
POWER = 0.80  # target power of the "seeds needed" statement
N_MAX = 1000  # the seeds-needed search stops here
LEARN_MARGIN = 0.10  # a cell learned: it closes >= 10% of the way from its majority baseline to a perfect score ...
BOOTSTRAP = 2000  # ... and its gain is above 0 at the one-sided 95% bootstrap bound (LEARN_ALPHA) over examples

_IV = f"{100 * (1 - 2 * ALPHA):g}%"  # the printed interval of a verdict
SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE = "supported", "not supported", "inconclusive"
INDISTINGUISHABLE, NOT_ASSESSABLE, NOT_MEASURED = "indistinguishable", "not assessable", "not measured"
NOT_COMPARED = "not compared"  # a per-layer entry left out of the means (by construction or undefined CKA)
EXPLORATORY = "exploratory"  # the category of `exploratory(n)` verdicts
# every verdict of H1a / H1b, in the order the overall line counts them
CATEGORIES = (SUPPORTED, NOT_SUPPORTED, INCONCLUSIVE, INDISTINGUISHABLE, NOT_ASSESSABLE, EXPLORATORY, NOT_MEASURED)


def exploratory(n_seeds: int) -> str:
    """The verdict of a rule over seeds with fewer than MIN_SEEDS seeds: "exploratory: 2 seeds"."""
    return f"{EXPLORATORY}: {n_seeds} seed{'s' if n_seeds != 1 else ''}"


def category(verdict: str) -> str:
    """The category a verdict is counted in (`exploratory: 2 seeds` -> `exploratory`)."""
    return EXPLORATORY if verdict.startswith(EXPLORATORY) else verdict


def seeds_warning(n_seeds: int) -> str | None:
    """What `lorascope validate` warns when a study's seeds cannot support an H1a / H1b verdict; None when they can."""
    if n_seeds >= MIN_SEEDS:
        return None
    why = (f"the one-sided {100 * (1 - ALPHA):g}% t bound uses t = {_st.t.ppf(1 - ALPHA, n_seeds - 1):.2f} on "
           f"{n_seeds - 1} degree{'s' if n_seeds != 2 else ''} of freedom, so the seeds agreeing, not the size of the "
           "effect, decides" if n_seeds >= 2 else "one seed has no spread to estimate")  # fmt: skip
    return (f"{n_seeds} seed{'s' if n_seeds != 1 else ''} per method: H1a and H1b need at least {MIN_SEEDS} for a verdict "
            f"({why}); the report will read \"{exploratory(n_seeds)}\" with the numbers and intervals, and no verdict")  # fmt: skip

RULES = {
    "H1a": "per task and (reference, compared method) pair: gap = mean(reference) - mean(method) in pp over seeds; its standard error combines the seed spread "
           "(Welch) and the validation sampling error (paired bootstrap over examples), its degrees of freedom come "
           "from the seeds alone; supported iff the one-sided "
           "97.5% upper bound <= margin and every seed's own gap (paired by seed) <= margin; not supported iff the "
           "one-sided 97.5% lower bound > margin; not assessable if a full cell did not learn; with fewer than 3 "
           "seeds per method: exploratory (no verdict); else inconclusive",
    "H1b": "per task and (reference, compared method) pair: reduction = 100 (FT - method) / FT of each seed's "
           "drift, averaged over the entries both methods can change (paired by seed); supported iff "
           "the one-sided 97.5% t lower bound over seeds >= threshold and every seed's reduction >= threshold; not "
           "supported iff the one-sided 97.5% t upper bound < threshold; not assessable if any cell of either method "
           "did not learn; indistinguishable if the reference's drift from the base is not distinguishable from 0 "
           "(one-sided 97.5% lower bound, seed and example spread, <= 0); with fewer than 3 seeds per method: "
           "exploratory (no verdict); else inconclusive. The CI over examples is for these trained models only and "
           "does not enter the verdict; the seed-to-seed drift is reported as consistency, not as a bar",
    "H2": "per backend, regime and batch size: overhead = exp(mean over repeats of log(separate / merged)) - 1, paired "
          "by repeat; supported iff the one-sided 97.5% t upper bound (log scale) <= limit and every repeat's overhead "
          "<= limit; not supported iff the one-sided 97.5% lower bound > limit; one repeat or zero variance: "
          "inconclusive",
    "overall": "not supported if any part is; supported if every part is; not assessable / indistinguishable if every "
               "part is; exploratory if a part is and none is supported or not supported; else inconclusive",
    "pairs": "the study's reference pair (the first LoRA method against the first full method) gets one verdict, "
             "combined over its tasks; every pair is counted by its verdict; no single word is given for the family "
             "of methods",
}  # fmt: skip


def _v(verdict: str, evidence: str, **fields: Any) -> dict:
    return {"verdict": verdict, "evidence": evidence, **fields}


def combine(parts: Mapping[str, dict]) -> str:
    """Overall verdict of a hypothesis judged on several parts (tasks, batch sizes): `RULES["overall"]`."""
    verdicts = [p["verdict"] for p in parts.values()]
    if not verdicts:
        return NOT_MEASURED
    if NOT_SUPPORTED in verdicts:
        return NOT_SUPPORTED
    for v in (SUPPORTED, NOT_ASSESSABLE, INDISTINGUISHABLE, NOT_MEASURED):
        if all(x == v for x in verdicts):
            return v
    explore = [v for v in verdicts if category(v) == EXPLORATORY]
    if explore and SUPPORTED not in verdicts:
        return explore[0]
    return INCONCLUSIVE


def counts(verdicts: Mapping[str, str]) -> dict[str, int]:
    """{category: how many} of {name: verdict} (pairs), over every category of `CATEGORIES` (0 where none)."""
    got = [category(v) for v in verdicts.values()]
    return {c: got.count(c) for c in CATEGORIES}


# ------------------------------------------------------------------------------------------------ seed-level bounds
def t_bounds(values: Sequence[float], alpha: float = ALPHA) -> dict:
    """Mean, SD (ddof 1), n and the one-sided (1 - alpha) t bounds of the mean: mean -+ t_{1-alpha, n-1} sd / sqrt(n).
    Bounds are None for n < 2 or zero spread (no interval can be estimated)."""
    v = np.asarray(list(values), dtype=np.float64)
    n = int(v.size)
    mean = float(v.mean()) if n else float("nan")
    sd = float(v.std(ddof=1)) if n > 1 else float("nan")
    if n < 2 or not math.isfinite(sd) or sd == 0:
        return {"mean": mean, "sd": sd, "n": n, "lo": None, "hi": None}
    half = float(_st.t.ppf(1 - alpha, n - 1)) * sd / math.sqrt(n)
    return {"mean": mean, "sd": sd, "n": n, "lo": mean - half, "hi": mean + half}


def seeds_needed(effect: float, seed_var: float, fixed_var: float = 0.0, df_per_n=lambda n: n - 1, alpha: float = ALPHA,
                 power: float = POWER, n_max: int = N_MAX) -> dict:  # fmt: skip
    """Smallest number of seeds n (per method) at which a one-sided level-alpha t-test of "effect > 0" has the given
    power, if the observed effect and spreads were the truth: se(n)^2 = seed_var / n + fixed_var, noncentral t with
    noncentrality effect / se(n) and the seeds' degrees of freedom `df_per_n(n)` (the fixed part, e.g. validation
    sampling error, does not shrink with more seeds and adds no degrees of freedom). {"n": int or None, "reason"}."""
    if not (math.isfinite(effect) and math.isfinite(seed_var)):
        return {"n": None, "reason": "not computable (non-finite input)"}
    if effect <= 0:
        return {"n": None, "reason": "no number of seeds: the observed estimate is on the wrong side of the threshold"}
    if seed_var <= 0 and fixed_var <= 0:
        return {"n": None, "reason": "not computable: no spread observed"}
    for n in range(2, n_max + 1):
        s = seed_var / n
        se2 = s + fixed_var
        df = float(df_per_n(n))
        crit = _st.norm.ppf(1 - alpha) if math.isinf(df) else _st.t.ppf(1 - alpha, df)
        nc = effect / math.sqrt(se2)
        pw = 1 - (_st.norm.cdf(crit - nc) if math.isinf(df) else _st.nct.cdf(crit, df, nc))
        if pw >= power:
            return {"n": n, "reason": f"{n} seeds per method for {power:.0%} power at the observed mean and spread"}
    return {"n": None, "reason": f"more than {n_max} seeds per method (the fixed error alone is too large)"
            if fixed_var > 0 and effect / math.sqrt(fixed_var) < _st.norm.ppf(1 - alpha) + _st.norm.ppf(power)
            else f"more than {n_max} seeds per method"}  # fmt: skip


def _needed_text(needed: dict) -> str:
    return f"seeds needed: {needed['reason']}"


# ------------------------------------------------------------------------------------------------ example level
def _metric(tp: np.ndarray, fp: np.ndarray, fn: np.ndarray, correct: np.ndarray, total: np.ndarray, metric: str) -> np.ndarray:
    if metric == "accuracy":
        return correct / total
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(denom > 0, 2 * tp / np.where(denom > 0, denom, 1), 0.0)


def example_bootstrap(labels: np.ndarray, preds: Mapping[str, np.ndarray], metric: str, n_boot: int = BOOTSTRAP,
                      seed: int = 0, trivial_value: float | None = None) -> dict:  # fmt: skip
    """Every cell's metric, and the trivial baseline's, on the full validation set and on `n_boot` bootstrap
    resamples of its examples (with replacement; the SAME resamples for every cell, so differences are paired).

    metric: "accuracy" or "f1" (binary, class 1 positive, as `training.classification_metrics`), or any other metric
    of `metrics.glue` (Matthews, Pearson, Spearman: computed on each resample's examples). `trivial_value`: the
    trivial predictor's score when it does not depend on the data (a correlation: 0, also taken for a resample on which
    the metric is undefined); None: the best constant class predictor on that resample (the largest class share for
    accuracy, F1 of always predicting class 1 for F1). Returns {"full": {cell: value}, "baseline": value, "boot":
    {cell: (n_boot,)}, "boot_baseline": (n_boot,)}."""
    if metric not in ("accuracy", "f1") or trivial_value is not None:
        return _example_bootstrap_any(labels, preds, metric, n_boot, seed, trivial_value)
    y = np.asarray(labels, dtype=np.int64)
    n = y.size
    rng = np.random.default_rng(seed)
    W = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)])  # row 0: the full sample
    total = W.sum(axis=1)

    def value(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p, dtype=np.int64)
        return _metric(W @ ((p == 1) & (y == 1)), W @ ((p == 1) & (y != 1)), W @ ((p != 1) & (y == 1)), W @ (p == y),
                       total, metric)  # fmt: skip

    vals = {c: value(p) for c, p in preds.items()}
    constants = [value(np.full(n, k)) for k in np.unique(y)] + [value(np.ones(n, dtype=np.int64))]
    base = np.max(np.vstack(constants), axis=0)
    return {"full": {c: float(v[0]) for c, v in vals.items()}, "baseline": float(base[0]),
            "boot": {c: v[1:] for c, v in vals.items()}, "boot_baseline": base[1:]}  # fmt: skip


def _example_bootstrap_any(labels: np.ndarray, preds: Mapping[str, np.ndarray], metric: str, n_boot: int, seed: int,
                           trivial_value: float | None) -> dict:  # fmt: skip
    """`example_bootstrap` for any metric of `metrics.glue`: the same resamples (the same multinomial draws), the
    metric computed on each resample's examples."""
    from lorascope.metrics.glue import GLUE_METRICS  # numpy/scipy only

    if metric not in GLUE_METRICS:
        raise ValueError(f"metric must be one of {sorted(GLUE_METRICS)}, got {metric!r}")
    score = GLUE_METRICS[metric]
    y = np.asarray(labels)
    n = y.size
    rng = np.random.default_rng(seed)
    W = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)]).astype(np.int64)
    rows = [np.repeat(np.arange(n), w) for w in W]  # row 0: the full sample

    def value(p: np.ndarray) -> np.ndarray:
        p = np.asarray(p)
        out = np.array([score(y[ix], p[ix]) for ix in rows], dtype=np.float64)
        return out if trivial_value is None else np.where(np.isfinite(out), out, trivial_value)

    vals = {c: value(p) for c, p in preds.items()}
    if trivial_value is not None:
        base = np.full(n_boot + 1, float(trivial_value))
    else:
        base = np.max(np.vstack([value(np.full(n, k)) for k in np.unique(y)]), axis=0)
    return {"full": {c: float(v[0]) for c, v in vals.items()}, "baseline": float(base[0]),
            "boot": {c: v[1:] for c, v in vals.items()}, "boot_baseline": base[1:]}  # fmt: skip


def learning_gate(value: float, baseline: float, boot_gain: np.ndarray | None, alpha: float = LEARN_ALPHA,
                  margin: float = LEARN_MARGIN) -> dict:  # fmt: skip
    """Did a cell learn its task? Its metric must beat the majority baseline by at least `margin` x (1 - baseline)
    (a tenth of the headroom: 5 pp at a 50% baseline) AND the gain over the baseline must be above 0 at the
    one-sided (1 - alpha) percentile bound of the paired bootstrap over validation examples. Without per-example
    predictions (boot_gain None) only the first condition is checked; with no baseline (nan) `learned` is None
    (not checked), which no verdict treats as learned."""
    need = margin * (1.0 - baseline)
    gain = value - baseline
    lower = float(np.quantile(boot_gain, alpha)) if boot_gain is not None else None
    learned = None if not math.isfinite(gain) else bool(gain >= need and (lower is None or lower > 0))
    return {"learned": learned, "value": float(value), "baseline": float(baseline), "gain": float(gain),
            "margin": float(need), "gain_lower": lower, "predictions": boot_gain is not None}  # fmt: skip


def example_se_of_gap(boot: Mapping[str, np.ndarray], full_cells: Sequence[str], lora_cells: Sequence[str],
                      scale: float = 100.0) -> float:  # fmt: skip
    """Standard error (bootstrap SD, in pp) of mean(full metrics) - mean(LoRA metrics) over validation examples."""
    g = np.mean([boot[c] for c in full_cells], axis=0) - np.mean([boot[c] for c in lora_cells], axis=0)
    return float(scale * g.std(ddof=1))


# ------------------------------------------------------------------------------------------------ H1a
def seed_df(var_a: float, n_a: int, var_b: float, n_b: int) -> float:
    """Welch-Satterthwaite degrees of freedom of s_a^2/n_a + s_b^2/n_b (var_*: the sample variances); with no
    spread in either (equal variances, both 0) the pooled n_a + n_b - 2, Welch's value for equal variances."""
    va, vb = var_a / n_a, var_b / n_b
    den = va**2 / (n_a - 1) + vb**2 / (n_b - 1)
    return (va + vb) ** 2 / den if den > 0 else float(n_a + n_b - 2)


def h1a(full: Mapping[Any, float], lora: Mapping[Any, float], margin_pp: float, *, example_se_pp: float | None,
        gates: Sequence[str] = (), scale: float = 100.0, alpha: float = ALPHA,
        names: tuple[str, str] = ("full", "LoRA"), unit: str = "pp", min_seeds: int = MIN_SEEDS) -> dict:  # fmt: skip
    """H1a (non-inferiority) on one task: `RULES["H1a"]`. full/lora: {seed: metric in [0, 1]} (x `scale` -> pp) of
    the reference and the compared method (any kind); `names` and `unit` (the points of the task's metric: pp for a
    share, "points" of a correlation) only word the evidence.

    Variance of the gap = s_full^2 / k_full + s_lora^2 / k_lora (seeds) + example_se_pp^2 (validation sampling,
    shared by both methods because they are scored on the same examples); degrees of freedom from the seeds alone
    (Welch-Satterthwaite of the seed part, `seed_df`): the example part enters the standard error, not the df, so
    H1a is never surer than the seeds allow. `gates`: reasons the task cannot be assessed (a full cell that did not
    learn). Fewer than `min_seeds` seeds per method: `exploratory(n)`, with the numbers and the interval."""
    f = {s: scale * float(v) for s, v in full.items()}
    lo_ = {s: scale * float(v) for s, v in lora.items()}
    fv, lv = np.array(list(f.values())), np.array(list(lo_.values()))
    if not fv.size or not lv.size or not np.all(np.isfinite(np.concatenate([fv, lv]))):
        return _v(INCONCLUSIVE, "missing metric values")
    gap = float(fv.mean() - lv.mean())
    seed_gaps = {s: f[s] - lo_[s] for s in sorted(set(f) & set(lo_))}
    rn, mn = names
    ev = f"{rn} {fv.mean():.2f} (n={fv.size}), {mn} {lv.mean():.2f} (n={lv.size}); gap {rn}-{mn} {gap:+.2f} {unit}"
    out: dict[str, Any] = {"gap_pp": gap, "seed_gaps_pp": {str(s): g for s, g in seed_gaps.items()}, "lo": None,
                           "hi": None, "margin_pp": margin_pp, "example_se_pp": example_se_pp}  # fmt: skip
    if gates:
        return _v(NOT_ASSESSABLE, ev + "; " + "; ".join(gates), **out)
    few = min(fv.size, lv.size)
    if few < 2:
        return _v(exploratory(few) if few < min_seeds else INCONCLUSIVE, ev + "; fewer than 2 seeds per method", **out)
    vf, vl = fv.var(ddof=1) / fv.size, lv.var(ddof=1) / lv.size
    ve = (example_se_pp or 0.0) ** 2
    var = vf + vl + ve
    out.update(seed_se_pp=math.sqrt(vf + vl))
    if var == 0:
        verdict = exploratory(few) if few < min_seeds else INCONCLUSIVE
        return _v(verdict, ev + "; no variation over seeds or examples: no interval can be estimated", **out)
    df = seed_df(float(fv.var(ddof=1)), fv.size, float(lv.var(ddof=1)), lv.size)
    q = float(_st.t.ppf(1 - alpha, df))
    lo, hi = gap - q * math.sqrt(var), gap + q * math.sqrt(var)
    sv = fv.var(ddof=1) + lv.var(ddof=1)
    needed = seeds_needed(margin_pp - gap, sv, ve, lambda n: 2 * (n - 1), alpha)
    out.update(lo=lo, hi=hi, df=df, needed_seeds=needed)
    ex = f"{example_se_pp:.2f}" if example_se_pp is not None else "n/a"
    ev += (f", {_IV} interval [{lo:.2f}, {hi:.2f}] (SE over seeds {math.sqrt(vf + vl):.2f}, over examples {ex}; "
           f"df {df:.1f} from the seeds) vs margin {margin_pp:g}; seed gaps " + ", ".join(f"{g:+.1f}" for g in seed_gaps.values()))  # fmt: skip
    if few < min_seeds:
        return _v(exploratory(few), ev + f"; fewer than {min_seeds} seeds per method: no verdict", **out)
    if example_se_pp is None:  # the interval lacks a component: too narrow to decide either way
        return _v(INCONCLUSIVE, ev + "; validation sampling error unknown (no per-example predictions)", **out)
    if lo > margin_pp:
        return _v(NOT_SUPPORTED, ev, **out)
    worst = max(seed_gaps.values(), default=math.inf)
    if hi <= margin_pp and worst <= margin_pp:
        return _v(SUPPORTED, ev, **out)
    why = "upper bound above the margin" if hi > margin_pp else "a seed's own gap is above the margin"
    return _v(INCONCLUSIVE, ev + f" ({why}; {_needed_text(needed)})", **out)


# ------------------------------------------------------------------------------------------------ H1b
def h1b(ft: Mapping[Any, float], lora: Mapping[Any, float], min_pct: float, *, gates: Sequence[str] = (),
        indistinguishable: Sequence[str] = (), alpha: float = ALPHA, min_seeds: int = MIN_SEEDS) -> dict:  # fmt: skip
    """H1b on one task (or one layer): `RULES["H1b"]`. ft/lora: {seed: drift (mean over the entries both methods can
    change, or one entry)}, paired by seed. `gates`: learning-gate failures (-> not assessable); `indistinguishable`:
    why the reference did not move (`moved`; -> indistinguishable). Fewer than `min_seeds` seeds: `exploratory(n)`,
    with the numbers and the interval."""
    seeds = sorted(set(ft) & set(lora))
    red = {s: float(100.0 * (ft[s] - lora[s]) / ft[s]) if ft[s] != 0 else float("nan") for s in seeds}
    b = t_bounds(list(red.values()), alpha)
    out: dict[str, Any] = {"estimate_pct": b["mean"], "sd_pct": b["sd"], "n": b["n"], "lo": b["lo"], "hi": b["hi"],
                           "seed_reductions_pct": {str(s): r for s, r in red.items()}, "threshold_pct": min_pct}  # fmt: skip
    per_seed = ", ".join(f"{r:.1f}" for r in red.values())
    ev = f"reduction per seed {per_seed} %, mean {b['mean']:.1f}%"
    if gates:
        return _v(NOT_ASSESSABLE, ev + "; " + "; ".join(gates), **out)
    few = exploratory(b["n"]) if b["n"] < min_seeds else None
    if indistinguishable:  # whether the reference moved is read over seeds too: with too few, no verdict either
        return _v(few or INDISTINGUISHABLE, ev + "; " + "; ".join(indistinguishable), **out)
    if b["n"] < 2 or not all(math.isfinite(r) for r in red.values()):
        return _v(few or INCONCLUSIVE, ev + "; fewer than 2 seeds or a non-finite reduction", **out)
    if b["lo"] is None:
        return _v(few or INCONCLUSIVE, ev + "; no seed-to-seed variation: no interval can be estimated", **out)
    needed = seeds_needed(b["mean"] - min_pct, b["sd"] ** 2, 0.0, alpha=alpha)
    out["needed_seeds"] = needed
    ev += f", {_IV} interval over seeds [{b['lo']:.1f}, {b['hi']:.1f}] vs threshold {min_pct:g}%"
    if few:
        return _v(few, ev + f"; fewer than {min_seeds} seeds per method: no verdict", **out)
    if b["hi"] < min_pct:
        return _v(NOT_SUPPORTED, ev, **out)
    if b["lo"] >= min_pct and min(red.values()) >= min_pct:
        return _v(SUPPORTED, ev, **out)
    why = "lower bound below the threshold" if b["lo"] < min_pct else "a seed's own reduction is below the threshold"
    return _v(INCONCLUSIVE, ev + f" ({why}; {_needed_text(needed)})", **out)


def moved(drift: Mapping[Any, float], example_se: float | None, seed_to_seed: float | None = None,
          seed_pairs: int = 0, alpha: float = ALPHA) -> dict:  # fmt: skip
    """Did a method move at all? Its drift from the base (per seed: {seed: drift}) against 0.

    Standard error = sqrt(s^2 / k + example_se^2): the seed spread (k seeds) and the example spread of the mean over
    seeds (the subsampling SE over validation examples, `stats.subsample_se`; None when not measured), degrees of
    freedom k - 1 from the seeds (the normal quantile with a single seed). `moved` iff every seed's drift is above 0
    and the one-sided (1 - alpha) lower bound is above 0 (with no spread at all: iff the drift is above 0).

    The seed-to-seed drift (`seed_to_seed`: mean over the method's seed pairs, `seed_pairs` of them) is reported
    beside it as how CONSISTENT the change is across seeds, never as a bar to clear: for small changes 1 - CKA grows
    with the squared size of the change, so with a part S shared by the seeds and seed parts N_s, drift from the base
    is about |S|^2 + |N|^2 and two seeds differ by about 2|N|^2. A change made only of seed parts has seed-to-seed
    drift about twice its drift from the base however large it is; `shared_share` = 1 - seed_to_seed / (2 drift)
    estimates |S|^2 / (|S|^2 + |N|^2) in that small-change approximation (about 0: seed-specific; about 1: shared),
    given only while the drift is at most SMALL_CHANGE_DRIFT (None above: the approximation does not hold there).
    docs/analysis.md has the simulation that justifies the rule (tests/analysis/test_moved.py)."""
    values = np.array([float(v) for v in drift.values()], dtype=np.float64)
    k = int(values.size)
    finite = bool(k) and bool(np.all(np.isfinite(values)))
    mean = float(values.mean()) if k else float("nan")
    seed_var = float(values.var(ddof=1)) / k if k > 1 else 0.0
    ex_var = float(example_se) ** 2 if example_se is not None and math.isfinite(example_se) else 0.0
    se = math.sqrt(seed_var + ex_var) if finite else float("nan")
    df = k - 1
    q = float(_st.t.ppf(1 - alpha, df)) if df >= 1 else float(_st.norm.ppf(1 - alpha))
    lo = mean - q * se if finite else float("nan")
    is_moved = bool(finite and np.all(values > 0) and (lo > 0 if se > 0 else mean > 0))
    share = (1.0 - seed_to_seed / (2.0 * mean) if seed_to_seed is not None and math.isfinite(seed_to_seed)
             and finite and 0 < mean <= SMALL_CHANGE_DRIFT else None)  # fmt: skip
    words = (f"drift from the base {mean:.4f} (n={k} seeds), one-sided {100 * (1 - alpha):g}% lower bound {lo:.4f} "
             f"(SE over seeds {math.sqrt(seed_var):.4f}, over examples "
             f"{'n/a' if example_se is None else format(example_se, '.4f')}; df {df})")  # fmt: skip
    if seed_to_seed is not None:
        words += f"; seed-to-seed drift {seed_to_seed:.4f} over {seed_pairs} seed pair{'s' if seed_pairs != 1 else ''} (consistency)"
    return {"moved": is_moved, "mean": mean, "lo": lo if finite else None, "se": se if finite else None,
            "se_seeds": math.sqrt(seed_var), "se_examples": example_se, "df": df, "n": k,
            "seed_to_seed": seed_to_seed, "seed_pairs": seed_pairs, "shared_share": share, "evidence": words}  # fmt: skip


# ------------------------------------------------------------------------------------------------ H2 and latency
def overhead(candidate_ms: Sequence[float], baseline_ms: Sequence[float], alpha: float = ALPHA) -> dict:
    """THE overhead estimator (H2's, and every overhead the bench and the report print): per-repeat mean batch
    latencies (ms) of a candidate and a baseline, repeat r of one paired with repeat r of the other (run under the
    same conditions). l_r = log(candidate_r / baseline_r); estimate 100 (exp(mean l) - 1) %, one-sided (1 - alpha)
    bounds 100 (exp(mean l -+ t_{1-alpha, n-1} sd(l) / sqrt(n)) - 1): always above -100%, so the implied latency
    ratio stays positive. Bounds None for one repeat or zero variance."""
    c, b = np.asarray(candidate_ms, dtype=np.float64), np.asarray(baseline_ms, dtype=np.float64)
    if c.size != b.size or c.size == 0:
        raise ValueError(f"overhead: need the same number of repeats (got {c.size} and {b.size})")
    if np.any(~np.isfinite(c)) or np.any(~np.isfinite(b)) or np.any(c <= 0) or np.any(b <= 0):
        raise ValueError("overhead: latencies must be finite and positive")
    logs = np.log(c / b)
    t = t_bounds(logs, alpha)
    pct = lambda x: None if x is None else float(100.0 * math.expm1(x))  # noqa: E731
    return {"pct": pct(t["mean"]), "lo": pct(t["lo"]), "hi": pct(t["hi"]), "n": int(c.size),
            "per_repeat_pct": [float(100.0 * math.expm1(x)) for x in logs], "interval_pct": 100 * (1 - 2 * alpha),
            "estimator": "geometric mean of per-repeat ratios, t bounds on the log scale"}  # fmt: skip


def h2(separate_ms: Sequence[float], merged_ms: Sequence[float], limit_pct: float, alpha: float = ALPHA) -> dict:
    """THE H2 rule for one backend, regime and batch size (`RULES["H2"]`) on `overhead(separate, merged)`.
    Returns the overhead's fields plus limit_pct, verdict and evidence."""
    out = {**overhead(separate_ms, merged_ms, alpha), "limit_pct": limit_pct}
    ev = f"overhead {out['pct']:.1f}% (n={out['n']} repeats"
    if out["n"] < 2:
        return _v(INCONCLUSIVE, ev + ", a single repeat: no interval)", **out)
    if out["lo"] is None:
        return _v(INCONCLUSIVE, ev + ", zero variance: no interval)", **out)
    ev += f", {_IV} interval [{out['lo']:.1f}, {out['hi']:.1f}]) vs limit {limit_pct:g}%"
    if out["lo"] > limit_pct:
        return _v(NOT_SUPPORTED, ev, **out)
    if out["hi"] <= limit_pct and max(out["per_repeat_pct"]) <= limit_pct:
        return _v(SUPPORTED, ev, **out)
    why = "upper bound above the limit" if out["hi"] > limit_pct else "a repeat above the limit"
    return _v(INCONCLUSIVE, ev + f" ({why})", **out)


def positive_interval(values: Sequence[float], confidence: float = 0.95) -> dict:
    """Interval for a positive quantity measured once per repeat (latency, throughput): t-interval of the mean of
    log(values), exponentiated, so it never reaches 0. `mean` is the arithmetic mean (as printed elsewhere),
    `geo_mean` the centre of the interval; low/high None with a single repeat."""
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0 or np.any(v <= 0) or np.any(~np.isfinite(v)):
        raise ValueError("positive_interval: needs finite positive values")
    b = t_bounds(np.log(v), (1 - confidence) / 2)
    if v.size >= 2 and b["lo"] is None:  # zero spread: the interval is the value itself
        b["lo"] = b["hi"] = b["mean"]
    return {"mean": float(v.mean()), "geo_mean": float(math.exp(b["mean"])), "n": int(v.size), "confidence": confidence,
            "low": None if b["lo"] is None else float(math.exp(b["lo"])),
            "high": None if b["hi"] is None else float(math.exp(b["hi"])), "scale": "log"}  # fmt: skip


def overheads(configs: Sequence[dict], candidate, baseline, limit_pct: float | None = None) -> dict[str, dict]:
    """Per batch size: `overhead` (or, with limit_pct, `h2`) of the candidate config against the baseline config of
    the same batch size, from the bench summary's `mean_batch_ms_per_repeat`. candidate/baseline: predicates."""
    out = {}
    for c in configs:
        if not candidate(c):
            continue
        base = [b for b in configs if baseline(b) and b["batch_size"] == c["batch_size"]]
        if base:
            cm, bm = c["mean_batch_ms_per_repeat"], base[0]["mean_batch_ms_per_repeat"]
            out[str(c["batch_size"])] = overhead(cm, bm) if limit_pct is None else h2(cm, bm, limit_pct)
    return out


def h2_parts(configs: Sequence[dict], limit_pct: float, prefix: str = "") -> dict[str, dict]:
    """`h2` for every (execution regime, batch size) of one backend's bench configs: separate against merged.
    Configs carry `mode`, `batch_size`, `mean_batch_ms_per_repeat` and optionally `regime` (eager / compiled); keys
    read "<prefix> <regime> batch <b>". The bench phase's summary and the drift/report H2 both call this."""
    out: dict[str, dict] = {}
    for regime in dict.fromkeys(c.get("regime") for c in configs):
        sel = [c for c in configs if c.get("regime") == regime]
        by = overheads(sel, lambda c: c["mode"] == "separate", lambda c: c["mode"] == "merged", limit_pct)
        for bs in sorted(by, key=int):
            key = " ".join(x for x in (prefix, regime, f"batch {bs}") if x)
            out[key] = {**by[bs], "batch_size": int(bs), "regime": regime}
    return out


def h2_summary(configs: Sequence[dict], limit_pct: float) -> dict:
    """H2 for one backend's bench summary: its parts (`h2_parts`), the overall verdict (`combine`), the rule, and the
    largest overhead."""
    parts = h2_parts(configs, limit_pct)
    worst = max(parts.values(), key=lambda p: p["pct"], default=None)
    return {"verdict": combine(parts), "by": parts, "limit_pct": limit_pct, "rule": RULES["H2"],
            "max_overhead_pct": worst["pct"] if worst else None}  # fmt: skip
