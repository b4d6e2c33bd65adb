"""The generation bench's summary.json: raw timings and tokens turned into statistics, H2 and correctness. Pure Python
+ numpy/scipy (no torch, no vLLM), so it runs on a committed bundle anywhere.

  offline configuration  `offline_config`: TTFT, TPOT, E2E and batch latency (mean, p50, p95, p99 over every request
                         of every repeat), output tokens/s per repeat with a log-scale interval (the classification
                         bench's `verdicts.positive_interval`), memory
  online point           `online_point`: vLLM's serving-benchmark aggregates of each repeat, their means, and the
                         pooled per-request percentiles
  curves                 `curves`: per (mode, adapters, popularity) series, one point per request rate: output
                         tokens/s against p95 TPOT and p95 TTFT
  H2                     `h2`: THE rule (`verdicts.h2`, which the classification bench and the report use) on
                         separate vs merged, per backend, metric (TPOT; output tokens/s as time per output token),
                         regime and batch size (offline) or request rate (online); overall by `verdicts.combine`
  correctness            `token_agreement`: greedy tokens of every served request against a reference, request by
                         request
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from lorascope.analysis import verdicts
from lorascope.serving import timing

H2_METRICS = {
    "tpot": "mean TPOT per repeat (ms)",
    "tokens_per_s": "output tokens/s per repeat, compared as time per output token (1 / throughput), so the overhead "
                    "reads like a latency overhead: merged tokens/s / separate tokens/s - 1",
}  # fmt: skip


def finite(x: Any) -> Any:
    """JSON-safe numbers: numpy scalars to Python, NaN/inf to None (recursively)."""
    if isinstance(x, Mapping):
        return {str(k): finite(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [finite(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


# ------------------------------------------------------------------------------------------------ offline
def offline_config(run: Any, confidence: float) -> dict:
    """One (regime, mode, order, batch size): `run.repeats[r][b]` = one timed batch {seconds, ttft, tpot, e2e,
    output_tokens} (per-request lists, seconds)."""
    reps = run.repeats
    per_req = {k: [v for rep in reps for b in rep for v in b[k]] for k in ("ttft", "tpot", "e2e")}
    batch_s = [b["seconds"] for rep in reps for b in rep]
    tokens = [sum(sum(b["output_tokens"]) for b in rep) for rep in reps]
    seconds = [sum(b["seconds"] for b in rep) for rep in reps]
    tps = [t / s for t, s in zip(tokens, seconds, strict=True)]
    tpot_rep = [1e3 * float(np.mean([v for b in rep for v in b["tpot"]])) for rep in reps]
    ttft_rep = [1e3 * float(np.mean([v for b in rep for v in b["ttft"]])) for rep in reps]
    gpu = [p.get("gpu_peak_allocated_bytes") for p in run.peak]
    return {
        "regime": run.regime, "mode": run.mode, "order": run.order, "batch_size": run.batch_size,
        "adapters": list(run.adapters) if run.mode not in ("full", "merged") else [],
        "synthetic_adapters": sorted(set(run.adapters) & set(run.synthetic)) if run.mode.startswith("multi-") else [],
        "timed_batches": len(run.batches), "timed_requests": sum(len(b) for b in run.batches), "repeats": len(reps),
        "ttft_ms": timing.latency_stats(per_req["ttft"]), "tpot_ms": timing.latency_stats(per_req["tpot"]),
        "e2e_ms": timing.latency_stats(per_req["e2e"]), "batch_ms": timing.latency_stats(batch_s),
        "mean_tpot_ms_per_repeat": tpot_rep, "mean_ttft_ms_per_repeat": ttft_rep,
        "output_tokens_per_s_per_repeat": tps, "ms_per_output_token_per_repeat": [1e3 / x for x in tps],
        "mean_tpot_ms_ci": verdicts.positive_interval(tpot_rep, confidence),
        "output_tokens_per_s": verdicts.positive_interval(tps, confidence),
        "gpu_peak_allocated_bytes": max(gpu) if gpu and all(g is not None for g in gpu) else None,
        "rss_bytes": max((p.get("rss_bytes") or 0) for p in run.peak) or None,
    }  # fmt: skip


# ------------------------------------------------------------------------------------------------ online
def _pooled(results: Sequence[Mapping]) -> dict[str, list[float]]:
    """Per-request TTFT, TPOT (vLLM's definition) and E2E of successful requests, pooled over repeats (seconds)."""
    out: dict[str, list[float]] = {"ttft": [], "tpot": [], "e2el": []}
    for r in results:
        for ttft, lat, n, err in zip(r["ttfts"], r["latencies"], r["output_lens"], r["errors"], strict=True):
            if err or not n:
                continue
            out["ttft"].append(ttft)
            out["e2el"].append(lat)
            if n > 1:
                out["tpot"].append((lat - ttft) / (n - 1))
    return out


def online_point(mode: str, adapters: Sequence[str], popularity: str, rate: float, results: Sequence[Mapping],
                 synthetic: Sequence[str], shares: Sequence[float], confidence: float) -> dict:  # fmt: skip
    """One (server mode, adapters, popularity, request rate) over its repeats: vLLM's aggregates of each repeat and
    their means (`vllm`), pooled per-request percentiles (`pooled_ms`), the adapter mix requested and realised."""
    keys = ["duration", "completed", "failed", "request_throughput", "output_throughput", "total_token_throughput",
            "max_concurrent_requests"] + [f"{s}_{m}_ms" for m in ("ttft", "tpot", "itl", "e2el") for s in ("mean", "median", "p50", "p95", "p99")]  # fmt: skip
    per_repeat = {k: [float(r[k]) if r.get(k) is not None else None for r in results] for k in keys}
    means = {k: (float(np.mean(v)) if v and all(x is not None for x in v) else None) for k, v in per_repeat.items()}
    pooled = _pooled(results)
    realised = {}
    for name in adapters:
        realised[name] = float(np.mean([sum(1 for m in r["models"] if m == name) / len(r["models"]) for r in results]))
    tps = [x for x in per_repeat["output_throughput"] if x]
    return finite({
        "mode": mode, "adapters": len(adapters) if mode == "separate" else 0, "adapter_names": list(adapters),
        "synthetic_adapters": sorted(set(adapters) & set(synthetic)), "popularity": popularity, "request_rate": rate,
        "repeats": len(results), "requests_per_repeat": len(results[0]["models"]) if results else 0,
        "vllm": means, "vllm_per_repeat": per_repeat,
        "pooled_ms": {m: timing.latency_stats(v) for m, v in pooled.items() if v},
        "output_tokens_per_s": verdicts.positive_interval(tps, confidence) if len(tps) == len(results) and tps else None,
        "requested_shares": dict(zip(adapters, map(float, shares), strict=True)), "realised_shares": realised,
        "failed": int(sum(r.get("failed", 0) for r in results)),
    })  # fmt: skip


def series_name(point: Mapping) -> str:
    """A curve's name: "merged", "full", "separate x1", "separate x4 zipf"; synthetic adapters are said."""
    if point["mode"] != "separate":
        return point["mode"]
    k = point["adapters"]
    name = f"separate x{k}" + (f" {point['popularity']}" if k > 1 else "")
    syn = len(point.get("synthetic_adapters") or [])
    return name + (f" ({syn} synthetic)" if syn else "")


def curves(points: Sequence[Mapping]) -> dict[str, list[dict]]:
    """Throughput-latency curves: per series, points by request rate (output tokens/s, p95 TPOT, p95 TTFT: means over
    repeats of vLLM's per-run values)."""
    out: dict[str, list[dict]] = {}
    for p in points:
        v = p["vllm"]
        out.setdefault(series_name(p), []).append({
            "request_rate": p["request_rate"], "output_tokens_per_s": v.get("output_throughput"),
            "p95_tpot_ms": v.get("p95_tpot_ms"), "p95_ttft_ms": v.get("p95_ttft_ms"), "mean_tpot_ms": v.get("mean_tpot_ms"),
            "p95_e2el_ms": v.get("p95_e2el_ms"), "request_throughput": v.get("request_throughput"),
        })  # fmt: skip
    return {k: sorted(v, key=lambda x: x["request_rate"]) for k, v in out.items()}


# ------------------------------------------------------------------------------------------------ H2
def h2(offline: Sequence[Mapping], online: Sequence[Mapping], limit_pct: float, backend: str) -> dict:
    """H2 for generation by THE rule (`verdicts.h2`, paired by repeat): separate against merged, on TPOT and on output
    tokens/s (as time per output token), per regime and batch size (offline) and per request rate (online, the LoRA
    server with one adapter against the merged server, the same prompts and arrival times). Parts keyed
    "<backend> offline <metric> <regime> batch <b>" / "<backend> online <metric> rate <r>"; overall by
    `verdicts.combine` (supported only if every part is)."""
    parts: dict[str, dict] = {}
    per_repeat = {"tpot": "mean_tpot_ms_per_repeat", "tokens_per_s": "ms_per_output_token_per_repeat"}
    for metric, field in per_repeat.items():
        for sep in offline:
            if sep["mode"] != "separate":
                continue
            merged = [c for c in offline if c["mode"] == "merged" and c["regime"] == sep["regime"] and c["batch_size"] == sep["batch_size"]]
            if merged:
                key = f"{backend} offline {metric} {sep['regime']} batch {sep['batch_size']}"
                parts[key] = {**verdicts.h2(sep[field], merged[0][field], limit_pct), "metric": metric, "setting": "offline",
                              "regime": sep["regime"], "batch_size": sep["batch_size"]}  # fmt: skip
    online_field: dict[str, Callable[[Mapping], list[float]]] = {
        "tpot": lambda p: p["vllm_per_repeat"]["mean_tpot_ms"],
        "tokens_per_s": lambda p: [1e3 / x for x in p["vllm_per_repeat"]["output_throughput"]],
    }
    for metric, get in online_field.items():
        for sep in online:
            if sep["mode"] != "separate" or sep["adapters"] != 1:
                continue
            merged = [p for p in online if p["mode"] == "merged" and p["request_rate"] == sep["request_rate"]]
            if merged and sep["failed"] == 0 and merged[0]["failed"] == 0:
                key = f"{backend} online {metric} rate {sep['request_rate']:g}"
                parts[key] = {**verdicts.h2(get(sep), get(merged[0]), limit_pct), "metric": metric, "setting": "online",
                              "request_rate": sep["request_rate"]}  # fmt: skip
    worst = max(parts.values(), key=lambda p: p["pct"], default=None)
    return {"verdict": verdicts.combine(parts) if parts else verdicts.NOT_MEASURED, "by": parts, "limit_pct": limit_pct,
            "rule": verdicts.RULES["H2"] + "; for generation on " + "; ".join(f"{k}: {v}" for k, v in H2_METRICS.items())
            + "; overall: " + verdicts.RULES["overall"],
            "max_overhead_pct": worst["pct"] if worst else None}  # fmt: skip


def ratios(offline: Sequence[Mapping], candidate: str, baseline: str = "merged") -> dict[str, dict]:
    """candidate / baseline per (regime, batch size): mean TPOT ratio and output tokens/s ratio (geometric means over
    repeats of the paired per-repeat ratios, `verdicts.overhead`), for the report's ratio table."""
    out: dict[str, dict] = {}
    for c in offline:
        if c["mode"] != candidate or c["order"] not in ("single", "rr"):
            continue
        base = [b for b in offline if b["mode"] == baseline and b["regime"] == c["regime"] and b["batch_size"] == c["batch_size"]]
        if not base:
            continue
        tpot = verdicts.overhead(c["mean_tpot_ms_per_repeat"], base[0]["mean_tpot_ms_per_repeat"])
        tps = verdicts.overhead(c["output_tokens_per_s_per_repeat"], base[0]["output_tokens_per_s_per_repeat"])
        out[f"{c['regime']} batch {c['batch_size']}"] = {"regime": c["regime"], "batch_size": c["batch_size"],
                                                          "tpot_ratio": 1 + tpot["pct"] / 100, "tokens_per_s_ratio": 1 + tps["pct"] / 100}  # fmt: skip
    return out


# ------------------------------------------------------------------------------------------------ correctness
def token_agreement(served: Sequence[tuple[Any, Sequence[int]]], reference: Mapping[Any, Sequence[int]]) -> dict:
    """Greedy tokens of served requests [(key, tokens)] against `reference[key]`: identical sequences, mismatches, and
    the earliest position where a served sequence left its reference."""
    n = same = 0
    first: list[int] = []
    worst = None
    for key, tokens in served:
        ref = list(reference[key])
        got = list(tokens)
        n += 1
        if got == ref:
            same += 1
            continue
        pos = next((i for i, (a, b) in enumerate(zip(got, ref, strict=False)) if a != b), min(len(got), len(ref)))
        first.append(pos)
        if worst is None or pos < worst["position"]:
            worst = {"key": [str(k) for k in key] if isinstance(key, tuple) else str(key), "position": pos}
    return {"requests": n, "identical": same, "mismatches": n - same,
            "first_divergence_min": min(first) if first else None, "worst": worst, "ok": n > 0 and same == n}  # fmt: skip
