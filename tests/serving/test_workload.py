"""serving.workload: request pools and the single / round-robin / random streams."""

from __future__ import annotations

from collections import Counter

import pytest

from lorascope.serving import workload


def _features(n: int, pad: int = 2) -> list[dict]:
    # right-padded features: the request keeps only the attended ids
    return [{"idx": i, "input_ids": [1, 10 + i, 20 + i, pad, pad], "attention_mask": [1, 1, 1, 0, 0], "labels": i % 2}
            for i in range(n)]  # fmt: skip


def _pools(n: int = 20) -> dict[str, list[workload.Request]]:
    return {t: workload.make_pool(t, _features(n), seed=42) for t in ("mrpc", "sst2", "rte")}


def test_pool_keeps_attended_tokens_and_shuffles_with_the_seed():
    pool = workload.make_pool("mrpc", _features(20), seed=42)
    assert sorted(r.idx for r in pool) == list(range(20))
    assert all(r.input_ids == (1, 10 + r.idx, 20 + r.idx) and r.tokens == 3 and r.label == r.idx % 2 for r in pool)
    again = workload.make_pool("mrpc", _features(20), seed=42)
    other = workload.make_pool("mrpc", _features(20), seed=43)
    assert [r.idx for r in pool] == [r.idx for r in again]
    assert [r.idx for r in pool] != [r.idx for r in other]
    assert [r.idx for r in pool] != list(range(20))


def test_round_robin_interleaves_tasks_in_order():
    pools = _pools()
    it = workload.stream(pools, ["mrpc", "sst2", "rte"], "rr", seed=0)
    reqs = [next(it) for _ in range(9)]
    assert [r.task for r in reqs] == ["mrpc", "sst2", "rte"] * 3
    assert [r.idx for r in reqs if r.task == "sst2"] == [r.idx for r in pools["sst2"][:3]]


def test_random_order_is_seeded_and_covers_every_task():
    pools = _pools()
    tasks = ["mrpc", "sst2", "rte"]
    a = [r.task for r, _ in zip(workload.stream(pools, tasks, "random", seed=42), range(600), strict=False)]
    b = [r.task for r, _ in zip(workload.stream(pools, tasks, "random", seed=42), range(600), strict=False)]
    c = [r.task for r, _ in zip(workload.stream(pools, tasks, "random", seed=7), range(600), strict=False)]
    assert a == b and a != c
    counts = Counter(a)
    assert set(counts) == set(tasks) and all(150 < n < 250 for n in counts.values())
    assert a[:30] != (tasks * 10)  # not round-robin


def test_pool_cycles_when_more_requests_than_examples():
    pools = _pools(n=5)
    it = workload.stream(pools, ["mrpc"], "single", seed=0)
    idx = [next(it).idx for _ in range(12)]
    assert idx[:5] == idx[5:10] and sorted(idx[:5]) == list(range(5))


def test_batches_warmup_then_at_least_requests_timed():
    pools = _pools()
    warm, timed = workload.batches(pools, ["mrpc", "sst2"], "rr", seed=1, batch_size=4, warmup_batches=3, requests=10)
    assert len(warm) == 3 and all(len(b) == 4 for b in warm)
    assert len(timed) == 3 and sum(len(b) for b in timed) == 12  # ceil(10 / 4) batches
    assert [r.task for r in timed[0]] == ["mrpc", "sst2", "mrpc", "sst2"]
    again = workload.batches(pools, ["mrpc", "sst2"], "rr", seed=1, batch_size=4, warmup_batches=3, requests=10)
    assert again == (warm, timed)


def test_bad_stream_arguments():
    pools = _pools()
    with pytest.raises(ValueError, match="order"):
        next(workload.stream(pools, ["mrpc"], "zigzag", seed=0))
    with pytest.raises(ValueError, match="one task"):
        next(workload.stream(pools, ["mrpc", "rte"], "single", seed=0))
    with pytest.raises(ValueError, match="batch_size"):
        workload.batches(pools, ["mrpc"], "single", 0, 0, 1, 1)
    with pytest.raises(ValueError, match="no validation"):
        workload.make_pool("mrpc", [], seed=0)
