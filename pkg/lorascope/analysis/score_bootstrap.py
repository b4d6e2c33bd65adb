"""A mean of per-example scores bootstrapped over the examples, for the learning gate and H1a of a task whose metric
is such a mean (extractive QA: SQuAD v2 exact and F1 per question at the dev-chosen no-answer threshold,
`metrics.squad_v2.question_scores`, as the train phase writes them in predictions.jsonl).

The resamples are drawn as `text_bootstrap.bleu_bootstrap` and `verdicts.example_bootstrap` draw theirs (row 0 of the
weights is the full sample, then `n_boot` multinomial draws), the SAME for every cell so differences are paired; the
full sample's value is the plain mean, the reported metric. Pure numpy (analysis/ imports no task or metric code)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from lorascope.analysis.verdicts import BOOTSTRAP


def mean_bootstrap(scores: Mapping[str, np.ndarray], trivial: Mapping[str, np.ndarray], n_boot: int = BOOTSTRAP,
                   seed: int = 0) -> dict:  # fmt: skip
    """Every cell's mean score and the trivial baseline's on the full set of examples and on `n_boot` resamples of
    them, the shape `verdicts.example_bootstrap` returns. `scores`: {cell: (n,) per-example scores}; `trivial`:
    {predictor: (n,)}: the baseline on a resample is the better trivial predictor there. Returns {"full": {cell:
    value}, "baseline", "boot": {cell: (n_boot,)}, "boot_baseline": (n_boot,)}."""
    arrays = {c: np.asarray(s, dtype=np.float64) for c, s in scores.items()}
    if not arrays or not trivial:
        raise ValueError("mean_bootstrap needs at least one cell and one trivial predictor")
    n = len(next(iter(arrays.values())))
    bad = [k for k, v in [*arrays.items(), *trivial.items()] if np.shape(v) != (n,)]
    if n == 0 or bad:
        raise ValueError(f"every score array must have the same length n > 0 (n={n}; not: {bad})")
    rng = np.random.default_rng(seed)
    W = np.vstack([np.ones(n), rng.multinomial(n, np.full(n, 1.0 / n), size=n_boot)]) / n  # row 0: the full sample
    vals = {c: W @ s for c, s in arrays.items()}
    base = np.max(np.vstack([W @ np.asarray(t, dtype=np.float64) for t in trivial.values()]), axis=0)
    return {"full": {c: float(v[0]) for c, v in vals.items()}, "baseline": float(base[0]),
            "boot": {c: v[1:] for c, v in vals.items()}, "boot_baseline": base[1:]}  # fmt: skip
