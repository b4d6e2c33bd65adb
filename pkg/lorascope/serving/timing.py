"""Timing for the deployment benchmark: one clock loop and latency statistics (intervals over repeats:
`analysis.verdicts.positive_interval`).

Pure Python + numpy/scipy (no torch import): the caller passes `sync`, which is `torch.cuda.synchronize` on a GPU
and a no-op on CPU, so the clock is read only after every queued kernel has finished.

    timed = time_batches(batches, serve, sync)        # seconds per batch, results kept for correctness checks
    overhead = time_batches(batches, noop, sync)      # the same loop around a no-op: the harness's own cost
    latency_stats([t.seconds for t in timed])         # mean, p50, p95, p99 in milliseconds
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np

B = TypeVar("B")

PERCENTILES = (50, 95, 99)


@dataclass(frozen=True)
class Timed:
    """One served batch: wall seconds between two clock reads, each read after `sync()`."""

    seconds: float
    result: Any


def time_batches(batches: Iterable[B], serve: Callable[[B], Any], sync: Callable[[], None] = lambda: None,
                 clock: Callable[[], int] = time.perf_counter_ns) -> list[Timed]:
    """Serve each batch between two synchronized clock reads.

    `sync()` runs before the first read (nothing earlier still queued is charged to this batch) and before the
    second (the batch's kernels have finished). The batch's result is kept outside the timed region."""
    out: list[Timed] = []
    for batch in batches:
        sync()
        t0 = clock()
        result = serve(batch)
        sync()
        t1 = clock()
        out.append(Timed((t1 - t0) * 1e-9, result))
    return out


def noop(_batch: Any) -> None:
    """What the harness times to measure itself (`harness overhead`)."""
    return None


def latency_stats(seconds: Sequence[float]) -> dict[str, float | int]:
    """Mean, p50, p95, p99, min, max and std of latencies, in milliseconds (numpy's linear percentiles)."""
    a = np.asarray(seconds, dtype=np.float64) * 1e3
    if a.size == 0:
        raise ValueError("latency_stats: no samples")
    out: dict[str, float | int] = {"n": int(a.size), "mean": float(a.mean())}
    for p in PERCENTILES:
        out[f"p{p}"] = float(np.percentile(a, p))
    out.update({"min": float(a.min()), "max": float(a.max()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0})
    return out
