"""Drift-analysis benchmark at the study's reference size: cached Grams vs per-pair recomputation.

Synthetic stand-in for the hidden states of the study: 19 models (base + 3 tasks x 2 methods x 3
seeds) x 23 hidden-state entries x 750 examples x 2048 features, float32, generated one layer at
a time (about 120 MB of features live at once).  Each fine-tuned model is the base plus a
task-specific low-rank shift (larger for "full" than for "lora", growing with depth) plus
seed-specific noise, on top of a large common mean like real LM hidden states.

Per layer the drift analysis computes, for every fine-tuned model vs the base and for every pair
of seeds of one (task, method) (the seed noise floor): linear CKA, debiased CKA, mean cosine and
cosine centred on the base mean.  Two paths, same inputs:
  cached     lorascope.analysis.similarity.pairwise_drift: one centred float64 Gram per model
             and layer (Xc Xc^T, 750 x 2048 @ 2048 x 750), then an n^2 dot product per pair;
  recompute  every pair from features: linear_cka (feature-space form, d x d products),
             debiased CKA from freshly formed Grams, mean_cosine, centered_cosine.
Both are timed (data generation excluded) and checked to agree to 1e-8.

    .venv/bin/python bench/drift_grid.py                # reference size, ~4 min on 2 cores
    .venv/bin/python bench/drift_grid.py --quick        # smoke size, a few seconds

On a shared, oversubscribed machine run with OPENBLAS_NUM_THREADS=1: multi-threaded BLAS
spin-waits badly when other processes hold the cores (measured here at load average ~7 on 2
cores: cached path 75 s with 2 BLAS threads, 29 s with 1).
"""

from __future__ import annotations

import argparse
import itertools
import os
import resource
import sys
import time
from pathlib import Path

import numpy as np

try:
    from lorascope.analysis import similarity as sim
except ImportError:  # run from a checkout without PYTHONPATH=pkg
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "pkg"))
    from lorascope.analysis import similarity as sim

TASKS = ("mrpc", "sst2", "rte")
METHODS = ("lora", "full")
SEEDS = (0, 1, 2)
METRICS = ("cka_linear", "cka_debiased", "cosine", "centered_cosine")
AMPLITUDE = {"lora": 0.15, "full": 0.5}


def model_names(n_models: int) -> list[str]:
    """'base' plus n_models - 1 fine-tuned models named task/method/sSEED."""
    tasks = TASKS + tuple(f"task{i}" for i in range(len(TASKS), 1000))
    combos = itertools.product(tasks, METHODS, SEEDS)
    return ["base"] + [f"{t}/{m}/s{s}" for t, m, s in itertools.islice(combos, n_models - 1)]


def analysis_pairs(names: list[str]) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """(fine-tuned vs base pairs, seed-vs-seed pairs within each task/method)."""
    tuned = [n for n in names if n != "base"]
    groups: dict[str, list[str]] = {}
    for n in tuned:
        groups.setdefault(n.rsplit("/", 1)[0], []).append(n)
    seed_pairs = [p for g in groups.values() for p in itertools.combinations(g, 2)]
    return [("base", n) for n in tuned], seed_pairs


def make_layer(names: list[str], layer: int, n_layers: int, n: int, d: int, seed: int) -> dict[str, np.ndarray]:
    """float32 (n, d) representations of every model at one layer."""
    rng = np.random.default_rng([seed, layer])
    r = 32
    f32 = np.float32
    Z = rng.standard_normal((n, r), dtype=f32)  # per-example latent factors
    A = rng.standard_normal((r, d), dtype=f32) * f32(2.0 / np.sqrt(r))
    mu = rng.standard_normal(d, dtype=f32) * f32(2.0)  # large shared mean
    base = Z @ A + rng.standard_normal((n, d), dtype=f32) + mu
    depth = (layer + 1) / n_layers
    task_dirs: dict[str, np.ndarray] = {}
    reps = {"base": base}
    for name in names[1:]:
        task, method, _ = name.split("/")
        if task not in task_dirs:
            task_dirs[task] = rng.standard_normal((r, d), dtype=f32) * f32(1.5 / np.sqrt(r))
        amp = f32(AMPLITUDE[method] * depth)
        shift = Z @ task_dirs[task] + f32(0.5) * rng.standard_normal((n, d), dtype=f32)
        reps[name] = base + amp * shift
    return reps


def cached_path(reps, names, pairs) -> tuple[list[dict], float, float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    cache = sim.GramCache(reps)
    for name in names:
        cache[name]  # one centred Gram per model
    t1 = time.perf_counter()
    rows = sim.pairwise_drift(reps, pairs, base="base", cache=cache)
    t2 = time.perf_counter()
    return rows, t1 - t0, t2 - t1, time.process_time() - c0


def recompute_path(reps, pairs) -> tuple[list[dict], float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    mu = reps["base"].astype(np.float64).mean(axis=0)
    rows = []
    for a, b in pairs:
        X, Y = reps[a], reps[b]
        rows.append(
            {
                "cka_linear": sim.linear_cka(X, Y),
                "cka_debiased": sim.cka_from_grams(sim.gram_linear(X), sim.gram_linear(Y), debiased=True),
                "cosine": sim.mean_cosine(X, Y),
                "centered_cosine": sim.centered_cosine(X, Y, mu),
            }
        )
    return rows, time.perf_counter() - t0, time.process_time() - c0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", type=int, default=19, help="base + fine-tuned models (default 19)")
    ap.add_argument("--layers", type=int, default=23, help="hidden-state entries (default 23)")
    ap.add_argument("--n", type=int, default=750, help="examples (default 750)")
    ap.add_argument("--d", type=int, default=2048, help="hidden size (default 2048)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke size: 2 layers, n=150, d=256")
    ap.add_argument("--no-recompute", action="store_true", help="time the cached path only")
    args = ap.parse_args(argv)
    if args.quick:
        args.layers, args.n, args.d = 2, 150, 256
    if args.models < 2:
        ap.error("--models must be >= 2")

    names = model_names(args.models)
    base_pairs, seed_pairs = analysis_pairs(names)
    pairs = base_pairs + seed_pairs
    print(
        f"grid: {len(names)} models x {args.layers} layers x n={args.n} x d={args.d} float32; "
        f"{len(pairs)} pairs/layer ({len(base_pairs)} vs base, {len(seed_pairs)} seed-noise)"
    )

    t_gen = t_gram = t_pair = t_rec = cpu_cached = cpu_rec = 0.0
    load0 = os.getloadavg()[0]
    max_diff = dict.fromkeys(METRICS, 0.0)
    last_rows: list[dict] = []
    for layer in range(args.layers):
        t0 = time.perf_counter()
        reps = make_layer(names, layer, args.layers, args.n, args.d, args.seed)
        t_gen += time.perf_counter() - t0

        rows, tg, tp, cpu = cached_path(reps, names, pairs)
        t_gram, t_pair, cpu_cached = t_gram + tg, t_pair + tp, cpu_cached + cpu
        if not args.no_recompute:
            ref, tr, cpu = recompute_path(reps, pairs)
            t_rec, cpu_rec = t_rec + tr, cpu_rec + cpu
            for r_c, r_r in zip(rows, ref, strict=True):
                for k in METRICS:
                    max_diff[k] = max(max_diff[k], abs(r_c[k] - r_r[k]))
        last_rows = rows
        del reps
        if layer == 0 or (layer + 1) % 5 == 0 or layer + 1 == args.layers:
            rec = f", recompute {t_rec:7.1f} s" if not args.no_recompute else ""
            print(f"  layer {layer + 1:2d}/{args.layers}: cached {t_gram + t_pair:6.1f} s{rec}", flush=True)

    t_cached = t_gram + t_pair
    n_pairs = len(pairs) * args.layers
    print(f"data generation (not timed below): {t_gen:.1f} s")
    print(
        f"cached path:    {t_cached:7.2f} s  = Grams {t_gram:.2f} s ({len(names) * args.layers} Grams) "
        f"+ pairs {t_pair:.2f} s ({n_pairs} pairs, incl. cosines); CPU time {cpu_cached:.1f} s"
    )
    if not args.no_recompute:
        print(f"recompute path: {t_rec:7.2f} s  ({n_pairs} pairs from features); CPU time {cpu_rec:.1f} s")
        print(f"speed-up (recompute / cached): {t_rec / t_cached:.1f}x")
        print("max |cached - recomputed|: " + ", ".join(f"{k} {v:.1e}" for k, v in max_diff.items()))
    print(f"1-min load average: {load0:.1f} at start, {os.getloadavg()[0]:.1f} at end ({os.cpu_count()} CPUs)")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS: {rss:.0f} MiB")

    # what the analysis reads off the last layer: drift vs base and the seed noise floor
    by = {(r["a"], r["b"]): r for r in last_rows}
    for method in METHODS:
        vs_base = [by[p]["drift_debiased"] for p in base_pairs if f"/{method}/" in p[1]]
        floor = [by[p]["drift_debiased"] for p in seed_pairs if f"/{method}/" in p[0]]
        if vs_base and floor:
            print(
                f"last layer, {method:4s}: debiased drift vs base {np.mean(vs_base):.4f}, "
                f"seed noise floor {np.mean(floor):.4f}"
            )

    ok = True
    if not args.no_recompute:
        worst = max(max_diff.values())
        ok = worst < 1e-8
        print(f"agreement < 1e-8: {'OK' if ok else 'FAILED'} (worst {worst:.1e})")
    if not args.quick:
        print(f"goal cached <= 60 s: {'met' if t_cached <= 60 else 'MISSED'} ({t_cached:.1f} s)")
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
