"""The bench bundle's summary.md (one backend's summary.json as tables), and the words for a backend and its device
that this file, the report's tables and its latency figure share (never "hf on x86_64")."""

from __future__ import annotations

from typing import Any

BACKEND_NAMES = {"hf": "Hugging Face transformers + PEFT", "vllm": "vLLM"}
PLATFORM_NAMES = {"torch": "on PyTorch", "cpu": "CPU build", "cuda": "CUDA build"}


def stack_name(backend: str, platform: str | None) -> str:
    """The serving stack in words: "Hugging Face transformers + PEFT on PyTorch", "vLLM, CPU build"."""
    name = BACKEND_NAMES.get(backend, backend)
    if not platform:
        return name
    build = PLATFORM_NAMES.get(platform, f"platform {platform}")
    return f"{name} {build}" if build.startswith("on ") else f"{name}, {build}"


def device_words(b: dict) -> str:
    """The device in words from a bench summary's `device` and `device_name`: "CPU (x86_64)", "GPU NVIDIA L4 (cuda:0)"."""
    device = str(b.get("device") or "unknown device")
    name = b.get("device_name")
    if device == "cpu":
        return f"CPU ({name})" if name else "CPU"
    if device.startswith("cuda"):
        return f"GPU {name} ({device})" if name else f"GPU ({device})"
    return device


def summary_markdown(s: dict) -> str:
    def f(x: Any, nd: int = 3) -> str:
        return "n/a" if x is None else f"{x:.{nd}f}" if isinstance(x, float) else str(x)

    def mb(x: Any) -> str:
        return "n/a" if x is None else f"{x / 2**20:.1f}"

    lines = [f"# bench: {stack_name(s['backend'], s.get('platform'))} on {device_words(s)}, {s['dtype']}", "",
             f"Study `{s['study']}` ({s['study_hash']}); served task `{s['protocol']['served_task']}`, cells of seed "
             f"{s['protocol']['seed']}; {s['protocol']['requests']} timed requests per configuration and repeat, "
             f"{s['protocol']['warmup_batches']} warm-up batches, {s['protocol']['repeats']} repeats, "
             f"{int(100 * s['protocol']['confidence'])}% t-intervals over repeat means on the log scale (never below 0). GPU memory: {s['gpu_memory']}. "
             f"Platform `{s.get('platform', 'n/a')}`; execution regimes {', '.join(s.get('regimes', ['eager']))} (every "
             f"overhead compares modes of one regime; H2 takes every regime in which separate and merged were both timed). "
             f"Total {s['seconds']:.1f} s.", ""]
    if s.get("regimes_skipped"):
        lines += [f"Not possible on this platform, so not timed: {', '.join(s['regimes_skipped'])}.", ""]
    lines += ["## Latency and throughput", "",
              "| regime | mode | order | batch | batch ms mean [CI] | p50 | p95 | p99 | ms/request | req/s [CI] | tokens/s | harness ms (% of mean) | GPU peak MiB |",
              "|---|---|---|---:|---|---:|---:|---:|---:|---|---:|---|---:|"]  # fmt: skip
    for c in s["configs"]:
        lb, ci, rps = c["latency_batch_ms"], c["mean_batch_ms_ci"], c["throughput_rps"]
        lines.append(
            f"| {c.get('regime', 'eager')} | {c['mode']} | {c['order']} | {c['batch_size']} | {f(lb['mean'])} [{f(ci['low'])}, {f(ci['high'])}] | "
            f"{f(lb['p50'])} | {f(lb['p95'])} | {f(lb['p99'])} | {f(c['latency_request_ms']['mean'])} | "
            f"{f(rps['mean'], 1)} [{f(rps['low'], 1)}, {f(rps['high'], 1)}] | {f(c['throughput_tokens_per_s']['mean'], 0)} | "
            f"{f(c['harness_overhead_ms']['mean'], 4)} ({f(c['harness_overhead_pct_of_mean'], 2)}%) | {mb(c['gpu_peak_allocated_bytes'])} |")
    lines += ["", "## Overhead against merged (H2: separate vs merged), within one regime", "",
              "| regime | comparison | " + " | ".join(f"batch {b}" for b in s["protocol"]["batch_sizes"]) + " |",
              "|---|---|" + "---|" * len(s["protocol"]["batch_sizes"])]
    for regime, overhead in (s.get("overhead_by_regime") or {"eager": s["overhead"]}).items():
        for name, by_bs in overhead.items():
            if not by_bs:
                continue
            cells = []
            for b in s["protocol"]["batch_sizes"]:
                o = by_bs.get(str(b))
                cells.append("" if o is None else f"{o['pct']:+.1f}% [{f(o['lo'], 1)}, {f(o['hi'], 1)}]")
            lines.append(f"| {regime} | {name} | " + " | ".join(cells) + " |")
    if s.get("regime_vs_eager"):
        lines += ["", "## The same mode in another regime against eager (what the regime costs; not part of H2)", "",
                  "| mode | comparison | " + " | ".join(f"batch {b}" for b in s["protocol"]["batch_sizes"]) + " |",
                  "|---|---|" + "---|" * len(s["protocol"]["batch_sizes"])]
        for key, by_bs in s["regime_vs_eager"].items():
            mode, name = key.rsplit(" ", 1)
            cells = ["" if (o := by_bs.get(str(b))) is None else f"{o['pct']:+.1f}% [{f(o['lo'], 1)}, {f(o['hi'], 1)}]"
                     for b in s["protocol"]["batch_sizes"]]  # fmt: skip
            lines.append(f"| {mode} | {name.replace('_', ' ')} | " + " | ".join(cells) + " |")
        lines += ["", "Negative: the other regime is faster than eager (geometric mean over repeats of the latency ratio "
                  "- 1, paired by repeat index; the regimes ran one after the other, not interleaved)."]
    h2 = s["h2"]
    lines += ["", "Overheads: geometric mean over repeats of separate/merged (paired by repeat) - 1, [95% interval: "
              "one-sided 97.5% t bounds on the log scale].", "",
              f"H2 (separate <= {h2['limit_pct']:g}% over merged at every batch size, in every regime timed): "
              f"**{h2['verdict']}** (largest overhead {f(h2['max_overhead_pct'], 1)}%). Rule: {h2['rule']}.", ""]
    lines += [f"- {k}: {v['verdict']}: {v['evidence']}" for k, v in h2["by"].items()]
    lines += ["", "## Load time and memory", "",
              "| regime | mode | cells | load s (mean of repeats) | weights MiB | GPU after load MiB | RSS after load MiB | KV cache MiB |",
              "|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for mode, m in s["modes"].items():
        extra = f" (+ merge {m['merge_seconds']:.2f} s)" if m.get("merge_seconds") is not None else ""
        regime = m.get("regime", "eager") + (f" ({m['compilation']})" if m.get("compilation") not in (None, "NONE") else "")
        lines.append(f"| {regime} | {m.get('mode', mode)} | {', '.join(m['cells'])} | {m['load_seconds']:.3f}{extra} | {mb(m['weights_bytes'])} | "
                     f"{mb(m.get('gpu_allocated_after_load_bytes'))} | {mb(m.get('rss_after_load_bytes'))} | "
                     f"{mb(m.get('kv_cache_memory_bytes'))} |")
    if s["switch"]:
        lines += ["", "## Adapter switching (on its own)", "", "| multi mode / order | switches | mean ms | p50 | p95 | p99 |",
                  "|---|---:|---:|---:|---:|---:|"]
        for k, v in s["switch"].items():
            st = v["latency_ms"]
            lines.append(f"| {k} | {st['n']} | {f(st['mean'], 4)} | {f(st['p50'], 4)} | {f(st['p95'], 4)} | {f(st['p99'], 4)} |")
    for mode, m in s["modes"].items():
        if m.get("adapter_first_use"):
            reps = m["adapter_first_use"]
            lines += ["", f"Adapter first use ({mode}, mean of {len(reps)} loads): " + "; ".join(
                f"{t}: cold {sum(r[t]['cold_ms'] for r in reps) / len(reps):.2f} ms, "
                f"warm {sum(r[t]['warm_ms'] for r in reps) / len(reps):.2f} ms" for t in reps[0])]
    c = s["correctness"]
    lines += ["", f"## Correctness ({c['dtype']}, probability tolerance {c['tolerance_prob']})", "",
              f"Reference: {c['reference']}.", "",
              "| check | requests | argmax mismatches | ties within tol. | max prob diff | max logit diff | ok |",
              "|---|---:|---:|---:|---:|---:|---|"]
    for name in ("multi_vs_single", "merged_vs_separate", "separate_batched_vs_single", "regime_vs_eager"):
        r = c.get(name)
        if r:
            lines.append(f"| {name} | {r['requests']} | {r['argmax_mismatches']} | {r['argmax_ties_within_tolerance']} | "
                         f"{r['max_prob_diff']:.2e} | {r['max_logit_diff']:.2e} | {r['ok']} |")
    vh = c.get("vllm_vs_hf")
    if vh:
        lines += ["", f"vLLM against HF ({vh['reference']}): **{'ok' if vh['ok'] else 'NOT ok'}**", "",
                  "| modes | requests | argmax mismatches | max prob diff | max logit diff | ok |", "|---|---:|---:|---:|---:|---|"]
        rows = [(name, vh.get(name)) for name in ("separate", "multi", "merged", "full")]
        for regime, by in (vh.get("by_regime") or {}).items():  # several regimes: each one on its own as well
            rows += [(f"{name} [{regime}]", r) for name, r in by.items()]
        for name, r in rows:
            if r:
                lines.append(f"| {name} | {r['requests']} | {r['argmax_mismatches']} | {r['max_prob_diff']:.2e} | "
                             f"{r['max_logit_diff']:.2e} | {r['ok']} |")
    vt = c.get("vs_train_predictions") or {}
    if vt.get("requests"):
        lines += ["", f"Against the train phase's predictions.jsonl: {vt['requests']} requests, argmax agreement "
                  f"{vt['argmax_agreement']:.4f}, max prob diff {vt['max_prob_diff']:.2e}."]
    return "\n".join(lines) + "\n"
