"""Corpus BLEU bootstrapped over meaning representations (MRs), for the learning gate and H1a of a generation task.

Corpus BLEU is not a mean of per-MR scores: it is computed from n-gram statistics summed over the corpus. Each MR's
sufficient statistics (`metrics.nlg.bleu_statistics`: hypothesis length, closest reference length, matches and
hypothesis n-grams of orders 1-4) are summed with bootstrap weights, and BLEU is computed from each weighted sum,
exactly as sacrebleu's `compute_bleu` with mteval's "exp" smoothing (the full sample equals `metrics.nlg.bleu`).
Pure numpy (analysis/ imports no task or metric code)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lorascope.analysis.verdicts import BOOTSTRAP

ORDER = 4
_LOG0 = -9999999999.0  # sacrebleu's my_log(0)


def bleu_from_statistics(stats: np.ndarray) -> np.ndarray:
    """BLEU as a FRACTION (sacrebleu's score / 100) of each row of summed statistics (k, 2 + 2 * ORDER)."""
    s = np.atleast_2d(np.asarray(stats, dtype=np.float64))
    sys_len, ref_len = s[:, 0], s[:, 1]
    correct, total = s[:, 2 : 2 + ORDER], s[:, 2 + ORDER : 2 + 2 * ORDER]
    out = np.zeros(len(s))
    for i in range(len(s)):
        if not np.any(correct[i]):
            continue
        bp = 1.0
        if sys_len[i] < ref_len[i]:
            bp = float(np.exp(1 - ref_len[i] / sys_len[i])) if sys_len[i] > 0 else 0.0
        precisions = [0.0] * ORDER
        smooth = 1.0
        for n in range(ORDER):
            if total[i, n] == 0:
                break
            if correct[i, n] == 0:
                smooth *= 2
                precisions[n] = 100.0 / (smooth * total[i, n])
            else:
                precisions[n] = 100.0 * correct[i, n] / total[i, n]
        logs = [np.log(p) if p > 0 else _LOG0 for p in precisions]
        out[i] = bp * float(np.exp(sum(logs) / ORDER)) / 100.0
    return out


def bleu_bootstrap(stats: Mapping[str, np.ndarray], trivial: Mapping[str, np.ndarray], n_boot: int = BOOTSTRAP,
                   seed: int = 0) -> dict:  # fmt: skip
    """Every cell's BLEU (fraction) and the trivial baseline's on the full set of MRs and on `n_boot` resamples of
    the MRs (with replacement; the SAME resamples for every cell, so differences are paired), the shape
    `verdicts.example_bootstrap` returns. `stats`: {cell: (n MRs, 10) statistics}; `trivial`: {predictor: (n, 10)}:
    the baseline on a resample is the better trivial predictor there (as the majority baseline is the best constant
    class). Returns {"full": {cell: value}, "baseline", "boot": {cell: (n_boot,)}, "boot_baseline": (n_boot,)}."""
    first = next(iter(stats.values()))
    n = len(first)
    rng = np.random.default_rng(seed)
    W = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)])  # row 0: the full sample
    vals = {c: bleu_from_statistics(W @ np.asarray(s, dtype=np.float64)) for c, s in stats.items()}
    base = np.max(np.vstack([bleu_from_statistics(W @ np.asarray(t, dtype=np.float64)) for t in trivial.values()]), axis=0)
    return {"full": {c: float(v[0]) for c, v in vals.items()}, "baseline": float(base[0]),
            "boot": {c: v[1:] for c, v in vals.items()}, "boot_baseline": base[1:]}  # fmt: skip
