"""The drift bundle's representation rows: every cell against the base, every seed pair of a method (the seed noise
floor), and the debiased CKA on example subsets for the CI over examples; one task, pooling and layer at a time.

Readers are anything with `.labels` and `.layer(pooling, index) -> (n, d) array` (`tensorio.RepsFile`); cells are
anything with `.name`, `.method`, `.seed`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lorascope.analysis import similarity as sim

LAYER_KEYS = ["task", "method", "seed", "layer_index", "layer", "pooling"]  # what a layer row is about
NOISE_KEYS = ["task", "method", "seed_a", "seed_b", "layer_index", "layer", "pooling"]  # what a seed-pair row is about


def layer_columns() -> list[str]:
    """layer_rows.csv: a cell against the base, every registered measure (`similarity.MEASURES`)."""
    return LAYER_KEYS + sim.row_columns(sim.layer_measures())


def noise_columns() -> list[str]:
    """noise_floor.csv: two seeds of one method, the measures of the seed noise floor."""
    return NOISE_KEYS + sim.row_columns(sim.noise_floor_measures())


def seed_pairs(cells: Sequence[Any]) -> list[tuple[Any, Any]]:
    """Pairs of cells of one method (same task) with different seeds: the seed noise floor."""
    out = []
    for method in dict.fromkeys(c.method for c in cells):
        out += list(itertools.combinations([c for c in cells if c.method == method], 2))
    return out


def drift_rows(layer: Mapping[str, np.ndarray], pairs: list[tuple[str, str]], cache: sim.GramCache) -> list[dict]:
    """`similarity.pairwise_drift` against the base, every registered measure; where a measure taken against the base
    only is undefined (a cosine of a zero vector, e.g. a constant representation minus its own mean) that pair's value
    is nan and the other measures are kept."""
    try:
        return sim.pairwise_drift(layer, pairs, base="base", cache=cache)
    except ValueError:
        rows = sim.pairwise_drift(layer, pairs, cache=cache)  # the noise-floor measures (CKA): defined for any pair
    mu = np.asarray(layer["base"], dtype=np.float64).mean(axis=0)
    against_base = [m for m in sim.layer_measures() if not m.noise_floor]
    for (a, b), row in zip(pairs, rows, strict=True):
        for measure in against_base:
            try:
                row.update(measure.columns(measure(layer[a], layer[b], mu)))
            except ValueError:
                row.update(measure.columns(float("nan")))
    return rows


def representation_drift(task: str, cells: Sequence[Any], reps: Mapping[str, Any], poolings: Sequence[str], primary: str,
                         resampler: sim.SubsetDebiasedCKA | None, log: Callable[..., None]
                         ) -> tuple[list[dict], list[dict], dict[str, np.ndarray]]:  # fmt: skip
    """(layer rows vs base, seed-pair rows, per cell the subset drift of the primary pooling, shape (layers, resamples)).

    One centred float64 Gram per model and layer (`similarity.GramCache`), reused by every pair it enters. A layer
    where some CKA is undefined (a constant representation: e.g. the last token's embedding when every example ends
    in the same token) gets nan subset drifts; `summary.layers_in_mean` leaves it out of every mean over layers."""
    pairs = [("base", c.name) for c in cells]
    spairs = seed_pairs(cells)
    layer_values, noise_values = sim.row_columns(sim.layer_measures()), sim.row_columns(sim.noise_floor_measures())
    labels = reps["base"].labels
    rows: list[dict] = []
    noise: list[dict] = []
    subset = {c.name: np.full((len(labels), resampler.n_resamples), np.nan) for c in cells} if resampler else {}
    for pooling in poolings:
        for li, label in enumerate(labels):
            layer = {name: r.layer(pooling, li) for name, r in reps.items()}
            cache = sim.GramCache(layer)
            for c, row in zip(cells, drift_rows(layer, pairs, cache), strict=True):
                rows.append({"task": task, "method": c.method, "seed": c.seed, "layer_index": li, "layer": label,
                             "pooling": pooling, **{k: row[k] for k in layer_values}})  # fmt: skip
            for (a, b), row in zip(spairs, sim.pairwise_drift(layer, [(a.name, b.name) for a, b in spairs], cache=cache), strict=True):
                noise.append({"task": task, "method": a.method, "seed_a": a.seed, "seed_b": b.seed, "layer_index": li,
                              "layer": label, "pooling": pooling, **{k: row[k] for k in noise_values}})  # fmt: skip
            defined = all(math.isfinite(r[m.column]) for r in rows[-len(cells):] for m in sim.cka_measures())
            if not defined:
                log("CKA undefined at this layer (constant representation): left out of the layer means", task=task,
                    pooling=pooling, layer=label, level="warning")  # fmt: skip
            if resampler is not None and pooling == primary and defined:
                base_terms = resampler.prepare(cache["base"])
                for c in cells:
                    subset[c.name][li] = 1.0 - resampler.cka(base_terms, resampler.prepare(cache[c.name]))
            del layer, cache
        log("representations", task=task, pooling=pooling, layers=len(labels), models=len(reps))
    return rows, noise, subset
