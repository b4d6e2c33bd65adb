"""serving.timing: the clock loop, latency statistics."""

from __future__ import annotations

import numpy as np
import pytest

from lorascope.serving import timing


def test_latency_stats_are_numpy_percentiles_in_milliseconds():
    secs = [0.001 * i for i in range(1, 101)]  # 1..100 ms
    s = timing.latency_stats(secs)
    a = np.arange(1, 101, dtype=float)
    assert s["n"] == 100
    assert s["mean"] == pytest.approx(50.5)
    for p in (50, 95, 99):
        assert s[f"p{p}"] == pytest.approx(np.percentile(a, p))
    assert s["min"] == pytest.approx(1.0) and s["max"] == pytest.approx(100.0)
    assert s["std"] == pytest.approx(np.std(a, ddof=1))
    with pytest.raises(ValueError):
        timing.latency_stats([])


def test_time_batches_syncs_around_each_batch_and_reads_the_clock_after_sync():
    events: list[str] = []
    ticks = iter(range(0, 10**9, 1000))  # each clock read advances 1000 ns

    def clock() -> int:
        events.append("clock")
        return next(ticks)

    def serve(b):
        events.append(f"serve{b}")
        return b * 10

    out = timing.time_batches([1, 2], serve, sync=lambda: events.append("sync"), clock=clock)
    assert [t.result for t in out] == [10, 20]
    assert [t.seconds for t in out] == [pytest.approx(1e-6), pytest.approx(1e-6)]
    assert events == ["sync", "clock", "serve1", "sync", "clock", "sync", "clock", "serve2", "sync", "clock"]


def test_harness_overhead_is_microseconds():
    out = timing.time_batches(range(2000), timing.noop)
    assert np.median([t.seconds for t in out]) < 20e-6
