"""The benchmark protocol, the same for every backend.

A configuration is (mode, stream order, batch size). Its batches are built once (`new_config`): `warmup_batches`
warm-up batches, then ceil(requests / batch_size) timed batches, the same inputs in every mode, so separate and
merged answer identical batches. One repeat (`run_repeat`) on a freshly loaded server serves the warm-up batches (not
timed), resets the device's peak-memory counter, serves the timed batches between synchronized clock reads
(`timing.time_batches`) and reads the peak memory; the last repeat also times the same loop around a no-op (harness
overhead). The caller runs the repeats repeat-major (repeat 1 of every mode, then repeat 2, ...), so a slow stretch
of the machine spreads over all modes instead of landing on one. Multi-adapter modes also time `switch(task)`
(making another adapter the active one) on its own.

`config_summary` turns one configuration's raw timings into its summary (latency percentiles, throughput, intervals
over repeats); `serving.bench_summary.summarize` builds a backend's whole summary.json from those.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lorascope.analysis import verdicts
from lorascope.log import Logger
from lorascope.serving import timing, workload
from lorascope.serving.workload import Request


@dataclass(frozen=True)
class Settings:
    batch_sizes: tuple[int, ...]
    warmup_batches: int
    requests: int
    repeats: int
    seed: int
    confidence: float = 0.95


@dataclass
class ConfigRun:
    """One (mode, order, batch size) in one execution regime: raw seconds per timed batch for each repeat, and the last
    repeat's logits. `regime` is how the backend executes the model (`eager`, or `compiled` for vLLM's compiled
    engines); overheads only ever compare configurations of one regime."""

    mode: str
    order: str
    batch_size: int
    tasks: list[str]
    batches: list[list[Request]]
    seconds: list[list[float]] = field(default_factory=list)  # [repeat][batch]
    harness_seconds: list[float] = field(default_factory=list)  # [batch], the loop around a no-op
    logits: list[np.ndarray] = field(default_factory=list)  # [batch] -> [n, labels], from the last repeat
    peak: list[dict] = field(default_factory=list)  # [repeat]
    warmup: list[list[Request]] = field(default_factory=list)
    regime: str = "eager"


def new_config(mode: str, order: str, batch_size: int, tasks: Sequence[str], pools: Mapping[str, Sequence[Request]],
               settings: Settings, regime: str = "eager") -> ConfigRun:
    """A configuration with its warm-up and timed batches (the same inputs in every mode and regime at this batch
    size)."""
    warm, timed = workload.batches(pools, tasks, order, settings.seed, batch_size, settings.warmup_batches,
                                   settings.requests)
    run = ConfigRun(mode, order, batch_size, list(tasks), timed, regime=regime)
    run.warmup = warm
    return run


def run_repeat(server: Any, run: ConfigRun, log: Logger, harness: bool = False,
               clock: Callable[[], int] = time.perf_counter_ns) -> None:
    """One repeat of a configuration on a loaded server: warm-up (not timed), then the timed batches between
    synchronized clock reads, with the device's peak memory counter reset in between. With `harness`, also time
    the same loop around a no-op."""
    for b in run.warmup:
        server.serve(b)
    server.reset_peak()
    results = timing.time_batches(run.batches, server.serve, server.sync, clock)
    run.peak.append(server.peak_memory())
    run.seconds.append([t.seconds for t in results])
    run.logits = [np.asarray(t.result, dtype=np.float32) for t in results]
    if harness:
        run.harness_seconds = [t.seconds for t in timing.time_batches(run.batches, timing.noop, server.sync, clock)]
    log.debug("timed", regime=run.regime, mode=run.mode, order=run.order, batch_size=run.batch_size, repeat=len(run.seconds) - 1,
        mean_batch_ms=round(1e3 * float(np.mean(run.seconds[-1])), 3))


def run_switches(server: Any, tasks: Sequence[str], order: str, settings: Settings,
                 clock: Callable[[], int] = time.perf_counter_ns) -> list[float]:
    """Seconds per `server.switch(task)` over `requests` switches (after `warmup_batches` untimed ones), the task
    sequence drawn like the request stream (round-robin or seeded random; consecutive repeats of one task are
    skipped so every timed call changes the adapter)."""
    rng = np.random.default_rng(settings.seed)
    seq: list[str] = []
    last = None
    n = settings.warmup_batches + settings.requests
    j = 0
    while len(seq) < n:
        task = tasks[j % len(tasks)] if order == "rr" else tasks[int(rng.integers(len(tasks)))]
        j += 1
        if task != last:
            seq.append(task)
            last = task
    for task in seq[: settings.warmup_batches]:
        server.switch(task)
    out = timing.time_batches(seq[settings.warmup_batches :], server.switch, server.sync, clock)
    server.switch(tasks[0])
    return [t.seconds for t in out]


# ------------------------------------------------------------------------------------------------ raw rows
def batch_rows(backend: str, run: ConfigRun) -> list[dict]:
    rows = []
    for r, secs in enumerate(run.seconds):
        for b, (batch, s) in enumerate(zip(run.batches, secs, strict=True)):
            rows.append({"backend": backend, "kind": "timed", "regime": run.regime, "mode": run.mode, "order": run.order,
                         "batch_size": run.batch_size, "repeat": r, "batch": b, "requests": len(batch),
                         "tokens": sum(q.tokens for q in batch), "padded_tokens": len(batch) * max(q.tokens for q in batch),
                         "adapters": sorted({q.task for q in batch}) if run.mode.startswith("multi") else [],
                         "seconds": s})  # fmt: skip
    for b, (batch, s) in enumerate(zip(run.batches, run.harness_seconds, strict=True)):
        rows.append({"backend": backend, "kind": "harness", "regime": run.regime, "mode": run.mode, "order": run.order,
                     "batch_size": run.batch_size, "repeat": 0, "batch": b, "requests": len(batch),
                     "tokens": sum(q.tokens for q in batch), "seconds": s})  # fmt: skip
    return rows


def request_rows(backend: str, run: ConfigRun) -> list[dict]:
    """One row per timed request and repeat. `batch_ms` is the latency of the batch the request rode in (what its
    client waited); `request_ms` = batch_ms / requests in the batch (the batch's cost per request)."""
    rows = []
    for r, secs in enumerate(run.seconds):
        for b, (batch, s) in enumerate(zip(run.batches, secs, strict=True)):
            logits = run.logits[b]
            for p, q in enumerate(batch):
                row = {"backend": backend, "regime": run.regime, "mode": run.mode, "order": run.order, "batch_size": run.batch_size,
                       "repeat": r, "batch": b, "pos": p, "task": q.task, "idx": q.idx, "tokens": q.tokens,
                       "adapter": q.task if run.mode != "full" and run.mode != "merged" else None,
                       "batch_ms": 1e3 * s, "request_ms": 1e3 * s / len(batch), "label": q.label}  # fmt: skip
                if r == len(run.seconds) - 1:
                    row["logits"] = [float(x) for x in logits[p]]
                    row["pred"] = int(np.argmax(logits[p]))
                rows.append(row)
    return rows


# ------------------------------------------------------------------------------------------------ summary
def config_summary(run: ConfigRun, confidence: float) -> dict:
    """One configuration's latency percentiles (per batch and per request, over every repeat), its per-repeat means,
    throughput, harness overhead and memory, with `verdicts.positive_interval` over repeats for the mean batch
    latency and both throughputs."""
    per_batch = [s for rep in run.seconds for s in rep]
    per_request = [s / len(b) for rep in run.seconds for b, s in zip(run.batches, rep, strict=True)]
    n_req = sum(len(b) for b in run.batches)
    n_tok = sum(q.tokens for b in run.batches for q in b)
    rep_mean_ms = [1e3 * float(np.mean(rep)) for rep in run.seconds]
    rep_rps = [n_req / float(np.sum(rep)) for rep in run.seconds]
    rep_tps = [n_tok / float(np.sum(rep)) for rep in run.seconds]
    gpu_peaks = [p.get("gpu_peak_allocated_bytes") for p in run.peak]
    harness = timing.latency_stats(run.harness_seconds)
    batch_stats = timing.latency_stats(per_batch)
    return {
        "regime": run.regime,
        "mode": run.mode,
        "order": run.order,
        "batch_size": run.batch_size,
        "adapters": run.tasks if run.mode not in ("full", "merged") else [],
        "timed_batches": len(run.batches),
        "timed_requests": n_req,
        "repeats": len(run.seconds),
        "latency_batch_ms": batch_stats,
        "latency_request_ms": timing.latency_stats(per_request),
        "mean_batch_ms_per_repeat": rep_mean_ms,
        # intervals of positive quantities on the log scale (analysis.verdicts), never below 0
        "mean_batch_ms_ci": verdicts.positive_interval(rep_mean_ms, confidence),
        "throughput_rps": verdicts.positive_interval(rep_rps, confidence),
        "throughput_tokens_per_s": verdicts.positive_interval(rep_tps, confidence),
        "harness_overhead_ms": harness,
        "harness_overhead_pct_of_mean": 100.0 * harness["mean"] / batch_stats["mean"],
        "gpu_peak_allocated_bytes": max(gpu_peaks) if all(g is not None for g in gpu_peaks) else None,
        "rss_bytes": max(p.get("rss_bytes") or 0 for p in run.peak) or None,
    }


# ------------------------------------------------------------------------------------------------ correctness
def softmax(x: np.ndarray) -> np.ndarray:
    z = np.asarray(x, dtype=np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


def compare(runs: Sequence[ConfigRun], reference: Mapping[tuple[str, int], np.ndarray], tolerance: float) -> dict:
    """Every request of `runs` (last repeat's logits) against `reference[(task, idx)]` logits: argmax equal, largest
    probability and logit differences. A mismatch whose reference margin (|p1 - p0|) is within the tolerance is a
    tie the dtype cannot resolve and is counted apart."""
    n = mismatches = ties = 0
    max_prob = max_logit = 0.0
    worst = None
    for run in runs:
        for batch, logits in zip(run.batches, run.logits, strict=True):
            for q, row in zip(batch, logits, strict=True):
                ref = reference[(q.task, q.idx)]
                p, pr = softmax(row), softmax(ref)
                d = float(np.abs(p - pr).max())
                max_logit = max(max_logit, float(np.abs(np.asarray(row, np.float64) - ref).max()))
                n += 1
                if int(np.argmax(row)) != int(np.argmax(ref)):
                    srt = np.sort(pr)
                    if srt[-1] - srt[-2] <= tolerance:
                        ties += 1
                    else:
                        mismatches += 1
                if d > max_prob:
                    max_prob = d
                    worst = {"regime": run.regime, "mode": run.mode, "order": run.order, "batch_size": run.batch_size, "task": q.task,
                             "idx": q.idx}
    return {"requests": n, "argmax_mismatches": mismatches, "argmax_ties_within_tolerance": ties,
            "max_prob_diff": max_prob, "max_logit_diff": max_logit, "tolerance": tolerance,
            "ok": n > 0 and mismatches == 0 and max_prob <= tolerance, "worst": worst}  # fmt: skip


def regimes_agree(runs: Sequence[ConfigRun], tolerance: float) -> dict | None:
    """Every request a mode answered in a regime other than eager (vLLM `compiled`) against the same request answered
    by the same mode eager (last repeat's logits; every regime serves the same batches at a batch size), per mode with
    `compare`'s fields, and `ok` for all. None when no mode ran in two regimes."""
    out: dict[str, Any] = {}
    for mode in dict.fromkeys(r.mode for r in runs if r.regime != "eager"):
        ref = {(q.task, q.idx): np.asarray(row, dtype=np.float64)
               for r in runs if r.regime == "eager" and r.mode == mode
               for batch, logits in zip(r.batches, r.logits, strict=True) for q, row in zip(batch, logits, strict=True)}  # fmt: skip
        if ref:
            out[mode] = compare([r for r in runs if r.regime != "eager" and r.mode == mode], ref, tolerance)
    if not out:
        return None
    return {"reference": "the same request answered by the same mode in the eager regime", "tolerance": tolerance,
            "modes": out, "ok": all(v["ok"] for v in out.values()),
            "requests": sum(v["requests"] for v in out.values()),
            "argmax_mismatches": sum(v["argmax_mismatches"] for v in out.values()),
            "argmax_ties_within_tolerance": sum(v["argmax_ties_within_tolerance"] for v in out.values()),
            "max_prob_diff": max(v["max_prob_diff"] for v in out.values()),
            "max_logit_diff": max(v["max_logit_diff"] for v in out.values())}  # fmt: skip


def versus_training(runs: Sequence[ConfigRun], predictions: Mapping[str, Mapping[int, dict]],
                    cell_of: Callable[[ConfigRun, str], str | None]) -> dict:
    """Served predictions against the train phase's own `predictions.jsonl` of the same cell (informational: the
    train phase may have evaluated in another precision). Agreement of argmax and largest probability difference."""
    n = agree = 0
    max_prob = 0.0
    for run in runs:
        for batch, logits in zip(run.batches, run.logits, strict=True):
            for q, row in zip(batch, logits, strict=True):
                cell = cell_of(run, q.task)
                rec = predictions.get(cell or "", {}).get(q.idx)
                if rec is None or "logits" not in rec:
                    continue
                n += 1
                agree += int(int(np.argmax(row)) == int(rec["pred"]))
                max_prob = max(max_prob, float(np.abs(softmax(row) - softmax(np.asarray(rec["logits"]))).max()))
    return {"requests": n, "argmax_agreement": (agree / n) if n else None, "max_prob_diff": max_prob if n else None}
