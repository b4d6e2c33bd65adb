"""The generation bench's workload: fixed-length prompts, offline batches, and which adapter each online request names.

Pure Python + numpy (no torch, no vLLM), so the adapter mixes are testable anywhere.

* Prompts are token ids of exactly `prompt_tokens` tokens (`fixed_length`): a prompt's own ids, continued with the
  ids of the prompts after it (without their first token, the BOS) until it is long enough, then cut. Every request of
  the bench has the same prompt and output length, so batches need no padding and a batch's requests finish together.
* Offline batches reuse the classification bench's streams (`serving.workload.batches`: `single`, round-robin `rr`,
  seeded `random`), with one pool per adapter holding the same prompts, so every mode at a batch size answers the same
  prompts.
* Online: the adapter each request names (its OpenAI `model` field) follows a popularity over the first k adapters:
  `uniform` (1/k each) or `zipf` (p_i proportional to 1 / i^s, i = 1..k, s = `zipf_exponent`). `assign` gives each
  adapter its quota of the n requests (largest-remainder rounding of n p_i, so a realised frequency differs from the
  requested one by less than 1/n) and shuffles the sequence with a seeded generator: the mix is exact, the order random.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lorascope.serving import workload
from lorascope.serving.workload import Request

POPULARITIES = ("uniform", "zipf")


def fixed_length(prompts: Sequence[Sequence[int]], prompt_tokens: int) -> list[tuple[int, ...]]:
    """Every prompt cut or continued to exactly `prompt_tokens` ids (see the module doc). Continuations wrap around to
    the first prompts; the first id of a continuation (a BOS) is dropped."""
    if prompt_tokens < 1:
        raise ValueError(f"prompt_tokens must be >= 1 (got {prompt_tokens})")
    if not prompts or not any(len(p) > 1 for p in prompts):
        raise ValueError("no prompts (or none longer than one token) to build requests from")
    out = []
    for i, p in enumerate(prompts):
        ids = list(p)
        j = i
        while len(ids) < prompt_tokens:
            j = (j + 1) % len(prompts)
            ids += list(prompts[j][1:]) or list(prompts[j])
        out.append(tuple(int(t) for t in ids[:prompt_tokens]))
    return out


def pools(prompts: Sequence[Sequence[int]], adapters: Sequence[str], seed: int) -> dict[str, list[Request]]:
    """One request pool per adapter name (an empty name: the plain model), the same prompts in one seeded order."""
    order = np.random.default_rng(seed).permutation(len(prompts))
    return {a: [Request(task=a, idx=int(i), input_ids=tuple(prompts[i]), label=0) for i in order] for a in adapters}


def batches(request_pools: Mapping[str, Sequence[Request]], adapters: Sequence[str], order: str, seed: int,
            batch_size: int, warmup_batches: int, requests: int) -> tuple[list[list[Request]], list[list[Request]]]:
    """(warm-up, timed) batches of one configuration: `serving.workload.batches` over the adapters' pools."""
    return workload.batches(request_pools, adapters, order, seed, batch_size, warmup_batches, requests)


def popularity(k: int, kind: str, zipf_exponent: float = 1.0) -> np.ndarray:
    """Requested share of each of the first k adapters: uniform 1/k, or Zipf p_i = i^-s / sum_j j^-s."""
    if k < 1:
        raise ValueError(f"adapter count must be >= 1 (got {k})")
    if kind == "uniform":
        return np.full(k, 1.0 / k)
    if kind == "zipf":
        if zipf_exponent < 0:
            raise ValueError(f"zipf_exponent must be >= 0 (got {zipf_exponent})")
        w = np.arange(1, k + 1, dtype=np.float64) ** -float(zipf_exponent)
        return w / w.sum()
    raise ValueError(f"popularity {kind!r}: expected one of {POPULARITIES}")


def quotas(n: int, shares: Sequence[float]) -> list[int]:
    """n requests split by `shares` with largest-remainder rounding: the counts sum to n and each is within 1 of n p."""
    p = np.asarray(shares, dtype=np.float64)
    raw = n * p / p.sum()
    counts = np.floor(raw).astype(int)
    for i in np.argsort(-(raw - counts), kind="stable")[: n - int(counts.sum())]:
        counts[i] += 1
    return [int(c) for c in counts]


def assign(names: Sequence[str], n: int, kind: str, seed: int, zipf_exponent: float = 1.0) -> list[str]:
    """The adapter name of each of n requests: each adapter's quota (`quotas` of `popularity`), in a seeded shuffle."""
    counts = quotas(n, popularity(len(names), kind, zipf_exponent))
    seq = np.asarray([name for name, c in zip(names, counts, strict=True) for _ in range(c)], dtype=object)
    return [str(x) for x in seq[np.random.default_rng(seed).permutation(n)]]


def frequencies(sequence: Sequence[str], names: Sequence[str]) -> dict[str, float]:
    """Realised share of each name in `sequence`."""
    n = len(sequence)
    return {name: (sum(1 for s in sequence if s == name) / n if n else 0.0) for name in names}
