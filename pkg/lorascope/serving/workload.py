"""The benchmark's workload: real validation requests of each task, streamed in a fixed, seeded order.

A request is one tokenized validation example (token ids exactly as training encoded them: `BOS s1 EOS s2`).
Streams:
  * `single`  every request from the served task (modes full, merged, separate)
  * `rr`      tasks interleaved round-robin t0, t1, t2, t0, ... (multi-adapter modes)
  * `random`  each request's task drawn uniformly at random from a seeded generator (multi-adapter modes)
Each task's pool is shuffled once with a seeded generator and then cycled, so a stream is the same on every machine
and every mode at a batch size sees the same batches (separate and merged serve identical inputs).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

ORDERS = ("single", "rr", "random")


@dataclass(frozen=True)
class Request:
    task: str
    idx: int
    input_ids: tuple[int, ...]
    label: int

    @property
    def tokens(self) -> int:
        return len(self.input_ids)


def make_pool(task: str, features: Sequence[Mapping], seed: int) -> list[Request]:
    """Requests from `data.encode` features ({"idx","input_ids","attention_mask","labels"}), in a seeded shuffle.
    Only attended tokens are kept, so a request is exactly the sequence a client would send."""
    reqs = []
    for f in features:
        ids = [t for t, m in zip(f["input_ids"], f["attention_mask"], strict=True) if m]
        reqs.append(Request(task=task, idx=int(f["idx"]), input_ids=tuple(int(t) for t in ids), label=int(f["labels"])))
    if not reqs:
        raise ValueError(f"task {task}: no validation examples to serve")
    order = np.random.default_rng([seed, _task_key(task)]).permutation(len(reqs))
    return [reqs[i] for i in order]


def _task_key(task: str) -> int:
    return int.from_bytes(task.encode()[:8].ljust(8, b"\0"), "little") % (2**31)


def stream(pools: Mapping[str, Sequence[Request]], tasks: Sequence[str], order: str, seed: int) -> Iterator[Request]:
    """An endless stream of requests over `tasks` in the given order (see the module docstring)."""
    if order not in ORDERS:
        raise ValueError(f"order {order!r}: expected one of {ORDERS}")
    if order == "single" and len(tasks) != 1:
        raise ValueError(f"order 'single' serves one task, got {list(tasks)}")
    cursors = {t: itertools.cycle(pools[t]) for t in tasks}
    rng = np.random.default_rng(seed)
    for j in itertools.count():
        if order == "random":
            task = tasks[int(rng.integers(len(tasks)))]
        else:
            task = tasks[j % len(tasks)]
        yield next(cursors[task])


def batches(pools: Mapping[str, Sequence[Request]], tasks: Sequence[str], order: str, seed: int, batch_size: int,
            warmup_batches: int, requests: int) -> tuple[list[list[Request]], list[list[Request]]]:
    """(warm-up batches, timed batches): the first `warmup_batches` batches of the stream, then
    ceil(requests / batch_size) batches, so at least `requests` requests are timed."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
    it = stream(pools, tasks, order, seed)
    n_timed = -(-requests // batch_size)
    warm = [[next(it) for _ in range(batch_size)] for _ in range(warmup_batches)]
    timed = [[next(it) for _ in range(batch_size)] for _ in range(n_timed)]
    return warm, timed
